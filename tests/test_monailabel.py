"""MONAI Label hosting: the monaibundle sample app serves the zoo package's fit-then-decode inference over REST.

Runs in MONAI Label's own environment (``requirements-monailabel.txt``), whose python ``.ci/run`` puts in
``METASEG_MONAILABEL_PYTHON``; skipped when that variable is unset.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tools.package_bundle import BUNDLE_NAME, package_bundle

ML_PYTHON = os.environ.get("METASEG_MONAILABEL_PYTHON", "")
pytestmark = pytest.mark.skipif(
    not ML_PYTHON,
    reason="MONAI Label environment absent: run .ci/monailabel_env.sh and set METASEG_MONAILABEL_PYTHON "
    "(.ci/run does both)",
)
START_TIMEOUT_S = 300
CLASSES = (1, 2, 3, 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_app() -> Path:
    """The monaibundle sample app shipped inside the monailabel wheel (``<venv>/monailabel/sample-apps``)."""
    app = Path(ML_PYTHON).resolve().parents[1] / "monailabel" / "sample-apps" / "monaibundle"
    if not (app / "main.py").is_file():
        venv = Path(ML_PYTHON).parents[1]
        found = list(venv.glob("**/sample-apps/monaibundle/main.py"))
        if not found:
            raise FileNotFoundError(f"no monaibundle sample app under {venv}; is monailabel installed there?")
        app = found[0].parent
    return app


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


@pytest.fixture
def server(tmp_path, tiny_dataset):
    """A MONAI Label server on 127.0.0.1 hosting the unpacked zoo package; yields (base url, studies, log path)."""
    dataset_dir, _ = tiny_dataset
    app = tmp_path / "app"
    shutil.copytree(_sample_app(), app, ignore=shutil.ignore_patterns("__pycache__"))
    zipfile.ZipFile(package_bundle(tmp_path / "dist")).extractall(app / "model")
    studies = tmp_path / "studies"
    studies.mkdir()
    for subject in sorted(p.parent for p in dataset_dir.glob("*/slice_norm.nii.gz"))[:2]:
        shutil.copy(subject / "slice_norm.nii.gz", studies / f"{subject.name}.nii.gz")
    port = _free_port()
    log = tmp_path / "server.log"
    cmd = [ML_PYTHON, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    for key, value in [("models", BUNDLE_NAME), ("zoo_source", "local"), ("sam2", "false"), ("skip_trainers", "true")]:
        cmd += ["--conf", key, value]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2", CUDA_VISIBLE_DEVICES="")
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"MONAI Label exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
            try:
                _get(f"{base}/info/", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise AssertionError(f"MONAI Label not up after {START_TIMEOUT_S} s:\n{log.read_text()[-6000:]}")
                time.sleep(2)
        yield base, studies, log, app / "model" / BUNDLE_NAME
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: the server and its workers only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def test_monailabel_serves_fit_then_decode(server, tiny_dataset, tmp_path):
    base, studies, log, bundle = server
    dataset_dir, _ = tiny_dataset
    info = json.loads(_get(f"{base}/info/"))
    model = info["models"][BUNDLE_NAME]
    assert model["labels"] == {"cortex": 1, "subcortical grey matter": 2, "white matter": 3, "csf": 4}
    assert (
        model["dimension"] == 2
        and model["version"] == json.loads((bundle / "configs/metadata.json").read_text())["version"]
    )

    image_id = sorted(p.name[: -len(".nii.gz")] for p in studies.glob("*.nii.gz"))[0]
    out = tmp_path / "pred.nii.gz"
    out.write_bytes(_post(f"{base}/infer/{BUNDLE_NAME}?image={image_id}&output=image", log))
    pred = np.asarray(nib.load(out).dataobj)
    ref = np.asarray(nib.load(dataset_dir / image_id / "slice_seg4.nii.gz").dataobj)
    assert pred.shape in (ref.shape, (1, *ref.shape)), pred.shape  # MONAI Label writes the channel-first label map
    pred = pred.reshape(ref.shape)
    assert set(np.unique(pred).tolist()) <= {0, *CLASSES}
    mean_dice = float(np.mean([_dice(pred, ref, c) for c in CLASSES]))
    assert mean_dice > 0.5, mean_dice
    print(f"MONAI Label fit-then-decode: mean foreground Dice {mean_dice:.3f} on {image_id}")

    # the network is loaded once, not per request: corrupt the hosted checkpoint (same mtime, which is what MONAI
    # Label's cache checks) and infer again; a reload would fail
    ckpt = bundle / "models" / "model.pt"
    stat = ckpt.stat()
    ckpt.write_bytes(b"not a checkpoint")
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = tmp_path / "pred2.nii.gz"
    again.write_bytes(_post(f"{base}/infer/{BUNDLE_NAME}?image={image_id}&output=image", log))
    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj).reshape(ref.shape), pred)
    assert "Checkpoint keys don't match" not in log.read_text()
