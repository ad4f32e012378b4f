"""MONAI Label hosting: ``tools/serve_monailabel.sh`` serves the bundle's fit-then-decode inference over REST.

The server runs in MONAI Label's own environment (``requirements-monailabel.txt``), whose python ``.ci/run`` puts in
``METASEG_MONAILABEL_PYTHON``; the end-to-end test is skipped when that variable is unset. The checks of the script's
arguments run without it.
"""

from __future__ import annotations

import gzip
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

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


def _call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 600
) -> tuple[int, bytes, dict[str, str]]:
    """``(status, body, lower-case headers)`` of one request; error statuses are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def _form(**fields: str | tuple[str, bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body: ``name=text`` or ``name=(file name, bytes)``; with its Content-Type header."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        disposition = f'form-data; name="{name}"'
        if isinstance(value, tuple):
            disposition += f'; filename="{value[0]}"'
            value = value[1]
        data = value.encode() if isinstance(value, str) else value
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), {
        "Content-Type": f"multipart/form-data; boundary={boundary}"
    }


def _dice(pred: np.ndarray, ref: np.ndarray, c: int) -> float:
    denom = (pred == c).sum() + (ref == c).sum()
    return 2.0 * np.logical_and(pred == c, ref == c).sum() / denom if denom else 1.0


def _tree(folder: Path) -> dict[str, float]:
    """Every path under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def _contents(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (``None`` for a folder)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _serve(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    """``tools/serve_monailabel.sh <args>`` from the bundle root, without the project venv on the path."""
    env = {k: v for k, v in (env or os.environ).items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    if "stdout" in kwargs:  # a server
        return subprocess.Popen([SERVE, *args], cwd=REPO_ROOT, env=env, start_new_session=True, **kwargs)
    return subprocess.run([SERVE, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)


@dataclass(frozen=True)
class Server:
    """A running server: its url and port, log, work folder, and its studies folder as it was before the start."""

    base: str
    port: int
    pid: int  # the server's python (the script execs it)
    log: Path
    workdir: Path
    studies: Path
    studies_tree: dict[str, float]
    studies_contents: dict[str, bytes | None]

    @property
    def view(self) -> Path:
        """MONAI Label's studies folder: the copy of the images, the labels and the datastore index."""
        return self.workdir / "studies"

    def peak_memory_kib(self) -> int:
        """The server's peak resident memory so far (``VmHWM``), in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
        """``(status, body text, headers)`` of ``method path`` (path from the server's root)."""
        status, body, headers = _call(method, self.base + path, **kwargs)
        return status, body.decode(errors="replace"), headers


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dataset):
    """The README's command on a free local port, once for this module; yields a ``Server``; stops the server."""
    dataset_dir, _ = tiny_dataset
    tree, contents = _tree(dataset_dir), _contents(dataset_dir)
    tmp = tmp_path_factory.mktemp("monailabel")
    port = _free_port()
    workdir = tmp / "monailabel"
    log = tmp / "server.log"
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
                    raise AssertionError(
                        f"MONAI Label not up after {START_TIMEOUT_S} s:\n{log.read_text()[-6000:]}"
                    ) from None
                time.sleep(2)
        yield Server(base, port, proc.pid, log, workdir, dataset_dir, tree, contents)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: the server and its workers only
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


@requires_monailabel
def test_monailabel_serves_fit_then_decode(tiny_dataset, tmp_path, server):
    dataset_dir, splits = tiny_dataset
    base, log, workdir = server.base, server.log, server.workdir
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
        ref_image = nib.load(dataset_dir / subject / "slice_seg4.nii.gz")
        ref = np.asarray(ref_image.dataobj)
        assert pred.shape == ref.shape, pred.shape  # the input's (160, 192, 1), not MONAI Label's channel-first map
        np.testing.assert_allclose(label.affine, ref_image.affine)
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
    np.testing.assert_array_equal(np.asarray(nib.load(again).dataobj), pred)
    assert "Checkpoint keys don't match" not in log.read_text()

    # MONAI Label's lock, index and labels live in the work folder; the studies folder is only read
    assert (workdir / "studies" / ".lock").exists() and (workdir / "studies" / "labels").is_dir()
    assert _tree(dataset_dir) == server.studies_tree


# --- the REST API turned against its user: every request below is refused with a 4xx and writes nothing -------------

INFER = f"/infer/{BUNDLE_NAME}"
STUDY = "OASIS_OAS1_0001_MR1"  # a served image id (neurite-oasis layout: the subject folder)
NOT_PLAIN = "is not a plain datastore name"
# {abs}: the absolute path of the served study's original file without its extension (the id that overwrote and
# deleted it); {tmp}: a folder outside the work folder; {x}: a name no file may get
BAD_ID_REQUESTS = {
    "upload over the original study": ("PUT", "/datastore/image?image={abs}", "file"),
    "delete the original study": ("DELETE", "/datastore/image?id={abs}", None),
    "upload to ../": ("PUT", "/datastore/image?image=../{x}", "file"),
    "upload to ../../, %-encoded": ("PUT", "/datastore/image?image=..%2F..%2F{x}", "file"),
    "upload to an absolute path": ("PUT", "/datastore/image?image={tmp}/{x}", "file"),
    "upload with backslashes": ("PUT", "/datastore/image?image=a%5C..%5C..%5C{x}", "file"),
    "upload with a NUL": ("PUT", "/datastore/image?image={x}%00.json", "file"),
    "upload as a hidden file": ("PUT", "/datastore/image?image=.{x}", "file"),
    "label tag ../../": ("PUT", "/datastore/label?image=" + STUDY + "&tag=../../{x}", "label"),
    "label tag absolute": ("PUT", "/datastore/label?image=" + STUDY + "&tag={tmp}/{x}", "label"),
    "label for image ../": ("PUT", "/datastore/label?image=../{x}&tag=final", "label"),
    "delete label tag ../..": ("DELETE", "/datastore/label?id=" + STUDY + "&tag=../..", None),
    "download ../ image": ("GET", "/datastore/image?image=../../{x}", None),
    "infer on a file by path": ("POST", INFER + "?image={abs}.nii.gz", None),
    "infer on ../": ("POST", INFER + "?image=../studies/" + STUDY, None),
}


def _nowhere(name: str, root: Path) -> list[Path]:
    """Files named like ``name`` under ``root`` (the test session's temporary folders), in the bundle's top folder
    and in the system's temporary folder (where MONAI Label keeps uploads while it handles them)."""
    found = list(root.rglob(f"*{name}*"))
    return found + [p for folder in (REPO_ROOT, Path(tempfile.gettempdir())) for p in folder.glob(f"*{name}*")]


@requires_monailabel
@pytest.mark.parametrize("case", list(BAD_ID_REQUESTS))
def test_ids_that_are_not_plain_names_are_refused(server, case, tmp_path_factory):
    method, path, upload = BAD_ID_REQUESTS[case]
    x = f"pwned-{uuid.uuid4().hex[:8]}"
    original = server.studies / STUDY / "slice_norm"
    path = path.format(abs=original, tmp=tmp_path_factory.getbasetemp(), x=x)
    other = (server.studies / "OASIS_OAS1_0002_MR1" / "slice_norm.nii.gz").read_bytes()  # another valid image
    body, headers = _form(**{upload: ("x.nii.gz", other)}) if upload else (None, {})
    status, text, _ = server.call(method, path, body=body, headers=headers)
    assert status == 400 and NOT_PLAIN in text, (status, text)
    assert not _nowhere(x, tmp_path_factory.getbasetemp())
    assert (server.view / f"{STUDY}.nii.gz").read_bytes() == Path(f"{original}.nii.gz").read_bytes()


def _study_bytes(server: Server) -> bytes:
    return (server.studies / STUDY / "slice_norm.nii.gz").read_bytes()


@requires_monailabel
def test_infer_reads_datastore_images_only(server):
    """No path in ``params``, no uploaded file, no session, no label input; an unknown id is a 404."""
    other = server.studies / "OASIS_OAS1_0002_MR1" / "slice_norm.nii.gz"
    for params in ({"image": str(other)}, {"image": "../studies/OASIS_OAS1_0002_MR1"}):
        body, headers = _form(params=json.dumps(params))
        status, text, _ = server.call("POST", f"{INFER}?image={STUDY}", body=body, headers=headers)
        assert status == 400 and "infer reads datastore images only: upload with PUT /datastore/image" in text, text
        assert f"{params['image']!r} {NOT_PLAIN}" in json.loads(text)["detail"], text
    body, headers = _form(file=("x.nii.gz", other.read_bytes()))
    status, text, _ = server.call("POST", INFER, body=body, headers=headers)
    assert status == 400 and "infer reads datastore images only" in text, text
    status, text, _ = server.call("POST", f"{INFER}?image={STUDY}&session_id=abc")
    assert status == 400 and "sessions are disabled on this server" in text, text
    body, headers = _form(label=("l.nii.gz", other.read_bytes()))
    status, text, _ = server.call("POST", f"{INFER}?image={STUDY}", body=body, headers=headers)
    assert (status, json.loads(text)) == (400, {"detail": "infer takes no label or session input on this server"})
    status, text, _ = server.call("POST", f"{INFER}?image=no-such-image")
    assert (status, json.loads(text)) == (404, {"detail": "no image 'no-such-image' in the datastore"})


@requires_monailabel
def test_served_studies_are_neither_replaced_nor_deleted(server):
    """The studies' images (and the uploaded ones) are never replaced; the studies' ones never deleted."""
    before = (server.view / f"{STUDY}.nii.gz").read_bytes()
    other = (server.studies / "OASIS_OAS1_0002_MR1" / "slice_norm.nii.gz").read_bytes()
    body, headers = _form(file=("x.nii.gz", other))
    status, text, _ = server.call("PUT", f"/datastore/image?image={STUDY}", body=body, headers=headers)
    assert (status, json.loads(text)) == (409, {"detail": f"image '{STUDY}' exists; upload under another id"})
    status, text, _ = server.call("DELETE", f"/datastore/image?id={STUDY}")
    assert (status, json.loads(text)) == (403, {"detail": f"image '{STUDY}' is served from --studies: only read"})
    assert (server.view / f"{STUDY}.nii.gz").read_bytes() == before == _study_bytes(server)
    # nor the served weights
    weights = server.workdir / "app" / "model" / BUNDLE_NAME / "models"
    before = _contents(weights)
    body, headers = _form(file=("model.pt", b"weights"))
    for method in ("PUT", "DELETE"):
        status, text, _ = server.call(method, f"/model/{BUNDLE_NAME}", body=body, headers=headers)
        assert status == 403 and "the served weights are a copy" in text, text
    assert _contents(weights) == before


FOREIGN = {
    "upload": ("PUT", "/datastore/image?image=foreign-upload", "file", {"Origin": "http://evil.example"}),
    "delete a study": ("DELETE", f"/datastore/image?id={STUDY}", None, {"Origin": "https://evil.example"}),
    "save a label": ("PUT", f"/datastore/label?image={STUDY}&tag=final", "label", {"Origin": "http://evil.example"}),
    "infer": ("POST", f"{INFER}?image={STUDY}", None, {"Origin": "http://127.0.0.1.evil.example"}),
    "preflight": (
        "OPTIONS",
        "/datastore/image",
        None,
        {"Origin": "http://evil.example", "Access-Control-Request-Method": "DELETE"},
    ),
    "sandboxed page (Origin: null)": ("GET", "/info/", None, {"Origin": "null"}),
    "another port of localhost": (
        "PUT",
        "/datastore/image?image=foreign-upload",
        "file",
        {"Origin": "http://localhost:1"},
    ),
    "cross-site without Origin": (
        "PUT",
        "/datastore/image?image=foreign-upload",
        "file",
        {"Sec-Fetch-Site": "cross-site"},
    ),
    "DNS rebinding (foreign Host)": ("GET", "/datastore/?output=all", None, {"Host": "evil.example"}),
}


@requires_monailabel
@pytest.mark.parametrize("case", list(FOREIGN))
def test_requests_from_other_web_pages_are_refused(server, case):
    method, path, upload, headers = FOREIGN[case]
    headers = {
        k: v.replace("evil.example", f"evil.example:{server.port}") if k == "Host" else v for k, v in headers.items()
    }
    body = None
    if upload:
        body, form_headers = _form(**{upload: ("x.nii.gz", _study_bytes(server))})
        headers = {**headers, **form_headers}
    before = _contents(server.view)
    status, text, answer = server.call(method, path, body=body, headers=headers)
    assert status == 403 and "refused" in text, (status, text)
    assert "access-control-allow-origin" not in answer
    assert _contents(server.view) == before


@requires_monailabel
def test_cors_answers_the_servers_own_origins(server):
    for host in ("127.0.0.1", "localhost"):
        origin = f"http://{host}:{server.port}"
        status, _, headers = server.call("GET", "/info/", headers={"Origin": origin})
        assert status == 200 and headers["access-control-allow-origin"] == origin, headers
    assert f"MetaSeg guard: origins ['http://127.0.0.1:{server.port}', 'http://localhost:{server.port}']" in (
        server.log.read_text()
    )


def _raw_upload(server: Server, path: str, declared: int | None, chunks: int) -> tuple[int, dict]:
    """PUT a multipart upload of ``chunks`` x 1 MiB, declaring ``declared`` bytes or sent chunked; (status, answer)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n\r\n'.encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    try:
        if declared is None:
            body = itertools.chain([head], itertools.repeat(bytes(2**20), chunks))
            conn.request("PUT", path, body=body, headers=headers, encode_chunked=True)
        else:
            conn.putrequest("PUT", path)
            for k, v in {**headers, "Content-Length": str(declared)}.items():
                conn.putheader(k, v)
            conn.endheaders(head)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body was sent
    response = conn.getresponse()
    try:
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def _bomb(shape: tuple[int, ...], payload_mb: int = 64) -> bytes:
    """A .nii.gz whose header declares ``shape`` (uint8) and whose gzip stream holds ``payload_mb`` MiB of zeros."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    return gzip.compress(header.binaryblock + bytes(4) + bytes(payload_mb * 2**20), compresslevel=1)


@requires_monailabel
def test_oversize_uploads_and_decompression_bombs_are_refused(server):
    before = _contents(server.view)
    status, answer = _raw_upload(server, "/datastore/image?image=huge", 300 * 2**20, 0)
    assert status == 413 and answer["detail"].startswith(
        f"request body of {300 * 2**20} bytes; at most 134217728"
    ), answer
    status, answer = _raw_upload(server, "/datastore/image?image=huge", None, 130)  # no Content-Length
    assert (status, answer) == (413, {"detail": "request body over 134217728 bytes (METASEG_MONAILABEL_MAX_UPLOAD_MB)"})
    bomb = _bomb((2048, 2048, 2048))
    assert len(bomb) < 2**20  # 8 G voxels declared in under 1 MB
    peak = server.peak_memory_kib()
    declared = "its header declares shape (2048, 2048, 2048), 8589934592 voxels; this server accepts at most 33554432"
    for path, field, what in (
        ("/datastore/image?image=bomb", "file", "image 'bomb'"),
        (f"/datastore/label?image={STUDY}&tag=final", "label", f"label of '{STUDY}'"),
    ):
        body, headers = _form(**{field: ("bomb.nii.gz", bomb)})
        status, text, _ = server.call("PUT", path, body=body, headers=headers)
        assert (status, json.loads(text)) == (413, {"detail": f"{what}: {declared} (METASEG_MONAILABEL_MAX_VOXELS)"})
    assert server.peak_memory_kib() - peak < 256 * 1024  # the bombs' data were never decompressed
    assert _contents(server.view) == before


@requires_monailabel
def test_junk_uploads_get_a_4xx_with_a_message(server):
    before = _contents(server.view)
    good = _study_bytes(server)
    cases = {
        ("junk.nii.gz", os.urandom(4096), "{}"): (415, "image 'junk' is not a readable NIfTI file"),
        ("junk.txt", b"not an image", "{}"): (415, "image 'junk': only .nii.gz and .nii files are accepted"),
        ("junk.nii.gz", good[: len(good) // 2], "{}"): (415, "image 'junk': its data cannot be read"),
        ("junk.nii.gz", b"", "{}"): (415, "image 'junk' is not a readable NIfTI file"),
        ("junk.nii.gz", good, "{not json"): (400, "Expecting property name enclosed in double quotes"),
    }
    for (name, data, params), (code, message) in cases.items():
        body, headers = _form(params=params, file=(name, data))
        status, text, _ = server.call("PUT", "/datastore/image?image=junk", body=body, headers=headers)
        assert status == code and json.loads(text)["detail"].startswith(message), (name, status, text)
    assert _contents(server.view) == before


@requires_monailabel
def test_an_image_the_bundle_refuses_is_a_422_naming_the_reason(server):
    """A readable NIfTI that the bundle's input checks refuse (a constant image): 422 with their message, not a 500."""
    body, headers = _form(
        file=("flat.nii.gz", gzip.compress(nib.Nifti1Image(np.ones((160, 192)), np.eye(4)).to_bytes()))
    )
    assert server.call("PUT", "/datastore/image?image=flat", body=body, headers=headers)[:2] == (
        200,
        '{"image":"flat"}',
    )
    status, text, _ = server.call("POST", f"{INFER}?image=flat")
    detail = json.loads(text)["detail"]
    assert status == 422 and detail.startswith("cannot segment image 'flat': ") and "the image is constant" in detail
    assert server.call("DELETE", "/datastore/image?id=flat")[:2] == (200, "{}")


@requires_monailabel
def test_batch_inference_with_default_parameters_runs_on_a_cpu(server):
    """``POST /batch/infer/<model>`` without device parameters (a ZeroDivisionError on a CPU machine before): the
    label of the image it segments is stored in the datastore, on the image's grid."""
    body = json.dumps({"max_batch_size": 1}).encode()  # one image; no device, multi_gpu or gpus given
    status, text, _ = server.call(
        "POST",
        f"/batch/infer/{BUNDLE_NAME}?images=all&run_sync=true",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    result = json.loads(text)
    assert status == 200 and list(result) == [STUDY] and result[STUDY]["tag"] == "original", text
    files = {}
    for kind, path in (
        ("label", f"/datastore/label?label={STUDY}&tag=original"),
        ("image", f"/datastore/image?image={STUDY}"),
    ):
        status, body, _ = _call("GET", server.base + path)
        assert status == 200, body[:500]
        files[kind] = nib.Nifti1Image.from_bytes(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body)
    label, image = files["label"], files["image"]
    assert label.shape == image.shape and np.allclose(label.affine, image.affine)
    assert set(np.unique(np.asarray(label.dataobj)).tolist()) <= {0, *CLASSES}
    assert server.call("DELETE", f"/datastore/label?id={STUDY}&tag=original")[0] == 200


def _in_world(label: nib.Nifti1Image, image: nib.Nifti1Image) -> np.ndarray:
    """The label resampled (nearest) onto the image's grid in world coordinates, in the image's shape.

    ``mode="nearest"``: an oblique affine times its inverse puts a voxel of the one-voxel-thick axis at -1e-16, which
    scipy's default mode would read as outside the label."""
    as_3d = [i if i.ndim == 3 else nib.Nifti1Image(np.asarray(i.dataobj)[..., None], i.affine) for i in (label, image)]
    return np.asarray(resample_from_to(*as_3d, order=0, mode="nearest").dataobj).reshape(image.shape)


@requires_monailabel
@pytest.mark.parametrize("shape", [(160, 192), (160, 192, 1)], ids=["2d", "singleton-axis"])
def test_infer_returns_the_label_on_the_image_in_world_space(server, tmp_path, shape):
    """An uploaded slice, oblique and mirrored: the label has the file's shape and affine (and orientation codes)."""
    pixels = np.asarray(nib.load(server.studies / STUDY / "slice_norm.nii.gz").dataobj).reshape(shape)
    affine = np.array([[0.0, -1.2, 0.1, 90.0], [-0.9, 0.0, 0.2, -100.0], [0.0, 0.05, 1.1, 30.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(pixels, affine)
    image.set_qform(affine, code=1)
    image_id = f"upload-{len(shape)}d"
    body, headers = _form(file=(f"{image_id}.nii.gz", gzip.compress(image.to_bytes())))
    status, text, _ = server.call("PUT", f"/datastore/image?image={image_id}", body=body, headers=headers)
    assert (status, json.loads(text)) == (200, {"image": image_id})
    stored = nib.load(server.view / f"{image_id}.nii.gz")

    out = tmp_path / "label.nii.gz"
    out.write_bytes(_post(f"{server.base}{INFER}?image={image_id}&output=image", server.log))
    label = nib.load(out)
    pred = np.asarray(label.dataobj)
    assert label.shape == stored.shape == shape
    np.testing.assert_allclose(label.affine, stored.affine, atol=1e-6)
    assert label.header.get_qform(coded=True)[1] == 1 and label.header.get_sform(coded=True)[1] == 2
    assert label.get_data_dtype() == np.uint8 and set(np.unique(pred).tolist()) == {0, *CLASSES}
    np.testing.assert_array_equal(_in_world(label, stored), pred)

    # an uploaded image can be removed again (the studies' images cannot)
    assert server.call("DELETE", f"/datastore/image?id={image_id}")[:2] == (200, "{}")
    assert not (server.view / f"{image_id}.nii.gz").exists()


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
    # MONAI Label's app wrapped in the checks of tools/monailabel_guard.py
    assert (workdir / "app" / "metaseg_guard.py").read_bytes() == (REPO_ROOT / "tools/monailabel_guard.py").read_bytes()
    assert args[-2:] == ["--uvicorn_app", "metaseg_guard:app"]

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


@requires_monailabel
def test_studies_folder_is_byte_identical_after_the_api_suite(server, tmp_path_factory):
    """Last of this module's server tests (pytest runs them in file order): after every request above, the
    ``--studies`` folder holds the same files with the same bytes, no refused request wrote a file anywhere, and no
    request was answered with an unhandled error."""
    after = _contents(server.studies)
    changed = sorted(
        k for k in after.keys() | server.studies_contents.keys() if after.get(k) != server.studies_contents.get(k)
    )
    assert not changed, changed
    assert not _nowhere("pwned-", tmp_path_factory.getbasetemp())
    assert not list(server.workdir.parent.glob("*foreign*")) and not list(server.view.glob("*foreign*"))
    log = server.log.read_text()  # no request of this module ended in a 500 (uvicorn logs each one so)
    assert "Exception in ASGI application" not in log, log[log.find("Exception in ASGI application") - 3000 :][:8000]
