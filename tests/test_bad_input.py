"""Bad inputs give a clear error naming the file and the problem, and leave no output behind."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_NET, run_bundle

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
    import torch

    from scripts.network import MetaSegINR

    d = tmp_path / "models"
    d.mkdir()
    torch.save(MetaSegINR(hidden_channels=16, num_sine_layers=2, head_channels=16).state_dict(), d / "model.pt")
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
        "--dataset_dir",
        str(dataset_dir),
        "--splits_file",
        str(splits),
        "--ckpt_dir",
        str(model_dir),
        *TINY_NET,
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
        "--dataset_dir",
        str(dataset_dir),
        "--splits_file",
        str(dataset_dir / "demo_splits.json"),
        "--ckpt_dir",
        str(model_dir),
        *TINY_NET,
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
    _write(label, np.zeros((100, 100), np.uint8))
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


def test_loader_keeps_working_with_image_only_switched_off(tiny_dataset):
    """MONAI Label sets ``_loader.image_only = False`` on every ``LoadImaged`` of a bundle's preprocessing."""
    from monai.data import MetaTensor

    from scripts.transforms import LoadImageCheckedd

    dataset_dir, _ = tiny_dataset
    path = str(sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0])
    loader = LoadImageCheckedd(keys="image")
    loader._loader.image_only = False
    out = loader({"image": path})
    assert isinstance(out["image"], MetaTensor) and out["image"].shape == (160, 192)
    assert out["image_meta_dict"]["filename_or_obj"] == path
