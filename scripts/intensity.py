"""Intensity normalization shared by every workflow: one scale for images from any scanner or pipeline.

MetaSeg fits its trunk to an image's intensities, so the meta-learned initialization only fits well when every image
arrives on the scale it was trained on. :class:`NormalizeBrainIntensityd` maps the background level to 0 and a fixed
percentile of the brain's intensities to 1, which makes the result independent of a global intensity scale and
offset (FreeSurfer ``norm``/255, raw scanner integers, a shifted background all give the same image). How the
percentile was chosen is in ``docs/benchmarks.md`` (``benchmarks/intensity_reference.py``). Options standardize the
contrast (a power law through a second percentile) and divide out a scanner's bias field first.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import GaussianSmooth, MapTransform, Transform
from monai.utils import ImageMetaKey, convert_to_dst_type, convert_to_tensor

__all__ = [
    "NormalizeBrainIntensity",
    "NormalizeBrainIntensityd",
    "brain_bias_field",
    "brain_contrast_landmarks",
    "brain_intensity_range",
    "brain_threshold",
    "correct_bias_field",
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


def _smoothed_brain(image: Any, smooth_sigma: float, noise_multiple: float) -> tuple[torch.Tensor, float, torch.Tensor]:
    """``(x, background, brain)``: channel-first ``image`` smoothed with a Gaussian of ``smooth_sigma`` pixels, its
    background level, and the mask of the voxels brighter than the background by more than ``noise_multiple`` times
    the background's noise (its median absolute deviation; at least 2% of the intensity range)."""
    x = convert_to_tensor(image, track_meta=False).detach().float()
    if smooth_sigma > 0:  # channel-first: every channel smoothed over the spatial axes
        x = convert_to_tensor(GaussianSmooth(smooth_sigma)(x), track_meta=False)
    flat = x.flatten()
    lo, hi = _robust_range(flat)
    threshold = brain_threshold(flat, (lo, hi))
    below = flat[flat <= threshold]
    background = float(below.median())
    noise = 1.4826 * float((below - background).abs().median())
    return x, background, x > background + max(noise_multiple * noise, 0.02 * (hi - background))


def brain_bias_field(
    image: Any,
    sigma: float,
    smooth_sigma: float = 1.0,
    noise_multiple: float = 3.0,
    min_brain_fraction: float = 0.005,
    source: str = "<image>",
) -> tuple[torch.Tensor, float]:
    """``(log_field, background)``: the log of a smooth multiplicative field over channel-first ``image``'s brain (a
    scanner's bias field), estimated on its white matter, and the background level the field multiplies from.

    White matter has one intensity wherever it lies (FreeSurfer's ``mri_normalize`` puts it at 110 everywhere), so
    ``(x - background) / exp(log_field) + background`` restores that convention for an image from any pipeline. The
    field is a Gaussian-weighted local mean (``sigma`` pixels) of the log intensity of white-matter-like voxels: first
    the brain's 50th to 95th percentiles, then, three times, the voxels whose corrected level lies within a shrinking
    band around the brain's 75th percentile, the band measured in units of the 75th-to-25th percentile distance of the
    log levels. A scale, an offset or a gamma change of the image moves the selection and the field alike; the field
    has mean zero over the last selection, so white matter keeps its mean level. Voxels farther than about three
    ``sigma`` from the selected voxels get no correction; a brain without such voxels (one intensity level) none.
    Statistics on the image smoothed by ``smooth_sigma`` pixels over the brain of :func:`brain_contrast_landmarks`.

    Raises:
        ValueError: naming ``source``, when no brain can be found (the checks of :func:`brain_intensity_range`).
    """
    brain_intensity_range(image, 75.0, min_brain_fraction, source)
    x, background, brain = _smoothed_brain(image, smooth_sigma, noise_multiple)
    level = torch.zeros_like(x)
    level[brain] = torch.log(x[brain] - background)
    field = torch.zeros_like(x)
    smooth = GaussianSmooth(sigma)

    def local_mean(values: torch.Tensor) -> torch.Tensor:
        return convert_to_tensor(smooth(values), track_meta=False)  # plain tensors: the caller's metadata is kept

    for width in (None, 0.3, 0.2, 0.13):
        corrected = (level - field)[brain]
        if width is None:
            selected = (corrected > _quantile(corrected, 0.5)) & (corrected < _quantile(corrected, 0.95))
        else:
            upper, lower = _quantile(corrected, 0.75), _quantile(corrected, 0.25)
            selected = (corrected - upper).abs() < width * (upper - lower)
        if not selected.any():  # a brain of one level (no white matter to find): keep the last field
            break
        weight = torch.zeros_like(x)
        weight[brain] = selected.float()
        support = local_mean(weight)
        reached = support > 1e-3  # pixels near enough to a selected one for a local mean
        field = torch.where(reached, local_mean(level * weight) / support.clamp_min(1e-3), 0.0)
        field = torch.where(reached, field - field[weight > 0].mean(), 0.0)
    return field, background


def correct_bias_field(
    image: Any, sigma: float, smooth_sigma: float = 1.0, min_brain_fraction: float = 0.005, source: str = "<image>"
) -> torch.Tensor:
    """``image`` (channel-first) with the field of :func:`brain_bias_field` divided out above its background."""
    field, background = brain_bias_field(
        image, sigma, smooth_sigma, min_brain_fraction=min_brain_fraction, source=source
    )
    x = convert_to_tensor(image, track_meta=False).float()
    return (x - background) * torch.exp(-field) + background


def brain_contrast_landmarks(
    image: torch.Tensor,
    percentile: float = 75.0,
    contrast_percentile: float = 25.0,
    smooth_sigma: float = 1.0,
    noise_multiple: float = 3.0,
    min_brain_fraction: float = 0.005,
    source: str = "<image>",
    tissue_floor: float = 0.0,
) -> tuple[float, float, float]:
    """``(background, low, reference)`` of a channel-first ``image``: the background level and two percentiles of the
    brain's intensities, for a normalization that also standardizes contrast.

    With ``tissue_floor`` (an exponent k > 1) the lower percentile is taken only over the brain voxels whose linear
    level ``u = (x - background) / (reference - background)`` exceeds ``u_c ** k``, where ``u_c`` is the level of the
    whole brain's ``contrast_percentile``-th percentile: that leaves CSF out, whose share of the brain grows with
    atrophy and would otherwise pull the lower landmark down (an atrophied brain's grey matter would be brightened). A
    gamma ``u -> u ** g`` moves the cut exactly as it moves the voxels, so the landmarks still undo it.

    The statistics are taken on the image smoothed with a Gaussian of ``smooth_sigma`` pixels (noise barely moves
    them). The brain is every voxel brighter than the background by more than ``noise_multiple`` times the
    background's noise (its median absolute deviation; at least 2% of the intensity range): unlike Otsu's threshold,
    that set does not change under a monotonic contrast change such as a gamma, so neither do the percentiles, and a
    power law through them undoes the gamma. The background level and the no-brain checks are those of
    :func:`brain_intensity_range`.

    Raises:
        ValueError: naming ``source``, when no brain can be found, or the brain has no contrast.
    """
    brain_intensity_range(image, percentile, min_brain_fraction, source)  # the checks: empty, non-finite, no brain
    x, background, mask = _smoothed_brain(image, smooth_sigma, noise_multiple)
    brain = x[mask]
    low, reference = _quantile(brain, contrast_percentile / 100.0), _quantile(brain, percentile / 100.0)
    if tissue_floor > 0 and background < low < reference:
        cut = background + (reference - background) * ((low - background) / (reference - background)) ** tissue_floor
        low = _quantile(brain[brain > cut], contrast_percentile / 100.0)
    if not background < low < reference:
        raise ValueError(
            f"{source}: cannot standardize the contrast: the brain's {contrast_percentile:g}th percentile"
            f"{' above the CSF cut' if tissue_floor > 0 else ''} ({low:g}) does not lie between the background "
            f"({background:g}) and its {percentile:g}th percentile ({reference:g})."
        )
    return background, low, reference


class NormalizeBrainIntensity(Transform):
    """Map an image's background level to 0 and the ``percentile``-th percentile of its brain to 1, then clip.

    With ``contrast_percentile`` set, the contrast is standardized too: the map becomes the power law
    ``((x - background) / (reference - background)) ** p`` whose exponent ``p`` sends the brain's
    ``contrast_percentile``-th percentile to ``contrast_value`` (landmarks from :func:`brain_contrast_landmarks`).
    The result then no longer depends on a gamma-like contrast change between scanners or pipelines either.

    Args:
        percentile: brain percentile mapped to 1. 75 lands on white matter in T1 brain MRI and was the most stable
            choice across subjects and perturbations (``benchmarks/intensity_reference.py``).
        clip: output range; values below (background noise) and above (vessels, dura) are clipped.
        min_brain_fraction: smallest fraction of voxels that must lie above the background.
        contrast_percentile: lower brain percentile whose normalized value is fixed (None: linear map only).
        contrast_value: the value in (0, 1) that percentile is mapped to: its mean over the training images.
        tissue_floor: exponent (> 1) of the cut that leaves CSF out of the lower landmark (0: the whole brain; see
            :func:`brain_contrast_landmarks`).
        smooth_sigma: Gaussian sigma (pixels) of the smoothing applied to the statistics only, not the output.
        max_exponent: the power law's exponent is clamped to ``[1 / max_exponent, max_exponent]``.
        bias_sigma: with a value > 0, a scanner's bias field is divided out first (:func:`brain_bias_field`, a local
            white-matter level over a Gaussian of this many pixels) and the landmarks are taken on the corrected image
            (0: off).
    """

    def __init__(
        self,
        percentile: float = 75.0,
        clip: tuple[float, float] | None = (0.0, 2.0),
        min_brain_fraction: float = 0.005,
        contrast_percentile: float | None = None,
        contrast_value: float | None = None,
        smooth_sigma: float = 1.0,
        max_exponent: float = 4.0,
        tissue_floor: float = 0.0,
        bias_sigma: float = 0.0,
    ) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must lie in (0, 100), got {percentile}.")
        if contrast_percentile is not None:
            if not 0.0 < contrast_percentile < percentile:
                raise ValueError(f"contrast_percentile must lie in (0, {percentile:g}), got {contrast_percentile}.")
            if contrast_value is None or not 0.0 < contrast_value < 1.0:
                raise ValueError(f"contrast_value must lie in (0, 1) with contrast_percentile, got {contrast_value}.")
            if max_exponent < 1.0:
                raise ValueError(f"max_exponent must be >= 1, got {max_exponent}.")
            if tissue_floor != 0.0 and not tissue_floor > 1.0:
                raise ValueError(f"tissue_floor must be 0 (off) or an exponent > 1, got {tissue_floor}.")
        if not bias_sigma >= 0.0:
            raise ValueError(f"bias_sigma must be 0 (off) or a Gaussian sigma in pixels > 0, got {bias_sigma}.")
        self.percentile = float(percentile)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.min_brain_fraction = float(min_brain_fraction)
        self.contrast_percentile = None if contrast_percentile is None else float(contrast_percentile)
        self.contrast_value = None if contrast_value is None else float(contrast_value)
        self.smooth_sigma = float(smooth_sigma)
        self.max_exponent = float(max_exponent)
        self.tissue_floor = float(tissue_floor)
        self.bias_sigma = float(bias_sigma)

    def __call__(self, img: Any, source: str | None = None) -> Any:
        if source is None:
            meta = getattr(img, "meta", None) or {}
            source = str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "<image>"))
        x = convert_to_tensor(img, track_meta=False).float()
        if x.numel() and torch.isfinite(x).all():
            # a constant offset would reach the statistics through the smoothing's zero padding at the image edges:
            # start from the darkest level (0.1th percentile), which moves with any offset, so nothing else can
            x = x - _quantile(x.flatten(), 0.001)
        if self.bias_sigma > 0:
            x = correct_bias_field(x, self.bias_sigma, self.smooth_sigma, self.min_brain_fraction, source)
        if self.contrast_percentile is None:
            background, reference = brain_intensity_range(x, self.percentile, self.min_brain_fraction, source)
            out = (x - background) / (reference - background)
        else:
            background, low, reference = brain_contrast_landmarks(
                x,
                self.percentile,
                self.contrast_percentile,
                self.smooth_sigma,
                min_brain_fraction=self.min_brain_fraction,
                source=source,
                tissue_floor=self.tissue_floor,
            )
            exponent = math.log(self.contrast_value) / math.log((low - background) / (reference - background))
            exponent = min(max(exponent, 1.0 / self.max_exponent), self.max_exponent)
            out = ((x - background) / (reference - background)).clamp_min(0.0) ** exponent
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
        contrast_percentile: float | None = None,
        contrast_value: float | None = None,
        smooth_sigma: float = 1.0,
        max_exponent: float = 4.0,
        tissue_floor: float = 0.0,
        bias_sigma: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeBrainIntensity(
            percentile,
            clip,
            min_brain_fraction,
            contrast_percentile,
            contrast_value,
            smooth_sigma,
            max_exponent,
            tissue_floor,
            bias_sigma,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d
