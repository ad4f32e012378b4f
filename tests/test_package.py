"""The Model Zoo package: a zip of the bundle that runs inference on its own once unpacked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import nibabel as nib
import numpy as np

from scripts.package_bundle import BUNDLE_NAME, package_bundle
from tests.utils import REPO_ROOT


def test_zip_is_named_and_laid_out_like_a_zoo_release(tmp_path):
    path = package_bundle(tmp_path / "dist")
    version = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())["version"]
    assert path.name == f"{BUNDLE_NAME}_v{version}.zip"
    names = zipfile.ZipFile(path).namelist()
    assert all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
    rel = {n.split("/", 1)[1] for n in names}
    for required in ["configs/metadata.json", "configs/inference.json", "configs/train.json", "models/model.pt"]:
        assert required in rel
    assert {"scripts/network.py", "scripts/inferer.py", "docs/README.md", "LICENSE", "large_files.yml"} <= rel
    assert not [n for n in rel if n.split("/")[0] in {"tests", ".venv", ".venv-monailabel", "data", "eval", ".ci"}]
    assert not [n for n in rel if "__pycache__" in n or n.endswith((".pyc", ".ts", "meta_model.pt"))]


def test_unpacked_zip_runs_inference(tmp_path, tiny_dataset):
    dataset_dir, splits = tiny_dataset
    zipfile.ZipFile(package_bundle(tmp_path / "dist")).extractall(tmp_path / "unpacked")
    bundle = tmp_path / "unpacked" / BUNDLE_NAME
    image = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0]
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH="")  # only the unpacked bundle's scripts
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "inference",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(dataset_dir),
            "--splits_file",
            str(splits),
            "--datalist",
            f"['{image}']",
            "--fit_steps",
            "1",
            "--output_dir",
            str(out),
        ],
        cwd=bundle,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    seg = nib.load(out / image.parent.name / "slice_norm_seg.nii.gz")
    assert seg.shape == nib.load(image).shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 3, 4}
    assert not (bundle / "data").exists()  # the tiny dataset was used, no demo data generated inside the package
