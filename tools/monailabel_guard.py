"""The checks that ``tools/serve_monailabel.sh`` puts around MONAI Label 0.8.5's server (``--uvicorn_app``).

The script copies this file into the app folder as ``metaseg_guard.py`` and starts MONAI Label with
``--uvicorn_app metaseg_guard:app``: MONAI Label's own FastAPI app, with

* a middleware that refuses requests from other web pages (an ``Origin`` other than the server's own or those in
  ``METASEG_MONAILABEL_CORS_ORIGINS``, a ``Sec-Fetch-Site: cross-site`` request, a ``Host`` other than the server's,
  which DNS rebinding would send), image, label and tag ids that are not plain datastore names, sessions, uploads of
  model weights, and request bodies over ``METASEG_MONAILABEL_MAX_UPLOAD_MB`` (default 128);
* a datastore that stores only readable NIfTI files of at most ``METASEG_MONAILABEL_MAX_VOXELS`` (default 2**25)
  voxels (read from the header, before any data is decompressed), never replaces an image and never deletes one
  served from ``--studies``;
* an ``infer`` that reads datastore images only and returns the label on the input's grid: the input file's shape
  and affine (MONAI Label would write a 2D slice's label as a ``(1, H, W)`` volume);
* CORS answers for those origins only (``allowed_origins``);
* exception handlers that answer MONAI Label's "not found" and bad-input errors with a 4xx instead of a 500.

It runs in MONAI Label's environment (``requirements-monailabel.txt``), not in the bundle's.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from json import JSONDecodeError
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import nibabel as nib
import numpy as np
import torch
from fastapi import HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from monailabel.app import app
from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces import app as app_module
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)
from monailabel.interfaces.tasks.batch_infer import BatchInferTask
from monailabel.tasks.infer.basic_infer import BasicInferTask

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_UPLOAD_BYTES = int(float(os.environ.get("METASEG_MONAILABEL_MAX_UPLOAD_MB", "128")) * 2**20)
MAX_VOXELS = int(os.environ.get("METASEG_MONAILABEL_MAX_VOXELS", str(2**25)))
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
ID_PARAMS = ("image", "id", "label", "tag")  # query parameters that MONAI Label turns into file names
LOCAL_HOSTS = ("127.0.0.1", "localhost")
_NOT_PLAIN = re.compile(r"[/\\\x00-\x1f]|\.\.|^\.|^$")


def id_problem(value: Any) -> str | None:
    """Why ``value`` is not a plain datastore name (``None`` when it is one): a name, never a path."""
    if not isinstance(value, str):
        return f"{value!r} is not a string"
    if os.path.isabs(value) or _NOT_PLAIN.search(value) or len(value) > 200:
        return (
            f"{value[:200]!r} is not a plain datastore name (no '/', '\\', '..', control characters or leading '.'; "
            "at most 200 characters)"
        )
    return None


def check_id(value: Any, what: str) -> str:
    """``value`` when it is a plain datastore name, else a 400 naming ``what``."""
    problem = id_problem(value)
    if problem:
        raise HTTPException(status_code=400, detail=f"{what}: {problem}")
    return value


def nifti_extension(path: str, what: str) -> str:
    """The NIfTI extension of ``path``; 415 when it has none."""
    for ext in NIFTI_EXTENSIONS:
        if path.endswith(ext):  # as the datastore's MONAI_LABEL_DATASTORE_FILE_EXT patterns match them
            return ext
    raise HTTPException(status_code=415, detail=f"{what}: only {' and '.join(NIFTI_EXTENSIONS)} files are accepted")


def check_nifti(path: str, what: str) -> None:
    """Refuse ``path`` unless it is a readable NIfTI of at most ``MAX_VOXELS`` voxels.

    The voxel count is read from the header first, so a small file that would decompress to gigabytes (a
    decompression bomb) is refused before its data are read; only then are the (bounded) data read, which finds
    truncated or corrupt files.
    """
    nifti_extension(path, what)
    try:
        image = nib.load(path)
        shape = tuple(int(n) for n in image.shape)
    except Exception as e:  # nibabel raises many types for junk
        raise HTTPException(status_code=415, detail=f"{what} is not a readable NIfTI file ({e})") from e
    voxels = math.prod(shape)
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)) or not shape or min(shape) < 1:
        raise HTTPException(status_code=415, detail=f"{what} is not a NIfTI image with data (shape {shape})")
    if voxels > MAX_VOXELS:
        raise HTTPException(
            status_code=413,
            detail=f"{what}: its header declares shape {shape}, {voxels} voxels; this server accepts at most "
            f"{MAX_VOXELS} (METASEG_MONAILABEL_MAX_VOXELS)",
        )
    try:
        proxy = image.dataobj
        np.asarray(proxy.get_unscaled() if hasattr(proxy, "get_unscaled") else proxy)  # stored dtype: no float copy
    except Exception as e:
        raise HTTPException(status_code=415, detail=f"{what}: its data cannot be read ({e})") from e


class GuardedDatastore(LocalDatastore):
    """MONAI Label's local datastore, storing only plain-named NIfTI files; the served studies are only read."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # the images the script copied from --studies (it removes all others at each start)
        self.served = frozenset(self.list_images())

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """Store a new image; an existing id (a served study or an earlier upload) is never replaced."""
        image_id = image_id or self._to_id(os.path.basename(image_filename))[0]
        check_id(image_id, "image id")
        check_nifti(image_filename, f"image '{image_id}'")
        if image_id in self._datastore.objects:
            raise HTTPException(status_code=409, detail=f"image '{image_id}' exists; upload under another id")
        return super().add_image(image_id, image_filename, image_info)

    def remove_image(self, image_id: str) -> None:
        """Remove an uploaded image; the images served from ``--studies`` are refused."""
        check_id(image_id, "image id")
        if image_id in self.served:
            raise HTTPException(status_code=403, detail=f"image '{image_id}' is served from --studies: only read")
        super().remove_image(image_id)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        """Store a label (a readable NIfTI) as ``labels/<tag>/<image id>``."""
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        check_nifti(label_filename, f"label of '{image_id}'")
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        """Remove a label; ids and tags must be plain names."""
        super().remove_label(check_id(label_id, "label id"), check_id(label_tag, "label tag"))

    def get_image_uri(self, image_id: str) -> str:
        """The image's path, or ``""`` (not found) for an id that is not a plain name."""
        return "" if id_problem(image_id) else super().get_image_uri(image_id)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        """The label's path, or ``""`` (not found) for an id or tag that is not a plain name."""
        return "" if id_problem(label_id) or id_problem(label_tag) else super().get_label_uri(label_id, label_tag)


_infer = MONAILabelApp.infer
_writer = BasicInferTask.writer
_batch_infer = BatchInferTask.__call__


def batch_infer_on_this_machine(self: BatchInferTask, request: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
    """MONAI Label's batch inference; on a machine without CUDA its GPU defaults (``device`` ``cuda``, ``multi_gpu``
    over every GPU) become the CPU, which they divided by zero GPUs on (``ZeroDivisionError`` for ``{}``)."""
    if not torch.cuda.is_available():
        request = {**request, "device": "cpu", "multi_gpu": False}
    return _batch_infer(self, request, *args, **kwargs)


def infer_datastore_images_only(self: MONAILabelApp, request: dict[str, Any], datastore: Any = None) -> Any:
    """MONAI Label's ``infer`` on a datastore image id only: never a path, an uploaded file or a label input.

    The task gets the image's datastore path; a label asked for with ``save_label`` is stored under the checked id
    and tag. Bad image content (refused by the bundle's input checks with a ``ValueError``) is a 422 with the reason.
    """
    image_id = request.get("image")
    check_id(image_id, "image (infer reads datastore images only: upload with PUT /datastore/image, then give its id)")
    if request.get("label") is not None or request.get("session"):
        raise HTTPException(status_code=400, detail="infer takes no label or session input on this server")
    extension = request.get("result_extension")
    if extension and extension not in NIFTI_EXTENSIONS:
        raise HTTPException(status_code=400, detail=f"result_extension must be one of {NIFTI_EXTENSIONS}")
    datastore = datastore or self.datastore()
    path = datastore.get_image_uri(image_id)
    if not path or not os.path.isfile(path):
        raise HTTPException(status_code=404, detail=f"no image '{image_id}' in the datastore")
    try:
        result = _infer(self, {**request, "image": path, "save_label": False}, datastore)
    except Exception as e:
        reason: BaseException | None = e
        while reason is not None and not isinstance(reason, ValueError):
            reason = reason.__cause__ or reason.__context__
        if reason is None:
            raise
        raise HTTPException(status_code=422, detail=f"cannot segment image '{image_id}': {reason}") from e
    if request.get("save_label") and result.get("file"):
        tag = request.get("label_tag") or DefaultLabelTag.ORIGINAL
        tag = check_id(str(getattr(tag, "value", tag)), "label_tag")  # batch inference passes the enum itself
        info = {"model": request.get("model"), "params": result.get("params")}
        result["label"] = datastore.save_label(image_id, result["file"], tag, info)
    return result


def on_input_grid(label_path: str, image_path: str) -> None:
    """Rewrite the NIfTI label at ``label_path`` with the shape, affine and orientation codes of ``image_path``.

    The label holds the input's voxels in the input's axis order, channel-first and without the input's singleton
    axes (``(1, 160, 192)`` for a ``(160, 192)`` or ``(160, 192, 1)`` slice).
    """
    image, label = nib.load(image_path), nib.load(label_path)
    pred = np.asanyarray(label.dataobj)
    if np.squeeze(pred).shape != tuple(n for n in image.shape if n != 1):
        raise RuntimeError(f"the label's shape {pred.shape} is not the image's {image.shape} grid")
    out = nib.Nifti1Image(pred.reshape(image.shape), image.affine)
    out.set_qform(*image.header.get_qform(coded=True))
    out.set_sform(*image.header.get_sform(coded=True))
    out.header.set_xyzt_units(*image.header.get_xyzt_units())
    out.set_data_dtype(label.get_data_dtype())
    partial = f"{label_path}.partial{'.nii.gz' if label_path.endswith('.gz') else '.nii'}"
    try:
        nib.save(out, partial)
        os.replace(partial, label_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def write_on_input_grid(self: BasicInferTask, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> Any:
    """MONAI Label's writer, then the NIfTI label put on the input's grid (``on_input_grid``)."""
    result_file, result_json = _writer(self, data, extension, dtype)
    image_path = data.get("image_path")
    if isinstance(result_file, str) and isinstance(image_path, str) and os.path.isfile(image_path):
        if result_file.endswith(NIFTI_EXTENSIONS) and image_path.endswith(NIFTI_EXTENSIONS):
            on_input_grid(result_file, image_path)
    return result_file, result_json


def allowed_origins() -> list[str]:
    """The web origins allowed to call the server: ``METASEG_MONAILABEL_CORS_ORIGINS`` (comma-separated), by default
    the server's own origins on 127.0.0.1 and localhost.

    MONAI Label's own setting, ``MONAI_LABEL_CORS_ORIGINS``, cannot be used: 0.8.5 allows any origin (with
    credentials) when it is empty, and stops at start-up when it is set (it JSON-encodes pydantic 2's URL objects).
    """
    listed = os.environ.get("METASEG_MONAILABEL_CORS_ORIGINS", "").replace(",", " ").split()
    origins = [o.rstrip("/") for o in listed]
    return origins or [f"http://{host}:{settings.MONAI_LABEL_SERVER_PORT}" for host in LOCAL_HOSTS]


class GuardMiddleware:
    """Refuses, before any endpoint runs: foreign origins and hosts (403), replacing or deleting the served weights
    (403), ids that are not plain names and session ids (400), request bodies over ``max_body`` bytes (413, also when
    sent without a Content-Length)."""

    def __init__(self, app: ASGIApp, origins: list[str], max_body: int) -> None:
        self.app = app
        self.origins = set(origins)
        self.hosts = set(LOCAL_HOSTS) | {urlsplit(o).hostname or "" for o in origins}
        self.max_body = max_body

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` for a request to refuse from its headers and query, else ``None``."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self.origins:
            return 403, f"requests from origin {origin!r} are refused; allowed: {sorted(self.origins)}"
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "cross-site requests are refused"
        host = urlsplit(f"//{headers['host']}").hostname if "host" in headers else None
        if host is not None and host not in self.hosts:
            return 403, f"host {headers['host']!r} is refused; this server answers {sorted(self.hosts)} only"
        if scope.get("method") in ("PUT", "DELETE") and scope.get("path", "").startswith("/model/"):
            return 403, "the served weights are a copy of the checkout's models/model.pt, made at start; not replaced"
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True):
            if key == "session_id" and value:
                return 400, "sessions are disabled on this server: upload with PUT /datastore/image, infer by id"
            if key in ID_PARAMS and value and id_problem(value):
                return 400, f"{key}: {id_problem(value)}"
        declared = headers.get("content-length", "0")
        if not declared.isdigit():
            return 400, f"bad Content-Length {declared!r}"
        if int(declared) > self.max_body:
            return 413, f"request body of {declared} bytes; at most {self.max_body} (METASEG_MONAILABEL_MAX_UPLOAD_MB)"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a refused request with its JSON message; count the body of the others as it arrives."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal:
            return await JSONResponse({"detail": refusal[1]}, status_code=refusal[0])(scope, receive, send)
        received, too_big, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, too_big
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                too_big = True
                raise OSError("request body over the limit")
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not too_big:  # once the body was cut, the app's own answer to it is dropped
                started = True
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not too_big:
                raise
        if too_big and not started:
            detail = f"request body over {self.max_body} bytes (METASEG_MONAILABEL_MAX_UPLOAD_MB)"
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


def _answer(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    """An exception handler answering ``status`` (500 for MONAI Label errors other than bad input) and the message."""

    async def handler(request: Request, e: Exception) -> JSONResponse:
        code = status
        if isinstance(e, MONAILabelException) and status == 400 and e.error != MONAILabelError.INVALID_INPUT:
            code = 500
        return JSONResponse({"detail": getattr(e, "msg", None) or str(e)}, status_code=code)

    return handler


app_module.LocalDatastore = GuardedDatastore  # what MONAILabelApp.init_datastore instantiates
MONAILabelApp.infer = infer_datastore_images_only
BasicInferTask.writer = write_on_input_grid
BatchInferTask.__call__ = batch_infer_on_this_machine
for middleware in app.user_middleware:
    if middleware.cls is CORSMiddleware:
        middleware.kwargs["allow_origins"] = allowed_origins()
app.add_middleware(GuardMiddleware, origins=allowed_origins(), max_body=MAX_UPLOAD_BYTES)
app.add_exception_handler(ImageNotFoundException, _answer(404))
app.add_exception_handler(LabelNotFoundException, _answer(404))
app.add_exception_handler(MONAILabelException, _answer(400))
app.add_exception_handler(JSONDecodeError, _answer(400))
print(
    f"MetaSeg guard: origins {allowed_origins()}; uploads <= {MAX_UPLOAD_BYTES} bytes; images <= {MAX_VOXELS} voxels",
    flush=True,
)
