"""MONAI Label hosting: ``tools/serve_monailabel.sh`` serves the bundle's fit-then-decode inference over REST.

The server runs in MONAI Label's own environment (``requirements-monailabel.txt``), whose python ``.ci/run`` puts in
``METASEG_MONAILABEL_PYTHON``; the end-to-end test is skipped when that variable is unset. The checks of the script's
arguments run without it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.utils import REPO_ROOT

ML_PYTHON = os.environ.get("METASEG_MONAILABEL_PYTHON", "")
requires_monailabel = pytest.mark.skipif(
    not ML_PYTHON,
    reason="MONAI Label environment absent: run .ci/monailabel_env.sh and set METASEG_MONAILABEL_PYTHON "
    "(.ci/run does both)",
)
SERVE = "tools/serve_monailabel.sh"
BUNDLE_NAME = "metaseg_brain_mri_segmentation"
START_TIMEOUT_S = 300
CLASSES = (1, 2, 3, 4)
MIN_MEAN_DICE = 0.8  # measured 0.852 on the tiny demo set's two test subjects with release 0.7.0's weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def _post(url: str, log: Path, timeout: float = 600) -> bytes:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        raise AssertionError(f"POST {url}: {e.code} {e.read()[:2000]!r}\nserver log:\n{log.read_text()[-6000:]}") from e


def _dice(pred: np.ndarray, ref: np.ndarray, c: int) -> float:
    denom = (pred == c).sum() + (ref == c).sum()
    return 2.0 * np.logical_and(pred == c, ref == c).sum() / denom if denom else 1.0


def _tree(folder: Path) -> dict[str, float]:
    """Every path under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def _serve(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    """``tools/serve_monailabel.sh <args>`` from the bundle root, without the project venv on the path."""
    env = {k: v for k, v in (env or os.environ).items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    if "stdout" in kwargs:  # a server
        return subprocess.Popen([SERVE, *args], cwd=REPO_ROOT, env=env, start_new_session=True, **kwargs)
    return subprocess.run([SERVE, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def server(tmp_path, tiny_dataset):
    """The README's command on a free local port; yields (base url, log path, work folder); stops the server."""
    dataset_dir, _ = tiny_dataset
    port = _free_port()
    workdir = tmp_path / "monailabel"
    log = tmp_path / "server.log"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="")
    with open(log, "w") as out:
        args = ("--studies", str(dataset_dir), "--port", str(port), "--workdir", str(workdir))
        proc = _serve(*args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{SERVE} exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            try:
                _get(f"{base}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"MONAI Label not up after {START_TIMEOUT_S} s:\n{log.read_text()[-6000:]}")
                time.sleep(2)
        yield base, log, workdir
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: the server and its workers only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@requires_monailabel
def test_monailabel_serves_fit_then_decode(tiny_dataset, tmp_path, request):
    dataset_dir, splits = tiny_dataset
    before = _tree(dataset_dir)
    base, log, workdir = request.getfixturevalue("server")
    first_line = log.read_text().splitlines()[0]
    assert first_line.startswith(f"MetaSeg in MONAI Label: {base}/ (9 images from "), first_line
    bundle = workdir / "app" / "model" / BUNDLE_NAME
    info = json.loads(_get(f"{base}/info/"))
    model = info["models"][BUNDLE_NAME]
    assert model["labels"] == {"cortex": 1, "subcortical grey matter": 2, "white matter": 3, "csf": 4}
    meta = json.loads((REPO_ROOT / "configs/metadata.json").read_text())
    assert model["dimension"] == 2 and model["version"] == meta["version"]

    # the neurite-oasis layout: image id = subject folder
    test_subjects = [Path(d["img"]).parent.name for d in json.loads(splits.read_text())["test"]]
    dice = []
    for subject in test_subjects:
        out = tmp_path / f"{subject}.nii.gz"
        out.write_bytes(_post(f"{base}/infer/{BUNDLE_NAME}?image={subject}&output=image", log))
        label = nib.load(out)
        assert label.get_data_dtype() == np.uint8  # metadata.json's post_processed_outputs
        pred = np.asarray(label.dataobj)
        ref = np.asarray(nib.load(dataset_dir / subject / "slice_seg4.nii.gz").dataobj)
        assert pred.shape in (ref.shape, (1, *ref.shape)), pred.shape  # MONAI Label writes the channel-first map
        pred = pred.reshape(ref.shape)
        assert set(np.unique(pred).tolist()) <= {0, *CLASSES}
        dice.append(float(np.mean([_dice(pred, ref, c) for c in CLASSES])))
    print(f"MONAI Label fit-then-decode: mean foreground Dice {np.mean(dice):.3f} ({dice})")
    assert np.mean(dice) > MIN_MEAN_DICE, dice

    # the network is loaded once, not per request: corrupt the hosted checkpoint (same mtime, which is what MONAI
    # Label's cache checks) and infer again; a reload would fail
    ckpt = bundle / "models" / "model.pt"
    stat = ckpt.stat()
    ckpt.write_bytes(b"not a checkpoint")
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = tmp_path / "again.nii.gz"
    again.write_bytes(_post(f"{base}/infer/{BUNDLE_NAME}?image={test_subjects[-1]}&output=image", log))
    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj).reshape(pred.shape), pred)
    assert "Checkpoint keys don't match" not in log.read_text()

    # MONAI Label's lock, index and labels live in the work folder; the studies folder is only read
    assert (workdir / "studies" / ".lock").exists() and (workdir / "studies" / "labels").is_dir()
    assert _tree(dataset_dir) == before


def test_serve_refuses_folders_it_must_not_write(tmp_path, tiny_dataset):
    """Bad folders fail before anything is written or MONAI Label's environment is built."""
    dataset_dir, _ = tiny_dataset
    env = dict(os.environ, METASEG_MONAILABEL_PYTHON=str(tmp_path / "no-such-python"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    before = _tree(tmp_path)
    cases = {
        ("--studies", str(tmp_path / "missing")): "does not exist",
        ("--studies", str(tmp_path / "empty"), "--workdir", str(tmp_path / "w")): "no images in",
        ("--studies", str(dataset_dir), "--workdir", str(dataset_dir / "ml")): "lies inside the studies",
        ("--studies", str(dataset_dir), "--workdir", str(tmp_path / "used")): "not made by this script",
        ("--studies", str(dataset_dir), "--workdir", str(dataset_dir.parent)): "lies inside --workdir",
        ("--studies", str(dataset_dir), "--port", "http"): "--port must be",
        ("--studes", str(dataset_dir)): "unknown argument",
    }
    for args, message in cases.items():
        proc = _serve(*args, env=env)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
    assert _tree(tmp_path) == before


def _fake_monailabel(tmp_path: Path) -> Path:
    """A stand-in for MONAI Label's python: a sample app where the wheel keeps it; ``-m ...`` records its arguments."""
    prefix = tmp_path / "fake-venv"
    (prefix / "monailabel" / "sample-apps" / "monaibundle").mkdir(parents=True)
    (prefix / "monailabel" / "sample-apps" / "monaibundle" / "main.py").write_text("# sample app\n")
    python = prefix / "python"
    python.write_text(f'#!/bin/sh\n[ "$1" = -c ] && echo {prefix} && exit 0\necho "$@" > {prefix}/args\n')
    python.chmod(0o755)
    return python


def test_serve_assembles_app_and_studies_copy(tmp_path, tiny_dataset):
    """Both layouts are served (ids: subject folder, file name); a restart refreshes the images, keeps the labels."""
    dataset_dir, _ = tiny_dataset
    python = _fake_monailabel(tmp_path)
    studies = tmp_path / "studies"
    (studies / "sub-01").mkdir(parents=True)
    image = dataset_dir / "OASIS_OAS1_0006_MR1" / "slice_norm.nii.gz"
    for target in (studies / "sub-01" / "slice_norm.nii.gz", studies / "flat.nii.gz", studies / "other.nii"):
        target.write_bytes(image.read_bytes())
    workdir = tmp_path / "ml"
    env = dict(os.environ, METASEG_MONAILABEL_PYTHON=str(python))
    before = _tree(studies)
    proc = _serve("--studies", str(studies), "--port", "8123", "--workdir", str(workdir), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"MetaSeg in MONAI Label: http://127.0.0.1:8123/ (3 images from {studies};")
    view = workdir / "studies"
    assert sorted(p.name for p in view.iterdir()) == ["flat.nii.gz", "other.nii", "sub-01.nii.gz"]
    assert not any(p.is_symlink() for p in view.iterdir())
    args = (python.parent / "args").read_text().split()
    assert args[:3] == ["-m", "monailabel.main", "start_server"]
    assert " ".join(args[3:]).startswith(f"--app {workdir / 'app'} --studies {view} --host 127.0.0.1 --port 8123")
    bundle = workdir / "app" / "model" / BUNDLE_NAME
    assert (bundle / "models" / "model.pt").read_bytes() == (REPO_ROOT / "models" / "model.pt").read_bytes()
    assert (bundle / "configs" / "inference.json").is_file() and (bundle / "scripts" / "network.py").is_file()
    assert (workdir / "app" / "main.py").is_file()

    (view / "labels" / "final").mkdir(parents=True)
    (view / "labels" / "final" / "flat.nii.gz").write_text("a saved label")
    (studies / "other.nii").unlink()
    before.pop("other.nii")
    proc = _serve("--studies", str(studies), "--port", "8123", "--workdir", str(workdir), env=env)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in view.glob("*.nii*")) == ["flat.nii.gz", "sub-01.nii.gz"]
    assert (view / "labels" / "final" / "flat.nii.gz").read_text() == "a saved label"
    assert _tree(studies) == before

    (studies / "sub-01.nii.gz").write_bytes(image.read_bytes())
    proc = _serve("--studies", str(studies), "--workdir", str(workdir), env=env)
    assert proc.returncode == 2 and "would both be served as sub-01" in proc.stderr, proc.stderr
