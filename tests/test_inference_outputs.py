"""``run inference`` options: uncertainty map and overlay PNG (flags), and decoding on a finer grid (output_scale)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.utils import data_args, run_bundle, save_tiny_metaseg

INFER = "['configs/inference.json']"


@pytest.fixture(scope="module")
def setup(tiny_dataset, tmp_path_factory) -> tuple[Path, list[str], list[dict]]:
    """Random tiny MetaSeg weights (no training) and the overrides that point the bundle at them."""
    dataset_dir, splits = tiny_dataset
    work = tmp_path_factory.mktemp("outputs")
    save_tiny_metaseg(work / "models")
    common = [*data_args(dataset_dir, splits, work / "models"), "--fit_steps", "2"]
    test = json.loads(Path(splits).read_text())["test"]
    return work, common, [{"subject": Path(e["img"]).parent.name, "img": dataset_dir / e["img"]} for e in test]


@pytest.fixture(scope="module")
def default_run(setup) -> Path:
    work, common, _ = setup
    out = work / "default"
    # "false" from the command line (fire keeps it as a string) must switch the outputs off
    flags = ["--save_uncertainty", "false", "--save_overlay", "false"]
    run_bundle("run", "inference", "--config_file", INFER, "--output_dir", str(out), *common, *flags)
    return out


def test_outputs_are_off_by_default(default_run, setup):
    files = sorted(p.relative_to(default_run).as_posix() for p in default_run.rglob("*") if p.is_file())
    assert files == sorted(f"{t['subject']}/slice_norm_seg.nii.gz" for t in setup[2])


def test_uncertainty_map_and_overlay_next_to_the_labels(setup):
    work, common, test = setup
    out = work / "flags"
    run_bundle(
        "run", "inference", "--config_file", INFER, "--output_dir", str(out), *common,
        "--save_uncertainty", "true", "--save_overlay", "true",
    )  # fmt: skip
    for t in test:
        folder = out / t["subject"]
        assert sorted(p.name for p in folder.iterdir()) == [
            "slice_norm_overlay.png",
            "slice_norm_seg.nii.gz",
            "slice_norm_uncertainty.nii.gz",
        ]
        seg, unc = nib.load(folder / "slice_norm_seg.nii.gz"), nib.load(folder / "slice_norm_uncertainty.nii.gz")
        src = nib.load(t["img"])
        assert unc.shape == seg.shape == src.shape
        np.testing.assert_allclose(unc.affine, seg.affine, atol=1e-6)
        np.testing.assert_allclose(unc.affine, src.affine, atol=1e-5)
        u = np.asarray(unc.dataobj)
        assert u.dtype == np.float32 and u.min() >= -1e-6 and u.max() <= math.log(5) + 1e-5 and u.max() > 0
        png = Image.open(folder / "slice_norm_overlay.png")
        assert png.format == "PNG" and png.mode == "RGB"
        assert png.size == src.shape[:2]  # (width, height) = (axis 0, axis 1): the slice shown upright
        assert not list(folder.glob(".*"))  # no temporary files left behind


def test_output_scale_2_decodes_a_finer_grid_over_the_same_extent(setup, default_run):
    work, common, test = setup
    out = work / "scale2"
    run_bundle(
        "run", "inference", "--config_file", INFER, "--output_dir", str(out), *common,
        "--output_scale", "2", "--save_uncertainty", "true", "--save_overlay", "true",
    )  # fmt: skip
    for t in test:
        src = nib.load(t["img"])
        coarse = nib.load(default_run / t["subject"] / "slice_norm_seg.nii.gz")
        fine = nib.load(out / t["subject"] / "slice_norm_seg.nii.gz")
        n = np.array(src.shape[:2])
        assert fine.shape[:2] == tuple(2 * n) and coarse.shape == src.shape
        a, f = src.affine, fine.affine

        def world(m, i, j):
            return (m @ np.array([i, j, 0.0, 1.0]))[:3]

        # fine pixel (0, 0) is centred a quarter of an input pixel before input pixel (0, 0), in both axes
        np.testing.assert_allclose(world(f, 0, 0), world(a, -0.25, -0.25), atol=1e-5)
        np.testing.assert_allclose(world(f, 1, 1), world(a, 0.25, 0.25), atol=1e-5)
        # both grids span the same extent: first and last pixel edges coincide
        np.testing.assert_allclose(world(f, -0.5, -0.5), world(a, -0.5, -0.5), atol=1e-5)
        np.testing.assert_allclose(world(f, *(2 * n - 0.5)), world(a, *(n - 0.5)), atol=1e-5)
        # spacing halved in-plane
        np.testing.assert_allclose(np.linalg.norm(f[:3, :2], axis=0), np.linalg.norm(a[:3, :2], axis=0) / 2)
        # labels agree with the scale-1 labels on most pixels when sampled back onto the input grid
        fl, cl = np.asarray(fine.dataobj), np.asarray(coarse.dataobj)
        agree = max(float((fl[i::2, j::2] == cl).mean()) for i in (0, 1) for j in (0, 1))
        assert agree > 0.9, agree
        unc = nib.load(out / t["subject"] / "slice_norm_uncertainty.nii.gz")
        assert unc.shape == fine.shape
        np.testing.assert_allclose(unc.affine, f, atol=1e-6)
        assert Image.open(out / t["subject"] / "slice_norm_overlay.png").size == tuple(2 * n)
