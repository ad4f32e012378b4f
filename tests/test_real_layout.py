"""The loaders read a real neurite-oasis style folder: authors' splits format, seg24 labels, 160x192x1 slices."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from scripts.data import load_datalist
from tests.utils import TINY_NET, run_bundle, tiny_metaseg


@pytest.fixture()
def fake_oasis(tmp_path) -> tuple[Path, Path]:
    """Three subjects shaped like neurite-oasis 2D data (trailing singleton axis, seg4 and seg24 labels)."""
    root = tmp_path / "neurite-oasis"
    rng = np.random.default_rng(0)
    entries = []
    affine = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -112], [0, -1, 0, 96], [0, 0, 0, 1]])
    for i in (92, 344, 123):
        subject = f"OASIS_OAS1_{i:04d}_MR1"
        (root / subject).mkdir(parents=True)
        img = rng.random((160, 192, 1)).astype(np.float32)
        seg24 = rng.integers(0, 25, (160, 192, 1)).astype(np.int32)
        nib.save(nib.Nifti1Image(img, affine), str(root / subject / "slice_norm.nii.gz"))
        nib.save(nib.Nifti1Image((seg24 % 5).astype(np.int32), affine), str(root / subject / "slice_seg4.nii.gz"))
        nib.save(nib.Nifti1Image(seg24, affine), str(root / subject / "slice_seg24.nii.gz"))
        entries.append(
            {k: f"{subject}/slice_{v}.nii.gz" for k, v in (("img", "norm"), ("seg4", "seg4"), ("seg24", "seg24"))}
        )
    splits = tmp_path / "splits.json"
    # the authors' format (dicts of paths) and the shipped one (subject folder names) may be mixed
    splits.write_text(json.dumps({"train": entries[:1], "val": ["OASIS_OAS1_0344_MR1"], "test": entries[2:]}))
    return root, splits


def test_authors_split_file_is_shipped():
    splits = json.loads(Path("configs/oasis_splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 214, "val": 100, "test": 100}
    assert splits["train"][0] == "OASIS_OAS1_0092_MR1"
    assert len(set(sum(splits.values(), []))) == 414


@pytest.mark.parametrize("num_classes,label", [(5, "slice_seg4.nii.gz"), (25, "slice_seg24.nii.gz")])
def test_datalist_picks_label_map_by_class_count(fake_oasis, num_classes, label):
    root, splits = fake_oasis
    items = load_datalist(str(root), str(splits), "test", num_classes)
    assert items == [
        {
            "image": str(root / "OASIS_OAS1_0123_MR1/slice_norm.nii.gz"),
            "label": str(root / f"OASIS_OAS1_0123_MR1/{label}"),
        }
    ]


def test_evaluating_real_layout_with_25_classes(fake_oasis, tmp_path):
    root, splits = fake_oasis
    models = tmp_path / "models"
    models.mkdir()
    net = tiny_metaseg(num_classes=25)
    torch.save(net.state_dict(), models / "model.pt")
    out = tmp_path / "eval"
    run_bundle(
        "run",
        "evaluating",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--dataset_dir",
        str(root),
        "--splits_file",
        str(splits),
        "--num_classes",
        "25",
        "--ckpt_dir",
        str(models),
        "--output_dir",
        str(out),
        *TINY_NET,
    )
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 1 and len(summary["dice_per_class"]) == 24
