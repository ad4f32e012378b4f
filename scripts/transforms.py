"""Input checks for MetaSeg: clear errors naming the offending file before any work or output happens."""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelReader
from monai.transforms import LoadImaged, MapTransform
from monai.utils import ImageMetaKey, PostFix

__all__ = [
    "MAX_VOXELS",
    "SQUEEZED_AXES_KEY",
    "LoadImageCheckedd",
    "ValidateMetaSegInputd",
    "check_image_header",
    "source_name",
]

FREESURFER_SUFFIXES = (".mgz", ".mgh")
MAX_VOXELS = 512**3  # larger images are refused before their data are read (a decompression bomb, a wrong header)
MIN_INTENSITY_LEVELS = 16  # fewer distinct intensities: a mask or a label map, not an MR image
SQUEEZED_AXES_KEY = "metaseg_squeezed_axes"  # metadata: trailing singleton axes dropped from the input file


class LoadImageCheckedd(LoadImaged):
    """``LoadImaged`` (``image_only=True``) whose read errors name the file and the problem.

    FreeSurfer's ``.mgz`` / ``.mgh`` files are read by nibabel (MONAI's reader choice goes by the NIfTI suffixes only).
    Missing and empty files are reported before reading; anything a reader rejects (a truncated gzip, a file that is
    not NIfTI despite its name) becomes a ``ValueError`` that names the path. Other arguments are ``LoadImaged``'s.
    """

    def __init__(self, keys: KeysCollection, *args: Any, **kwargs: Any) -> None:
        kwargs["image_only"] = True
        super().__init__(keys, *args, **kwargs)

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if isinstance(path, (str, os.PathLike)):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"{key} file not found: {path}")
                if os.path.getsize(path) == 0:
                    raise ValueError(f"{path}: the {key} file is empty (0 bytes).")
                check_image_header(path, key)
            file_reader = reader
            if file_reader is None and str(path).lower().endswith(FREESURFER_SUFFIXES):
                file_reader = NibabelReader()
            try:
                loaded = self._loader(path, file_reader)
            except Exception as e:
                raise ValueError(f"{path}: cannot read the {key} as an image ({type(e).__name__}: {e}).") from e
            if isinstance(loaded, tuple):  # image_only switched off (MONAI Label does): image + its metadata dict
                loaded, d[PostFix.meta(str(key))] = loaded
            d[key] = loaded
        return d


def check_image_header(path: str | os.PathLike, key: Hashable = "image") -> None:
    """Refuse, from its header alone (before any data is decompressed), a NIfTI/MGH file that holds complex values,
    more than ``MAX_VOXELS`` voxels, or a non-finite affine; ``ValueError`` naming the file. Files nibabel cannot
    read are left to the image reader, whose error names them."""
    try:
        header = nib.load(str(path)).header
    except Exception:
        return
    dtype = np.dtype(header.get_data_dtype())
    if dtype.kind == "c":
        raise ValueError(f"{path}: the {key} holds complex values ({dtype}); give the magnitude image.")
    shape = tuple(int(n) for n in header.get_data_shape())
    if math.prod(shape) > MAX_VOXELS:
        raise ValueError(f"{path}: the {key} has {math.prod(shape)} voxels {shape}, more than {MAX_VOXELS} (refused).")
    if isinstance(header, nib.Nifti1Header):
        for name in ("sform", "qform"):
            matrix, code = getattr(header, f"get_{name}")(coded=True)
            if code and (matrix is None or not np.isfinite(matrix).all()):
                raise ValueError(f"{path}: the {key}'s {name} (its position in space) holds NaN or infinite values.")


def source_name(x: object, key: Hashable) -> str:
    """The file an image was read from (its metadata), or ``<key>``."""
    meta = getattr(x, "meta", None) or {}
    return str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, f"<{key}>"))


class ValidateMetaSegInputd(MapTransform):
    """Check (and minimally normalise) channel-first images and label maps for a ``spatial_dims``-D MetaSeg bundle.

    - trailing singleton spatial axes beyond ``spatial_dims`` are dropped (neurite-oasis 2D slices are stored as
      ``160x192x1``);
    - every key must then be ``[1, *spatial]`` with ``spatial_dims`` spatial axes, and not be empty (a 3D bundle
      also refuses a volume one voxel thick: that is a 2D slice);
    - the image must be finite and not constant;
    - the label (``label_key``, if present) must hold integers in ``[0, num_classes)``, some of them foreground, and
      match the image's shape and affine (it lies on the image in world space).

    Raises ``ValueError`` naming the file and the problem.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int,
        num_classes: int,
        image_key: str = "image",
        label_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        self.image_key = image_key
        self.label_key = label_key

    def _squeeze(self, x: torch.Tensor, key: Hashable) -> torch.Tensor:
        squeezed = 0
        while x.dim() > self.spatial_dims + 1 and x.shape[-1] == 1:
            x = x[..., 0]
            squeezed += 1
        if squeezed and isinstance(getattr(x, "meta", None), dict):
            # the metadata describes the squeezed array (so writers do not take the channel for a spatial axis);
            # scripts.outputs.AtomicNiftiWriter gives the saved output the dropped axes back
            x.meta[SQUEEZED_AXES_KEY] = squeezed
            x.meta["spatial_shape"] = np.asarray(x.shape[1:])
        if x.dim() != self.spatial_dims + 1 or x.shape[0] != 1:
            spatial = tuple(x.shape[1:])
            raise ValueError(
                f"{source_name(x, key)}: expected a single-channel {self.spatial_dims}D {key}, got a "
                f"{len(spatial)}D array of shape {spatial} with {x.shape[0]} channel(s); this bundle is configured for "
                f"spatial_dims={self.spatial_dims}."
            )
        if x.numel() == 0:
            raise ValueError(f"{source_name(x, key)}: the {key} is empty (shape {tuple(x.shape[1:])}).")
        if self.spatial_dims == 3 and min(x.shape[1:]) == 1:
            raise ValueError(
                f"{source_name(x, key)}: the {key} of shape {tuple(x.shape[1:])} is a 2D slice, but this bundle is "
                "configured for 3D volumes (spatial_dims=3); use the 2D configs (e.g. configs/inference.json)."
            )
        return x

    def _check_image(self, x: torch.Tensor, key: Hashable) -> None:
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{source_name(x, key)}: the {key} contains {bad} NaN or infinite value(s).")
        if float(x.max()) == float(x.min()):
            raise ValueError(f"{source_name(x, key)}: the {key} is constant ({float(x.min())}); nothing to fit.")
        sample = x.flatten()[:: max(1, x.numel() // 65536)]
        levels = int(torch.unique(sample).numel())
        if levels < MIN_INTENSITY_LEVELS:
            raise ValueError(
                f"{source_name(x, key)}: the {key} has only {levels} distinct intensities; expected an MR image, not "
                "a mask or a label map."
            )

    def _check_label(self, y: torch.Tensor, key: Hashable, image: torch.Tensor | None) -> None:
        if not torch.isfinite(y).all() or not torch.equal(y, torch.round(y)):
            raise ValueError(f"{source_name(y, key)}: the {key} must hold integer class indices.")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            raise ValueError(
                f"{source_name(y, key)}: {key} values must lie in [0, {self.num_classes - 1}] for num_classes="
                f"{self.num_classes}, found values in [{lo}, {hi}]."
            )
        if hi == 0:
            raise ValueError(
                f"{source_name(y, key)}: the {key} is empty (every value 0, background); nothing to score."
            )
        if image is None:
            return
        if tuple(y.shape[1:]) != tuple(image.shape[1:]):
            raise ValueError(
                f"{source_name(y, key)}: {key} shape {tuple(y.shape[1:])} differs from the image shape "
                f"{tuple(image.shape[1:])} ({source_name(image, self.image_key)})."
            )
        label_affine, image_affine = getattr(y, "affine", None), getattr(image, "affine", None)
        if label_affine is not None and image_affine is not None:
            if not torch.allclose(label_affine.double(), image_affine.double(), atol=1e-3, rtol=0):
                raise ValueError(
                    f"{source_name(y, key)}: the {key} does not lie on the image "
                    f"{source_name(image, self.image_key)} in world space (affines differ: "
                    f"{np.round(label_affine.numpy(), 3).tolist()} vs {np.round(image_affine.numpy(), 3).tolist()}); "
                    "resample the label onto its image first."
                )

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._squeeze(d[key], key)
        for key in self.key_iterator(d):
            if key == self.label_key:
                self._check_label(d[key], key, d.get(self.image_key))
            else:
                self._check_image(d[key], key)
        return d
