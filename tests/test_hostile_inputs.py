"""Unusual but valid files segment with the input's geometry; bad batches are refused naming every file.

Every case runs ``python -m monai.bundle run inference`` as a user would and checks the exit code, the message, the
files written (exactly), that the inputs are byte-identical afterwards and that the bundle's own files are untouched.
The other rows of ``docs/hostile_inputs.md`` are tested next to the code they exercise (the table names each test).
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from scripts.demo_data import AFFINE, generate_subject
from tests.utils import REPO_ROOT, TINY_NET, bundle_snapshot, run_bundle, run_inference_on_files, save_tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")


def _oblique_lps() -> np.ndarray:
    """The demo affine turned 17 degrees in-plane and mirrored into LPS: orientation must survive, not be 'fixed'."""
    c, s = math.cos(0.3), math.sin(0.3)
    turn = np.diag([-1.0, -1.0, 1.0, 1.0])
    turn[:2, :2] = [[-c, s], [-s, -c]]
    return turn @ AFFINE


def _image() -> np.ndarray:
    return generate_subject(0, 1)[0]  # norm/255 intensities, 160x192


# case -> (input path under the batch root, data, affine, expected output path under the output dir)
VALID: dict[str, tuple[str, Callable[[], np.ndarray], Callable[[], np.ndarray], str]] = {
    "spaces in folder and file names": (
        "my scans/sub 01/T1 image.nii.gz",
        _image,
        lambda: AFFINE,
        "sub 01/T1 image_seg.nii.gz",
    ),
    "non-ASCII names": ("données/süjet-ü/T1_ñ.nii.gz", _image, lambda: AFFINE, "süjet-ü/T1_ñ_seg.nii.gz"),
    "relative path": ("rel/subrel/T1.nii.gz", _image, lambda: AFFINE, "subrel/T1_seg.nii.gz"),
    "symbolic link (named after the link)": (
        "links/sublink/T1.nii.gz",
        _image,
        lambda: AFFINE,
        "sublink/T1_seg.nii.gz",
    ),
    "uncompressed .nii": ("nii/subnii/T1.nii", _image, lambda: AFFINE, "subnii/T1_seg.nii.gz"),
    "upper-case .NII.GZ": ("upper/subupper/T1.NII.GZ", _image, lambda: AFFINE, "subupper/T1_seg.nii.gz"),
    "dots in folder and file names": ("dots/sub.01/T1.v2.nii.gz", _image, lambda: AFFINE, "sub.01/T1.v2_seg.nii.gz"),
    "uint8 FreeSurfer norm (0..255)": (
        "u8/subu8/norm.nii.gz",
        lambda: np.clip(np.round(_image() * 255), 0, 255).astype(np.uint8),
        lambda: AFFINE,
        "subu8/norm_seg.nii.gz",
    ),
    "float64": ("f64/subf64/T1.nii.gz", lambda: _image().astype(np.float64), lambda: AFFINE, "subf64/T1_seg.nii.gz"),
    "int16 scanner scale (0..4095)": (
        "i16/subi16/T1.nii.gz",
        lambda: np.round(_image() / _image().max() * 4095).astype(np.int16),
        lambda: AFFINE,
        "subi16/T1_seg.nii.gz",
    ),
    "oblique, mirrored (LPS) affine": ("obl/subobl/T1.nii.gz", _image, _oblique_lps, "subobl/T1_seg.nii.gz"),
    "read-only input folder": ("ro/subro/T1.nii.gz", _image, lambda: AFFINE, "subro/T1_seg.nii.gz"),
}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def valid_batch(tmp_path_factory):
    """All the unusual valid inputs segmented in one run: ``(process, inputs, output dir, hashes before)``."""
    root = tmp_path_factory.mktemp("hostile valid")
    inputs = {}
    for case, (rel, data, affine, _) in VALID.items():
        path = root / rel
        path.parent.mkdir(parents=True)
        if case.startswith("symbolic"):
            target = root / "real" / "subreal" / "T1.nii.gz"
            target.parent.mkdir(parents=True)
            nib.save(nib.Nifti1Image(data(), affine()), str(target))
            path.symlink_to(target)
        else:
            nib.save(nib.Nifti1Image(data(), affine()), str(path))
        inputs[case] = Path(os.path.relpath(path, REPO_ROOT)) if case == "relative path" else path
    read_only = (root / VALID["read-only input folder"][0]).parent
    read_only.chmod(stat.S_IRUSR | stat.S_IXUSR)
    save_tiny_metaseg(root / "models")
    hashes = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    bundle = bundle_snapshot()
    out = root / "out"
    try:
        proc = run_inference_on_files(list(inputs.values()), out, root / "models", "--fit_steps", "2", check=False)
    finally:
        read_only.chmod(stat.S_IRWXU)
    assert bundle_snapshot() == bundle
    return proc, inputs, out, hashes


def test_valid_batch_writes_exactly_one_label_map_per_input_and_changes_no_input(valid_batch):
    proc, _, out, hashes = valid_batch
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _files(out) == sorted(expected for *_, expected in VALID.values())  # no temp files, no failures.csv
    assert {p: _sha(p) for p in hashes} == hashes


@pytest.mark.parametrize("case", list(VALID))
def test_unusual_valid_input_keeps_its_geometry(valid_batch, case):
    _, inputs, out, _ = valid_batch
    source = nib.load(str(REPO_ROOT / inputs[case] if not inputs[case].is_absolute() else inputs[case]))
    seg = nib.load(str(out / VALID[case][3]))
    assert seg.shape == source.shape
    np.testing.assert_allclose(seg.affine, source.affine, atol=1e-5)
    assert nib.aff2axcodes(seg.affine) == nib.aff2axcodes(source.affine)
    labels = np.asarray(seg.dataobj)
    assert labels.dtype == np.uint8 and labels.max() <= 4


def _two_inputs_and_a_folder(root: Path) -> tuple[list[Path], list[str], list[str]]:
    good = root / "s1" / "T1.nii.gz"
    nib.save(nib.Nifti1Image(_image(), AFFINE), str(good))
    folder = root / "s2"
    return (
        [good, root / "s3" / "T1.nii.gz", folder],
        [],
        ["2 of 3 input images cannot be read", "not found", "a folder"],
    )


def _two_channel(root: Path) -> tuple[list[Path], list[str], list[str]]:
    path = root / "s1" / "T1.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([_image()] * 2, -1), AFFINE), str(path))
    return [path], [], ["expected a single-channel 2D", "(160, 192, 2)"]


def _text_file(root: Path) -> tuple[list[Path], list[str], list[str]]:
    path = root / "s1" / "notes.txt"
    path.write_text("not an image\n")
    return [path], [], ["cannot read"]


def _output_over_an_input(root: Path) -> tuple[list[Path], list[str], list[str]]:
    a, a_seg = root / "s1" / "a.nii.gz", root / "s1" / "a_seg.nii.gz"
    nib.save(nib.Nifti1Image(_image(), AFFINE), str(a))
    nib.save(nib.Nifti1Image(_image() * 0.9, AFFINE), str(a_seg))
    return [a, a_seg], [], ["is also a file this run reads", "would be overwritten"]  # written into root


def _bad_option(option: str, value: str, phrase: str) -> Callable:
    def build(root: Path) -> tuple[list[Path], list[str], list[str]]:
        path = root / "s1" / "T1.nii.gz"
        nib.save(nib.Nifti1Image(_image(), AFFINE), str(path))
        return [path], [option, value], [phrase]

    return build


REFUSED = {
    "a missing file and a folder in the datalist": _two_inputs_and_a_folder,
    "two-channel slice": _two_channel,
    "a text file": _text_file,
    "an output that would overwrite an input": _output_over_an_input,
    "--output_scale 0": _bad_option("--output_scale", "0", "--output_scale must be an integer from 1 to 8"),
    "--fit_steps -1": _bad_option("--fit_steps", "-1", "--fit_steps must be an integer from 0 to 10000"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_any_work_naming_the_problem(tmp_path, case):
    root = tmp_path / "in"
    (root / "s1").mkdir(parents=True)
    (root / "s2").mkdir()
    files, extra, phrases = REFUSED[case](root)
    save_tiny_metaseg(tmp_path / "models")
    hashes = {p: _sha(p) for p in root.rglob("*") if p.is_file()}
    out = root if case == "an output that would overwrite an input" else tmp_path / "out"
    proc = run_inference_on_files(files, out, tmp_path / "models", "--fit_steps", "2", *extra, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert all(p in log for p in phrases), log[-4000:]
    assert str(files[0]) in log or str(files[-1]) in log or case.startswith("--")
    assert "object at 0x" not in log.split("ERROR")[-1][:400]
    assert not [p for p in out.rglob("*") if p.is_file() and p not in hashes and p.name != "failures.csv"]
    assert {p: _sha(p) for p in root.rglob("*") if p.is_file()} == hashes  # nothing written next to the inputs


def test_empty_datalist_is_refused(tmp_path):
    save_tiny_metaseg(tmp_path / "models")
    proc = run_bundle(
        "run",
        "inference",
        "--config_file",
        "configs/inference.json",
        "--datalist",
        "[]",
        "--dataset_dir",
        str(tmp_path),
        "--ckpt_dir",
        str(tmp_path / "models"),
        "--output_dir",
        str(tmp_path / "out"),
        *TINY_NET,
        check=False,
    )
    assert proc.returncode != 0 and "the inference datalist is empty" in proc.stderr
    assert _files(tmp_path / "out") == []


def _nan_weights(models: Path) -> None:
    import torch

    save_tiny_metaseg(models)
    state = torch.load(models / "model.pt", weights_only=True)
    state["trunk.0.weight"][0, 0] = float("nan")
    torch.save(state, models / "model.pt")


@pytest.mark.parametrize(
    "case, extra, phrases",
    [
        ("NaN in the weights", [], ["the test-time fit failed", "NaN or infinite"]),
        (
            "a learning rate that makes the fit diverge",
            ["--fit_lr", "1.0", "--fit_lr_end_factor", "1.0"],
            ["the test-time fit failed: it diverged", "--fit_lr 1 is too high"],
        ),
    ],
)
def test_a_diverging_fit_is_an_error_naming_the_image_and_writes_no_label(tmp_path, case, extra, phrases):
    """A fit whose loss becomes NaN or infinite or rises more than tenfold gave an all-background label and exit 0;
    now the run fails, naming the image and the cause, and writes no label for it."""
    path = tmp_path / "in" / "s1" / "T1.nii.gz"
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(_image(), AFFINE), str(path))
    if case == "NaN in the weights":
        _nan_weights(tmp_path / "models")
    else:
        save_tiny_metaseg(tmp_path / "models")
    out = tmp_path / "out"
    proc = run_inference_on_files([path], out, tmp_path / "models", "--fit_steps", "2", *extra, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert all(p in log for p in phrases) and f"{path}: the test-time fit failed" in log, log[-4000:]
    assert "no label is written for it" in log
    assert not [p for p in out.rglob("*") if p.is_file()]
