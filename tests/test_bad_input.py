"""Bad inputs give a clear error naming the file and the problem, and leave no output behind."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.utils import data_args, run_bundle, tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes

INFER = "['configs/inference.json']"
EVAL = "['configs/inference.json','configs/evaluate.json']"


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_test_entry(dataset_dir: Path) -> dict:
    return json.loads((dataset_dir / "demo_splits.json").read_text())["test"][0]


def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _image(dataset_dir: Path) -> np.ndarray:
    return np.asarray(nib.load(dataset_dir / _first_test_entry(dataset_dir)["img"]).dataobj, dtype=np.float32)


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """An untrained tiny model.pt is enough: every case here must fail before or without using the weights."""
    d = tmp_path / "models"
    d.mkdir()
    torch.save(tiny_metaseg().state_dict(), d / "model.pt")
    return d


def _corrupt_inputs(tmp: Path, dataset_dir: Path) -> dict[str, tuple[Path, str]]:
    """name -> (bad image file, phrase the error must contain)."""
    img = _image(dataset_dir)
    nan = img.copy()
    nan[10, 10] = np.nan
    inf = img.copy()
    inf[5, 5] = np.inf
    truncated = tmp / "truncated" / "slice_norm.nii.gz"
    truncated.parent.mkdir()
    raw = gzip.compress(nib.Nifti1Image(img, np.eye(4)).to_bytes())
    truncated.write_bytes(raw[: len(raw) // 2])
    not_nifti = tmp / "notnifti" / "slice_norm.nii.gz"
    not_nifti.parent.mkdir()
    not_nifti.write_bytes(gzip.compress(b"this is a text file, not a NIfTI image\n" * 20))
    empty = tmp / "empty" / "slice_norm.nii.gz"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    cases = {
        "3d_volume": (
            _write(tmp / "vol.nii.gz", np.random.rand(16, 20, 12).astype(np.float32)),
            "expected a single-channel 2D",
        ),
        "4d_volume": (
            _write(tmp / "vol4.nii.gz", np.random.rand(16, 20, 12, 3).astype(np.float32)),
            "expected a single-channel 2D",
        ),
        "nan": (_write(tmp / "nan.nii.gz", nan), "NaN or infinite"),
        "inf": (_write(tmp / "inf.nii.gz", inf), "NaN or infinite"),
        "constant": (_write(tmp / "const.nii.gz", np.full_like(img, 0.5)), "constant"),
        "empty_file": (empty, "empty"),
        "truncated_gzip": (truncated, "cannot read"),
        "not_nifti": (not_nifti, "cannot read"),
    }
    return cases


CASES = ["3d_volume", "4d_volume", "nan", "inf", "constant", "empty_file", "truncated_gzip", "not_nifti"]


@pytest.mark.parametrize("case", CASES)
def test_inference_rejects_bad_image(case, tmp_path, tiny_dataset, model_dir):
    dataset_dir, splits = tiny_dataset
    bad, phrase = _corrupt_inputs(tmp_path, dataset_dir)[case]
    out = tmp_path / "out"
    proc = run_bundle(
        "run",
        "inference",
        "--config_file",
        INFER,
        "--datalist",
        f"['{bad}']",
        "--output_dir",
        str(out),
        *data_args(dataset_dir, splits, model_dir),
        check=False,
    )
    assert proc.returncode != 0
    assert str(bad) in proc.stderr and phrase in proc.stderr, proc.stderr[-3000:]
    assert not list(out.rglob("*.nii*")) if out.exists() else True


def _eval(tmp_path: Path, dataset_dir: Path, model_dir: Path, *extra: str):
    out = tmp_path / "eval_out"
    proc = run_bundle(
        "run",
        "evaluating",
        "--config_file",
        EVAL,
        "--output_dir",
        str(out),
        *data_args(dataset_dir, dataset_dir / "demo_splits.json", model_dir),
        *extra,
        check=False,
    )
    assert proc.returncode != 0
    assert not (out / "metrics_summary.json").exists()
    return proc


def test_missing_label_file(tmp_path, tiny_dataset, model_dir):
    data = _copy_dataset(tiny_dataset[0], tmp_path / "data")
    label = data / _first_test_entry(data)["seg4"]
    label.unlink()
    proc = _eval(tmp_path, data, model_dir)
    assert "label file" in proc.stderr and str(label) in proc.stderr


@pytest.mark.parametrize("value,phrase", [(7, "values must lie in [0, 4]"), (1.5, "integer class indices")])
def test_bad_label_values(value, phrase, tmp_path, tiny_dataset, model_dir):
    data = _copy_dataset(tiny_dataset[0], tmp_path / "data")
    label = data / _first_test_entry(data)["seg4"]
    seg = np.asarray(nib.load(label).dataobj).astype(np.float32)
    seg[80, 80] = value
    _write(label, seg)
    proc = _eval(tmp_path, data, model_dir)
    assert phrase in proc.stderr and str(label) in proc.stderr


def test_label_shape_mismatch(tmp_path, tiny_dataset, model_dir):
    data = _copy_dataset(tiny_dataset[0], tmp_path / "data")
    label = data / _first_test_entry(data)["seg4"]
    _write(label, np.eye(100, dtype=np.uint8))  # some foreground: not refused as empty first
    proc = _eval(tmp_path, data, model_dir)
    assert "differs from the image shape" in proc.stderr and str(label) in proc.stderr


def test_missing_dataset_dir(tmp_path, model_dir):
    missing = tmp_path / "nowhere"
    proc = run_bundle(
        "run",
        "evaluating",
        "--config_file",
        EVAL,
        "--dataset_dir",
        str(missing),
        "--splits_file",
        str(missing / "splits.json"),
        "--ckpt_dir",
        str(model_dir),
        "--output_dir",
        str(tmp_path / "o"),
        check=False,
    )
    assert proc.returncode != 0
    assert f"dataset_dir does not exist or is not a directory: {missing}" in proc.stderr


def test_missing_splits_entry_key(tmp_path, tiny_dataset, model_dir):
    data = _copy_dataset(tiny_dataset[0], tmp_path / "data")
    proc = _eval(tmp_path, data, model_dir, "--num_classes", "25")  # seg24 is not part of the demo data
    assert "has no 'seg24' path" in proc.stderr


def _infer(tmp_path: Path, dataset_dir: Path, model_dir: Path, image: Path, out: Path, *extra: str):
    return run_bundle(
        "run",
        "inference",
        "--config_file",
        INFER,
        "--datalist",
        f"['{image}']",
        "--output_dir",
        str(out),
        *data_args(dataset_dir, dataset_dir / "demo_splits.json", model_dir),
        *extra,
        check=False,
    )


def _bad_setup(case: str, tmp: Path, model_dir: Path) -> tuple[Path, list[str], str]:
    """name -> (output_dir, extra overrides, phrase the error must contain, naming the file or option)."""
    out = tmp / "out"
    if case == "unknown_override":
        return (
            out,
            ["--fit_stepz", "3"],
            "--fit_stepz: no such id in ['configs/inference.json'] (did you mean --fit_steps",
        )
    if case == "none_override":
        return out, ["--skip_failed", "None"], "would not set null: --skip_failed None"
    if case == "output_dir_under_a_file":
        (tmp / "a_file").write_text("x")
        out = tmp / "a_file" / "out"
        return out, [], f"output_dir is not writable: {out}"
    if case == "output_dir_read_only":
        out.mkdir()
        out.chmod(0o500)
        return out, [], f"output_dir is not writable: {out}"
    model = model_dir / "model.pt"
    if case == "model_other_num_classes":
        torch.save(tiny_metaseg(num_classes=25).state_dict(), model)
        return out, [], f"{model} was trained with num_classes=25 but the config has num_classes=5"
    if case == "model_other_width":
        torch.save(tiny_metaseg(hidden_channels=32).state_dict(), model)
        return out, [], f"{model} was trained with hidden_channels=32 but the config has hidden_channels=16"
    if case == "model_truncated":
        model.write_bytes(model.read_bytes()[:500])
        return out, [], f"{model}: cannot read the checkpoint"
    if case == "model_missing":
        model.unlink()
        return out, [], f"checkpoint not found: {model}"
    raise ValueError(case)


SETUP_CASES = [
    "unknown_override",
    "none_override",
    "output_dir_under_a_file",
    pytest.param("output_dir_read_only", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")),
    "model_other_num_classes",
    "model_other_width",
    "model_truncated",
    "model_missing",
]


@pytest.mark.parametrize("case", SETUP_CASES)
def test_inference_rejects_bad_setup(case, tmp_path, tiny_dataset, model_dir):
    dataset_dir, _ = tiny_dataset
    out, extra, phrase = _bad_setup(case, tmp_path, model_dir)
    image = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0]
    proc = _infer(tmp_path, dataset_dir, model_dir, image, out, *extra)
    assert proc.returncode != 0
    assert phrase in proc.stderr, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("*_seg.nii*"))


def test_empty_dataset_dir(tmp_path, model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _eval(tmp_path, empty, model_dir, "--splits_file", "configs/oasis_splits.json")
    assert f"dataset_dir is empty: {empty}" in proc.stderr


def _large(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The demo slice zero-padded to 192x192 and magnified 4x: a 768x768 slice (4x the training size)."""
    square = np.zeros((192, 192), np.float32)
    square[16:176, :] = img.reshape(160, 192)
    return np.kron(square, np.ones((4, 4), np.float32)), np.diag([0.25, 0.25, 1.0, 1.0])


def _anisotropic(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The demo slice with 0.7 x 1.3 mm pixels, an oblique in-plane rotation and an offset."""
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.7 * c, -1.3 * s, 0, -60.0], [0.7 * s, 1.3 * c, 0, -90.0], [0, 0, 1.0, 12.0], [0, 0, 0, 1]])
    return img, affine


@pytest.mark.parametrize("make", [_large, _anisotropic], ids=["768x768", "anisotropic_0.7x1.3"])
def test_inference_keeps_geometry_of_unusual_valid_images(make, tmp_path, tiny_dataset, model_dir):
    dataset_dir, _ = tiny_dataset
    array, affine = make(_image(dataset_dir))
    subject = tmp_path / "subject"
    subject.mkdir()
    image = _write(subject / "slice_norm.nii.gz", array, affine)
    out = tmp_path / "out"
    proc = _infer(tmp_path, dataset_dir, model_dir, image, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seg = nib.load(out / "subject" / "slice_norm_seg.nii.gz")
    src = nib.load(image)
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
    np.testing.assert_allclose(seg.header.get_zooms()[:2], src.header.get_zooms()[:2], atol=1e-5)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 4


def test_loader_keeps_working_with_image_only_switched_off(tiny_dataset):
    """MONAI Label sets ``_loader.image_only = False`` on every ``LoadImaged`` of a bundle's preprocessing."""
    from monai.data import MetaTensor

    from scripts.transforms import LoadImageCheckedd

    dataset_dir, _ = tiny_dataset
    path = str(sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0])
    loader = LoadImageCheckedd(keys="image")
    loader._loader.image_only = False
    out = loader({"image": path})
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == (160, 192, 1)  # a neurite-oasis slice
    assert out["image_meta_dict"]["filename_or_obj"] == path
