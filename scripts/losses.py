"""Segmentation losses whose scaling the configs state explicitly."""

from __future__ import annotations

import torch
from monai.losses import FocalLoss as MonaiFocalLoss

__all__ = ["FocalLoss"]


class FocalLoss(MonaiFocalLoss):
    """MONAI ``FocalLoss`` with a named choice of how the class axis is reduced.

    MONAI's ``reduction="mean"`` averages the focal terms over batch, **class** and spatial elements. With one-hot
    targets only the true class's term is non-zero, so that mean is the per-pixel focal loss divided by the number of
    classes ``C``. ``class_reduction="sum"`` sums the class axis first and then applies ``reduction`` over batch and
    pixels: the per-pixel focal loss ``-(1 - p_t)^gamma * log(p_t)`` averaged over pixels, as the MetaSeg authors'
    loss is computed (``C`` times MONAI's). ``class_reduction="mean"`` (the default) is MONAI's loss unchanged, so
    configs written for ``FocalLoss`` keep their values.

    Args:
        class_reduction: ``"mean"`` (MONAI's) or ``"sum"`` (per-pixel, the authors').
        kwargs: ``monai.losses.FocalLoss`` arguments.
    """

    def __init__(self, *args, class_reduction: str = "mean", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if class_reduction not in ("mean", "sum"):
            raise ValueError(f"class_reduction must be 'mean' or 'sum', got {class_reduction!r}.")
        self.class_reduction = class_reduction

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.class_reduction == "mean":
            return super().forward(input, target)
        reduction, self.reduction = self.reduction, "none"
        try:
            per_class = super().forward(input, target)  # [B, C, ...]
        finally:
            self.reduction = reduction
        per_pixel = per_class.sum(dim=1)
        if reduction == "mean":
            return per_pixel.mean()
        if reduction == "sum":
            return per_pixel.sum()
        return per_pixel.unsqueeze(1)
