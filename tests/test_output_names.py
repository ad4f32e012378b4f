"""Output names are unique by construction: inputs that share a file name keep enough of their path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.demo_data import generate_subject
from scripts.outputs import OutputParentLevels, SubjectFolderLayout, output_parent_levels
from tests.utils import run_inference_on_files, save_tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes


@pytest.mark.parametrize(
    "paths, levels",
    [
        (["/d/OAS1_0001/slice_norm.nii.gz", "/d/OAS1_0002/slice_norm.nii.gz"], 1),
        (["/siteA/sub01/T1.nii.gz", "/siteB/sub01/T1.nii.gz"], 2),
        (["/d/s1/baseline/T1.nii.gz", "/d/s2/baseline/T1.nii.gz", "/d/s2/followup/T1.nii.gz"], 2),
        (["/x/T1.nii.gz", "/y/x/T1.nii.gz"], 2),
        (["/a/T1.nii.gz", "/a/T2.nii.gz"], 1),
        (["/a/T1.mgz"], 1),
    ],
)
def test_fewest_parent_folders_that_keep_outputs_apart(paths, levels):
    assert output_parent_levels(paths) == levels
    names = [SubjectFolderLayout("/out", makedirs=False, parent_levels=levels).filename(p) for p in paths]
    assert len(set(names)) == len(names), names


def test_layout_drops_the_whole_extension_and_keeps_the_folders():
    layout = SubjectFolderLayout("/out", makedirs=False, parent_levels=2)
    assert layout.filename("/data/siteA/sub01/T1.nii.gz") == "/out/siteA/sub01/T1_seg.nii.gz"
    assert layout.filename("/data/siteA/sub01/T1.mgz") == "/out/siteA/sub01/T1_seg.nii.gz"
    with pytest.raises(ValueError, match="parent_levels"):
        SubjectFolderLayout("/out", parent_levels=0)


@pytest.mark.parametrize(
    "paths, message",
    [
        (["/a/T1.nii.gz", "/b/../a/T1.nii.gz"], "same image more than once"),
        (["/a/T1.nii", "/a/T1.nii.gz"], "differ only in their file extension"),
    ],
)
def test_inputs_no_folder_can_tell_apart_are_an_error(paths, message):
    with pytest.raises(ValueError, match=message) as err:
        output_parent_levels(paths)
    assert "/a/T1.nii" in str(err.value)


def _write_slice(path: Path) -> Path:
    img, _ = generate_subject(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(path))
    return path


def test_inference_keeps_two_sites_apart(tmp_path):
    """``siteA/sub01/T1.nii.gz`` and ``siteB/sub01/T1.nii.gz`` give two outputs (one overwrote the other before)."""
    files = [_write_slice(tmp_path / site / "sub01" / "T1.nii.gz") for site in ("siteA", "siteB")]
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    run_inference_on_files(files, out, ckpt, "--fit_steps", "2")
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.nii.gz"))
    assert written == ["siteA/sub01/T1_seg.nii.gz", "siteB/sub01/T1_seg.nii.gz"]


def test_inference_refuses_a_repeated_input_before_any_work(tmp_path):
    image = _write_slice(tmp_path / "sub01" / "T1.nii.gz")
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    proc = run_inference_on_files([image, image], out, ckpt, check=False)
    assert proc.returncode != 0
    assert "same image more than once" in proc.stdout + proc.stderr and str(image) in proc.stdout + proc.stderr
    assert not out.exists() or not list(out.rglob("*.nii.gz"))


def test_inference_on_own_files_never_generates_the_demo_data(tmp_path):
    """The README's own-files command, without ``--dataset_dir``: the demo folder is not read, so not made."""
    from tests.utils import TINY_NET, run_bundle

    image = _write_slice(tmp_path / "sub01" / "T1.nii.gz")
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    demo = tmp_path / "demo"
    out = tmp_path / "out"
    run_bundle(
        "run", "inference", "--config_file", "configs/inference.json", "--datalist", f"['{image}']",
        "--output_dir", str(out), "--demo_dir", str(demo), "--ckpt_dir", str(ckpt), *TINY_NET, "--fit_steps", "2",
    )  # fmt: skip
    assert not demo.exists()
    assert (out / "sub01" / "T1_seg.nii.gz").is_file()


def test_outputs_never_overwrite_a_file_the_run_reads(tmp_path):
    """An image's ``_seg`` output landing on another input, or on a label of the datalist, is refused up front."""
    levels = OutputParentLevels()
    layouts = [SubjectFolderLayout(str(tmp_path), postfix=p, parent_levels=levels) for p in ("seg", "uncertainty")]
    sub = tmp_path / "s1"
    with pytest.raises(ValueError, match="a_seg.nii.gz .the 'seg' output of .*a.nii.gz. is also a file this run reads"):
        levels.set_inputs([str(sub / "a.nii.gz"), str(sub / "a_seg.nii.gz")], layouts)
    with pytest.raises(ValueError, match="a_uncertainty.nii.gz"):
        levels.set_inputs([{"image": str(sub / "a.nii.gz"), "label": str(sub / "a_uncertainty.nii.gz")}], layouts)
    assert levels.set_inputs([{"image": str(sub / "a.nii.gz"), "label": str(sub / "a_seg4.nii.gz")}], layouts) == 1
    assert levels.set_inputs([str(sub / "a.nii.gz")], layouts) == 1  # written beside its input: nothing clashes
    assert (
        SubjectFolderLayout(str(tmp_path), parent_levels=levels)
        .path_for(str(sub / "T1.NII.GZ"))
        .endswith("s1/T1_seg.nii.gz")
    )


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inference_never_overwrites_a_file_it_did_not_write(tmp_path):
    """``--output_dir`` at the parent of an input's folder: the output ``s1/T1_seg.nii.gz`` would replace the user's
    manual label of that name (not part of the run). Refused before any work, naming the file and ``--overwrite
    true``; a re-run into the same folder likewise; ``--overwrite true`` replaces."""
    image = _write_slice(tmp_path / "in" / "s1" / "T1.nii.gz")
    manual = tmp_path / "in" / "s1" / "T1_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8), np.uint8), np.eye(4)), str(manual))
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    before = {p: _sha(p) for p in (tmp_path / "in").rglob("*") if p.is_file()}

    proc = run_inference_on_files([image], tmp_path / "in", ckpt, "--fit_steps", "2", check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert str(manual) in log and "--overwrite true" in log and "were not written by it" in log, log[-3000:]
    assert {p: _sha(p) for p in (tmp_path / "in").rglob("*") if p.is_file()} == before  # nothing written or removed

    run_inference_on_files([image], tmp_path / "in", ckpt, "--fit_steps", "2", "--overwrite", "true")
    assert _sha(manual) != before[manual] and nib.load(str(manual)).shape == nib.load(str(image)).shape  # replaced


def test_inference_refuses_to_replace_an_earlier_runs_files_without_overwrite(tmp_path):
    """Re-running into the same output folder: the earlier run's label and ``failures.csv`` are refused by name (no
    work done, nothing changed) unless ``--overwrite true``."""
    image = _write_slice(tmp_path / "in" / "s1" / "T1.nii.gz")
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    (out / "s1").mkdir(parents=True)
    earlier = out / "s1" / "T1_seg.nii.gz"
    earlier.write_bytes(b"an earlier run's label")
    report = out / "failures.csv"
    report.write_text("image,error\n/x.nii.gz,cannot read\n")
    for existing in (report, earlier):  # failures.csv is checked first (before the inputs are read), then labels
        proc = run_inference_on_files([image], out, ckpt, "--fit_steps", "2", check=False)
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0 and str(existing) in log and "--overwrite true" in log, log[-3000:]
        assert earlier.read_bytes() == b"an earlier run's label"
        if existing == report:
            assert report.read_text().startswith("image,error\n/x.nii.gz")
            report.unlink()
    run_inference_on_files([image], out, ckpt, "--fit_steps", "2", "--overwrite", "true")
    assert nib.load(str(earlier)).shape == nib.load(str(image)).shape


def test_overwrite_guard_allows_the_bundles_own_output_folder(tmp_path):
    """Files under the bundle's own ``eval/`` (the default output folders, which the documented commands re-use) may
    be replaced; elsewhere only with ``overwrite``; files that do not exist never stop a run."""
    from scripts.outputs import OverwriteGuard

    own, user = tmp_path / "bundle" / "eval", tmp_path / "user"
    for folder in (own / "s1", user / "s1"):
        folder.mkdir(parents=True)
        (folder / "T1_seg.nii.gz").write_bytes(b"x")
    layout = SubjectFolderLayout(str(user), parent_levels=1)
    guard = OverwriteGuard(overwrite="false", own_dir=str(own))
    assert guard.check_files(["metrics.csv", "s1/T1_seg.nii.gz"], str(own)) == [
        str(own / "metrics.csv"),
        str(own / "s1" / "T1_seg.nii.gz"),
    ]
    assert guard.check_outputs([str(tmp_path / "in" / "s2" / "T1.nii.gz")], [layout]) == [
        str(user / "s2/T1_seg.nii.gz")
    ]
    with pytest.raises(FileExistsError, match=r"1 file\(s\) .*user/s1/T1_seg.nii.gz.*--overwrite true"):
        guard.check_outputs([{"image": str(tmp_path / "in" / "s1" / "T1.nii.gz")}], [layout])
    OverwriteGuard(overwrite=True).check_outputs([str(tmp_path / "in" / "s1" / "T1.nii.gz")], [layout])
    with pytest.raises(ValueError, match="--overwrite must be true or false"):
        OverwriteGuard(overwrite="maybe")


def test_evaluation_refuses_to_replace_reports_it_did_not_write(tiny_dataset, tmp_path):
    """``run evaluating`` into a folder holding a ``metrics_summary.json`` it did not write (an earlier evaluation's,
    outside the bundle's own ``eval/``): refused at start-up, naming the file and ``--overwrite true``."""
    from tests.utils import data_args, run_bundle

    dataset_dir, splits = tiny_dataset
    save_tiny_metaseg(tmp_path / "models")
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics_summary.json").write_text("{}")
    proc = run_bundle(
        "run", "evaluating", "--config_file", "['configs/inference.json','configs/evaluate.json']",
        *data_args(dataset_dir, splits, tmp_path / "models"), "--output_dir", str(out), "--fit_steps", "1", check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and str(out / "metrics_summary.json") in log and "--overwrite true" in log, log[-3000:]
    assert [p.name for p in out.iterdir()] == ["metrics_summary.json"]
    assert (out / "metrics_summary.json").read_text() == "{}"
