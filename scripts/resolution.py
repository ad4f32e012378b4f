"""Any-resolution output: decode MetaSeg on a grid ``scale`` times finer than its input, with correct geometry.

Conventions. An input axis of ``n`` pixels is seen by the network at the pixel centres ``linspace(-1, 1, n)``
(:func:`scripts.fitting.coordinate_grid`). The finer grid covers the same field of view (the input's pixel edges,
``-0.5`` to ``n - 0.5`` in input pixel units) with ``scale * n`` pixels of size ``1 / scale``: fine pixel ``k`` is
centred at input pixel position ``(k + 0.5) / scale - 0.5``. For ``scale`` 2 the first two fine centres sit at
``-0.25`` and ``+0.25`` around the input's first centre. The fine image's affine is therefore
``A @ T`` with ``T = [[1/scale, (1/scale - 1) / 2], [0, 1]]`` on each spatial axis (:func:`scale_affine`): same
orientation and field of view, spacing divided by ``scale``.

Padding applied before the fit (``SpatialPadd`` in ``configs/inference.json``) is inverted at the fine scale by
:class:`ScaledInvertd`: it folds every ``scale x scale`` block of fine pixels into channels (space-to-depth), so the
array sits on the input's grid and MONAI's ``Invertd`` crops it with the recorded pad widths; then it unfolds the
blocks and sets the fine affine. Exact for the pad/crop (and any other whole-pixel) inverses that the bundle uses.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from .fitting import coordinate_grid

__all__ = ["check_scale", "scaled_coordinate_grid", "scale_affine", "fold_scale", "unfold_scale", "ScaledInvertd"]


def check_scale(scale: Any) -> int:
    """``scale`` as a positive integer, or a ``ValueError``."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 1 or float(scale) != int(scale):
        raise ValueError(f"output_scale must be a positive integer (1, 2, 3, ...), got {scale!r}.")
    return int(scale)


def scaled_coordinate_grid(
    spatial_shape: Sequence[int], scale: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Pixel centres ``[N, D]`` of the grid ``scale`` times finer than ``spatial_shape``, in the network's coordinates.

    With ``scale`` 1 this is :func:`scripts.fitting.coordinate_grid`. Fine centres outside the input's first and
    last centres lie slightly outside ``[-1, 1]`` (by ``(1 - 1/scale) / (n - 1)``), where the network is continuous.
    """
    scale = check_scale(scale)
    if scale == 1:
        return coordinate_grid(spatial_shape, device=device)
    axes = []
    for n in spatial_shape:
        n = int(n)
        pos = (torch.arange(scale * n, device=device, dtype=torch.float32) + 0.5) / scale - 0.5
        axes.append(torch.full_like(pos, -1.0) if n == 1 else pos * (2.0 / (n - 1)) - 1.0)
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial_shape))


def scale_affine(affine: torch.Tensor, scale: int, spatial_dims: int) -> torch.Tensor:
    """Affine of the ``scale`` times finer grid (see the module docstring), for ``[..., r+1, r+1]``.

    Only the first ``spatial_dims`` index axes are refined (a 2D slice may carry a 3D, 4x4 affine).
    """
    scale = check_scale(scale)
    affine = torch.as_tensor(affine)
    dtype = affine.dtype if affine.is_floating_point() else torch.float64
    rank = affine.shape[-1] - 1
    t = torch.eye(rank + 1, dtype=dtype, device=affine.device)
    for a in range(min(spatial_dims, rank)):
        t[a, a] = 1.0 / scale
        t[a, rank] = (1.0 / scale - 1.0) / 2.0
    return affine.to(dtype) @ t


def fold_scale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Space-to-depth ``[C, s*n1, ..., s*nd]`` -> ``[C * s**d, n1, ..., nd]`` (plain tensor)."""
    x = torch.as_tensor(x)
    if isinstance(x, MetaTensor):
        x = x.as_tensor()
    c, fine = x.shape[0], x.shape[1:]
    d = len(fine)
    if any(f % scale for f in fine):
        raise ValueError(f"spatial shape {tuple(fine)} is not a multiple of the output scale {scale}.")
    coarse = [f // scale for f in fine]
    shape = [c] + [v for n in coarse for v in (n, scale)]
    order = [0] + [2 + 2 * i for i in range(d)] + [1 + 2 * i for i in range(d)]
    return x.reshape(shape).permute(order).reshape(c * scale**d, *coarse)


def unfold_scale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Depth-to-space, the inverse of :func:`fold_scale` (a ``MetaTensor`` keeps its metadata)."""
    coarse = list(x.shape[1:])
    d = len(coarse)
    c = x.shape[0] // scale**d
    y = x.reshape([c] + [scale] * d + coarse)
    order = [0] + [v for i in range(d) for v in (1 + d + i, 1 + i)]
    return y.permute(order).reshape(c, *[n * scale for n in coarse])


class ScaledInvertd(Invertd):
    """MONAI ``Invertd`` for outputs decoded ``scale`` times finer than the transformed input.

    ``scale`` 1 is exactly ``Invertd``. Otherwise each key's array ``[C, s*n1, ..., s*nd]`` (on the fine grid of the
    *transformed* input, e.g. the padded image) is folded to ``[C * s**d, n1, ..., nd]``, inverted with the
    ``orig_keys``' applied transforms, unfolded, and given the fine affine of the inverted grid
    (:func:`scale_affine`); the ``spatial_shape`` metadata follows. Use after channel-wise activations (softmax),
    before anything that mixes channels; the inverse must move whole pixels (pad, crop, flip by whole pixels...).

    Args:
        scale: the output scale (positive integer).
        args, kwargs: those of ``monai.transforms.Invertd``.
    """

    def __init__(self, *args: Any, scale: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.scale = check_scale(scale)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        if self.scale == 1:
            return super().__call__(data)
        d = dict(data)
        keys = list(self.key_iterator(d))
        for key in keys:
            # a MetaTensor, so that Invertd takes the applied transforms (and metadata) from ``orig_keys``
            d[key] = MetaTensor(fold_scale(d[key], self.scale))
        d = super().__call__(d)
        for key in keys:
            x = d[key]
            spatial_dims = x.dim() - 1
            x = unfold_scale(x, self.scale)
            if isinstance(x, MetaTensor):
                x.affine = scale_affine(x.affine, self.scale, spatial_dims)
                shape = x.meta.get("spatial_shape")
                if shape is not None:
                    shape = [int(v) for v in torch.as_tensor(shape).reshape(-1).tolist()]
                    x.meta["spatial_shape"] = [v * self.scale if i < spatial_dims else v for i, v in enumerate(shape)]
            d[key] = x
        return d
