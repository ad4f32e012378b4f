"""Intensity normalization shared by every workflow: one scale for images from any scanner or pipeline.

MetaSeg fits its trunk to an image's intensities, so the meta-learned initialization only fits well when every image
arrives on the scale it was trained on. :class:`NormalizeBrainIntensityd` maps the background level to 0 and a fixed
percentile of the brain's intensities to 1, which makes the result independent of a global intensity scale and
offset (FreeSurfer ``norm``/255, raw scanner integers, a shifted background all give the same image). How the
percentile was chosen is in ``docs/benchmarks.md`` (``benchmarks/intensity_reference.py``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ImageMetaKey, convert_to_dst_type, convert_to_tensor

__all__ = [
    "NormalizeBrainIntensity",
    "NormalizeBrainIntensityd",
    "brain_intensity_range",
    "brain_threshold",
    "otsu_threshold",
]

_QUANTILE_SAMPLE = 1 << 20  # torch.quantile's input limit is 2**24; a strided sample of this size is plenty


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of a 1D float tensor: the cut that maximises the between-class variance of its histogram."""
    lo, hi = float(values.min()), float(values.max())
    hist = torch.histc(values, bins=bins, min=lo, max=hi).double()
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = torch.cumsum(hist, 0)
    w1 = w0[-1] - w0
    m0 = torch.cumsum(hist * centres, 0)
    mu0 = m0 / w0.clamp_min(1e-12)
    mu1 = (m0[-1] - m0) / w1.clamp_min(1e-12)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    best = torch.nonzero(between >= between.max() * (1 - 1e-9)).flatten()  # an empty gap: its middle
    return float(edges[int(best[0] + best[-1]) // 2 + 1])


def _quantile(x: torch.Tensor, q: float) -> float:
    if x.numel() > _QUANTILE_SAMPLE:
        x = x[:: -(-x.numel() // _QUANTILE_SAMPLE)]
    return float(torch.quantile(x, q))


def _robust_range(values: torch.Tensor) -> tuple[float, float]:
    """The 0.1th and 99.9th percentiles of flattened image ``values``."""
    return _quantile(values, 0.001), _quantile(values, 0.999)


def brain_threshold(values: torch.Tensor, robust_range: tuple[float, float] | None = None) -> float:
    """Otsu's threshold between background and brain of flattened image ``values``, computed between their 0.1th and
    99.9th percentiles (``robust_range``, if already known) so that single hot voxels cannot move it (a constant range
    returns that value)."""
    lo, hi = _robust_range(values) if robust_range is None else robust_range
    return lo if hi <= lo else otsu_threshold(values.clamp(lo, hi))


def brain_intensity_range(
    image: torch.Tensor, percentile: float = 75.0, min_brain_fraction: float = 0.005, source: str = "<image>"
) -> tuple[float, float]:
    """``(background, reference)`` intensities of a brain image.

    The brain is what lies above Otsu's threshold (computed between the 0.1th and 99.9th percentiles, so single hot
    voxels cannot move it); ``background`` is the median below it and ``reference`` the brain's ``percentile``-th
    percentile. Both move with any positive scale and offset of the image, so ``(x - background) / (reference -
    background)`` does not.

    Raises:
        ValueError: naming ``source``, when no brain can be found (a constant image, or fewer than
            ``min_brain_fraction`` of the voxels above the background).
    """
    x = convert_to_tensor(image, track_meta=False).detach().float().flatten()
    if x.numel() == 0 or not torch.isfinite(x).all():
        raise ValueError(f"{source}: cannot normalize the intensities of an empty or non-finite image.")
    lo, hi = _robust_range(x)
    if hi <= lo:
        raise ValueError(
            f"{source}: no brain found for intensity normalization: 99.8% of the voxels share the value {lo:g}."
        )
    threshold = brain_threshold(x, (lo, hi))
    brain = x[x > threshold]
    if brain.numel() < max(min_brain_fraction * x.numel(), 1):
        raise ValueError(
            f"{source}: no brain found for intensity normalization: only {brain.numel()} of {x.numel()} voxels lie "
            f"above the background (threshold {threshold:g}); expected a skull-stripped brain image."
        )
    background = float(x[x <= threshold].median())
    reference = _quantile(brain, percentile / 100.0)
    if reference <= background:
        raise ValueError(f"{source}: no brain found for intensity normalization (brain not brighter than background).")
    return background, reference


class NormalizeBrainIntensity(Transform):
    """Map an image's background level to 0 and the ``percentile``-th percentile of its brain to 1, then clip.

    Args:
        percentile: brain percentile mapped to 1. 75 lands on white matter in T1 brain MRI and was the most stable
            choice across subjects and perturbations (``benchmarks/intensity_reference.py``).
        clip: output range; values below (background noise) and above (vessels, dura) are clipped.
        min_brain_fraction: smallest fraction of voxels that must lie above the background.
    """

    def __init__(
        self, percentile: float = 75.0, clip: tuple[float, float] | None = (0.0, 2.0), min_brain_fraction: float = 0.005
    ) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must lie in (0, 100), got {percentile}.")
        self.percentile = float(percentile)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.min_brain_fraction = float(min_brain_fraction)

    def __call__(self, img: Any, source: str | None = None) -> Any:
        if source is None:
            meta = getattr(img, "meta", None) or {}
            source = str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "<image>"))
        background, reference = brain_intensity_range(img, self.percentile, self.min_brain_fraction, source)
        x = convert_to_tensor(img, track_meta=False).float()
        out = (x - background) / (reference - background)
        if self.clip is not None:
            out = out.clamp(*self.clip)
        return convert_to_dst_type(out, img, dtype=torch.float32)[0]


class NormalizeBrainIntensityd(MapTransform):
    """Dictionary version of :class:`NormalizeBrainIntensity` (each key normalized on its own statistics)."""

    def __init__(
        self,
        keys: KeysCollection,
        percentile: float = 75.0,
        clip: tuple[float, float] | None = (0.0, 2.0),
        min_brain_fraction: float = 0.005,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeBrainIntensity(percentile, clip, min_brain_fraction)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
