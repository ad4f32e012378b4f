"""Canonical geometry: images reach the network in the orientation and pixel size the model was trained on.

Both transforms are invertible, so ``Invertd`` in the inference postprocessing brings every output back onto the
input's own grid (shape and affine), whatever the input's orientation, axis order or pixel size.

Orientation conventions. The model sees the array layout of neurite-oasis: axis 0 left-right, axis 1 superior to
inferior (a coronal slice; for volumes axis 2 posterior to anterior, FreeSurfer's ``LIA``). Real neurite-oasis 2D
files carry an identity affine (their slice normal is world z, in-plane axes +x then +y), while files written in
anatomical world coordinates (scanner space, FreeSurfer's conformed ``LIA``) show the same coronal slice with its
normal along world y, in-plane axes -x (left) then -z (inferior). A 2D slice is therefore matched by the world axis
its normal runs along: a normal along z takes the identity convention (axis 0 along +x, axis 1 along +y), a normal
along y the anatomical one (axis 0 along -x, axis 1 along -z); flips, transpositions and oblique slices of either
are brought to it. A slice whose normal runs along x (a sagittal slice) is refused. Volumes are brought to
``axcodes`` (``LIA`` by default, the orientation of the demo volumes).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, Orientation, Resize, Zoom
from monai.transforms.spatial.functional import orientation
from monai.utils import TraceKeys, ensure_tuple_rep

from .transforms import source_name

__all__ = [
    "SLICE_TARGETS",
    "canonical_orientation",
    "CanonicalOrientation",
    "CanonicalOrientationd",
    "ResampleToSpacing",
    "ResampleToSpacingd",
]

# slice normal's world axis -> per in-plane axis (plane axis, direction); plane axes are the two other world axes
SLICE_TARGETS = {2: ((0, 1), (1, 1)), 1: ((0, -1), (1, -1))}
_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _affine_4x4(affine: Any, name: str) -> np.ndarray:
    a = np.asarray(torch.as_tensor(affine, dtype=torch.float64).cpu(), dtype=np.float64)
    if a.shape == (3, 3):  # a 2D affine: in-plane axes along world x and y
        a = np.array([[a[0, 0], a[0, 1], 0, a[0, 2]], [a[1, 0], a[1, 1], 0, a[1, 2]], [0, 0, 1, 0], [0, 0, 0, 1]])
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"{name}: the image's affine is not a finite 3D affine (got {a.tolist()}).")
    return a


def canonical_orientation(affine: Any, spatial_dims: int, axcodes: str = "LIA", name: str = "<image>") -> np.ndarray:
    """The ``nibabel`` orientation transform (``[spatial_dims, 2]``) from an image with ``affine`` to the layout the
    model was trained on (see the module docstring). ``ValueError`` naming ``name`` for a degenerate affine or a
    sagittal slice."""
    a = _affine_4x4(affine, name)
    if spatial_dims == 3:
        if abs(np.linalg.det(a[:3, :3])) < 1e-9:
            raise ValueError(f"{name}: the image's affine is singular (its axes are not independent).")
        return nib.orientations.ornt_transform(nib.io_orientation(a), nib.orientations.axcodes2ornt(axcodes))
    cols = a[:3, :2]
    lengths = np.linalg.norm(cols, axis=0)
    normal = np.cross(cols[:, 0], cols[:, 1])
    if min(lengths) <= 0 or np.linalg.norm(normal) < 1e-6 * lengths.prod():
        raise ValueError(f"{name}: the slice's in-plane axes in its affine are zero or parallel ({cols.T.tolist()}).")
    world = int(np.argmax(np.abs(normal)))
    if world not in SLICE_TARGETS:
        raise ValueError(
            f"{name}: this is a sagittal slice (its normal runs along world x in its affine); the model segments "
            "coronal slices (in-plane axes left-right and superior-inferior)."
        )
    rows = [r for r in range(3) if r != world]
    plane = np.eye(3)
    plane[:2, :2] = a[rows][:, :2]
    return nib.orientations.ornt_transform(nib.io_orientation(plane), np.asarray(SLICE_TARGETS[world], dtype=float))


def _inverse_ornt(ornt: np.ndarray) -> np.ndarray:
    inverse = np.zeros_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (axis, flip)
    return inverse


class CanonicalOrientation(Orientation):
    """MONAI ``Orientation`` to the trained layout (:func:`canonical_orientation`), exact and invertible; the affine
    keeps its rank (a 2D slice keeps its 4x4 affine, so its output lies on it in world space).

    Args:
        spatial_dims: 2 for slices, 3 for volumes.
        axcodes: the volumes' target orientation (``LIA``: the demo volumes').
    """

    def __init__(self, spatial_dims: int, axcodes: str = "LIA") -> None:
        super().__init__(axcodes=axcodes, labels=None)
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data_array: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:
        if not isinstance(data_array, MetaTensor):
            raise TypeError("CanonicalOrientation needs a MetaTensor (an image with its affine).")
        affine = data_array.peek_pending_affine()
        ornt = canonical_orientation(affine, self.spatial_dims, self.axcodes, source_name(data_array, "image"))
        return orientation(data_array, affine, ornt, lazy=False, transform_info=self.get_transform_info())

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        original = transform[TraceKeys.EXTRA_INFO]["original_affine"]
        ornt = canonical_orientation(original, self.spatial_dims, self.axcodes)
        with self.trace_transform(False):
            return orientation(data, data.peek_pending_affine(), _inverse_ornt(ornt), False, self.get_transform_info())


class ResampleToSpacing(Zoom):
    """Resample an image to ``pixdim`` mm pixels (its spacing read from its affine), invertibly.

    Spacings within 1% of ``pixdim`` are kept as they are (no resampling). Down-sampling averages (``area``),
    up-sampling is linear; labels (``label=True``) take the nearest value. The inverse (in ``Invertd``) resizes back
    to the input's exact shape with linear interpolation (class probabilities, not labels).

    Raises ``ValueError`` naming the file when the resampled field of view falls outside ``[min_fov, max_fov]`` mm
    on an axis: no brain image is that small or large, or its pixel size in the header is wrong.
    """

    def __init__(
        self, pixdim: float | Sequence[float] = 1.0, label: bool = False, min_fov: float = 16.0, max_fov: float = 512.0
    ) -> None:
        super().__init__(zoom=1.0, keep_size=False)
        self.pixdim = pixdim
        self.label = bool(label)
        self.min_fov, self.max_fov = float(min_fov), float(max_fov)

    def zoom_factors(self, img: MetaTensor) -> list[float]:
        """Per spatial axis: input spacing / ``pixdim`` (1.0 where within 1%), after the field-of-view check."""
        spatial = list(img.peek_pending_shape())
        name = source_name(img, "image")
        affine = _affine_4x4(img.peek_pending_affine(), name)
        spacing = np.linalg.norm(affine[:3, : len(spatial)], axis=0)
        target = ensure_tuple_rep(self.pixdim, len(spatial))
        factors = [1.0 if abs(s / t - 1.0) < 0.01 else float(s / t) for s, t in zip(spacing, target)]
        for axis, (n, s) in enumerate(zip(spatial, spacing)):
            fov = n * s
            if not self.min_fov <= fov <= self.max_fov:
                raise ValueError(
                    f"{name}: axis {axis} covers {fov:.1f} mm ({n} pixels of {s:.3g} mm); a brain image covers "
                    f"{self.min_fov:g}-{self.max_fov:g} mm. Not a brain image, or the pixel size in its header is "
                    "wrong."
                )
        return factors

    def __call__(self, img: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if not isinstance(img, MetaTensor):
            raise TypeError("ResampleToSpacing needs a MetaTensor (an image with its affine).")
        factors = self.zoom_factors(img)
        self.zoom = factors
        dims = len(factors)
        if self.label:
            mode = "nearest-exact"
        else:
            mode = "area" if min(factors) < 1.0 else _LINEAR_MODES[dims]
        return super().__call__(img, mode=mode, align_corners=None if mode in ("area", "nearest-exact") else False)

    def inverse_transform(self, data: torch.Tensor, transform: Mapping) -> torch.Tensor:
        size = [int(v) for v in transform[TraceKeys.ORIG_SIZE]]
        if list(data.shape[1:]) == size:
            return data
        resize = Resize(spatial_size=size)
        with resize.trace_transform(False):
            return resize(data, mode=_LINEAR_MODES[len(size)], align_corners=False)


class _InvertibleMapd(MapTransform, InvertibleTransform):
    """A dictionary version of an invertible array transform per key (``self.transforms[key]``)."""

    transforms: dict[Hashable, InvertibleTransform]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transforms[key](d[key])
        return d

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transforms[key].inverse(d[key])
        return d


class CanonicalOrientationd(_InvertibleMapd):
    """Dictionary version of :class:`CanonicalOrientation` (the same orientation for every key)."""

    def __init__(
        self, keys: KeysCollection, spatial_dims: int, axcodes: str = "LIA", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        transform = CanonicalOrientation(spatial_dims, axcodes)
        self.transforms = {key: transform for key in self.keys}


class ResampleToSpacingd(_InvertibleMapd):
    """Dictionary version of :class:`ResampleToSpacing`; keys in ``label_keys`` are resampled as labels."""

    def __init__(
        self,
        keys: KeysCollection,
        pixdim: float | Sequence[float] = 1.0,
        label_keys: KeysCollection = ("label",),
        min_fov: float = 16.0,
        max_fov: float = 512.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        labels = {label_keys} if isinstance(label_keys, str) else set(label_keys)
        self.transforms = {
            key: ResampleToSpacing(pixdim, label=key in labels, min_fov=min_fov, max_fov=max_fov) for key in self.keys
        }
