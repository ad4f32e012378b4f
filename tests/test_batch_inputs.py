"""Batch runs a clinic can trust: every input checked before the first fit; ``--skip_failed true`` segments the rest."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.demo_data import generate_subject
from tests.utils import run_inference_on_files, save_tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[list[Path], Path]:
    """Six subject folders; the third holds a truncated file and the fifth an all-zero image; tiny weights."""
    root = tmp_path_factory.mktemp("batch")
    files = []
    for i in range(1, 7):
        img, _ = generate_subject(0, i)
        path = root / f"sub{i:02d}" / "slice_norm.nii.gz"
        path.parent.mkdir()
        nib.save(nib.Nifti1Image((np.zeros_like(img) if i == 5 else img).astype(np.float32), np.eye(4)), str(path))
        files.append(path)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) // 2])
    save_tiny_metaseg(root / "models")
    return files, root / "models"


def _outputs(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*_seg.nii.gz")) if out.exists() else []


def test_bad_inputs_stop_the_run_before_any_work_and_are_all_listed(batch, tmp_path):
    files, ckpt = batch
    out = tmp_path / "out"
    proc = run_inference_on_files(files, out, ckpt, "--fit_steps", "2", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "2 of 6 inputs cannot be segmented" in log and "--skip_failed true" in log
    assert str(files[2]) in log and str(files[4]) in log and "constant" in log
    assert _outputs(out) == []
    assert (out / "failures.csv").is_file()  # the list, for the user to fix


def test_skip_failed_segments_the_rest_reports_and_exits_nonzero(batch, tmp_path):
    files, ckpt = batch
    out = tmp_path / "out"
    proc = run_inference_on_files(files, out, ckpt, "--fit_steps", "2", "--skip_failed", "true", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "2 of 6 inputs were skipped" in log
    assert _outputs(out) == [f"sub{i:02d}/slice_norm_seg.nii.gz" for i in (1, 2, 4, 6)]
    with open(out / "failures.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [str(files[2]), str(files[4])]
    assert all(r["error"] and "object at 0x" not in r["error"] for r in rows)


def test_a_clean_batch_leaves_no_failures_list(batch, tmp_path):
    files, ckpt = batch
    out = tmp_path / "out"
    out.mkdir()
    (out / "failures.csv").write_text("image,error\nold,run\n")  # from an earlier run into the same folder
    # not written by this run: kept, and the run refused before any work, unless --overwrite true
    proc = run_inference_on_files(
        [files[0], files[1]], out, ckpt, "--fit_steps", "2", "--skip_failed", "true", check=False
    )
    assert proc.returncode != 0 and str(out / "failures.csv") in proc.stderr and "--overwrite true" in proc.stderr
    assert (out / "failures.csv").read_text() == "image,error\nold,run\n" and _outputs(out) == []
    run_inference_on_files(
        [files[0], files[1]], out, ckpt, "--fit_steps", "2", "--skip_failed", "true", "--overwrite", "true"
    )
    assert not (out / "failures.csv").exists()
    assert _outputs(out) == ["sub01/slice_norm_seg.nii.gz", "sub02/slice_norm_seg.nii.gz"]
