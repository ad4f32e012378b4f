"""The focal loss' class reduction against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import FocalLoss as MonaiFocalLoss

from scripts.losses import FocalLoss

# two pixels, three classes: softmax probabilities of the true classes are exp(2)/(exp(2)+2) and 1/3
LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])  # [B=1, C=3, N=2]
LABELS = torch.tensor([[[0, 2]]])  # [B, 1, N]


def _by_hand(gamma: float) -> float:
    """Mean over pixels of -(1 - p_t)^gamma * log(p_t)."""
    p = [math.exp(2) / (math.exp(2) + 2), 1 / 3]
    return sum(-((1 - q) ** gamma) * math.log(q) for q in p) / len(p)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_class_sum_is_the_per_pixel_focal_loss(gamma):
    loss = FocalLoss(gamma=gamma, use_softmax=True, to_onehot_y=True, class_reduction="sum")
    assert loss(LOGITS, LABELS).item() == pytest.approx(_by_hand(gamma), rel=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 3.0])
def test_class_mean_is_monais_loss_divided_by_the_class_count(gamma):
    ours = FocalLoss(gamma=gamma, use_softmax=True, to_onehot_y=True)  # class_reduction="mean", the default
    monai = MonaiFocalLoss(gamma=gamma, use_softmax=True, to_onehot_y=True)
    assert ours(LOGITS, LABELS).item() == monai(LOGITS, LABELS).item()
    assert ours(LOGITS, LABELS).item() == pytest.approx(_by_hand(gamma) / 3, rel=1e-5)


def test_class_sum_keeps_the_other_reductions():
    loss = FocalLoss(gamma=1.0, use_softmax=True, to_onehot_y=True, class_reduction="sum", reduction="sum")
    assert loss(LOGITS, LABELS).item() == pytest.approx(2 * _by_hand(1.0), rel=1e-5)
    none = FocalLoss(gamma=1.0, use_softmax=True, to_onehot_y=True, class_reduction="sum", reduction="none")
    assert none(LOGITS, LABELS).shape == (1, 1, 2)


def test_class_reduction_is_checked():
    with pytest.raises(ValueError, match="class_reduction"):
        FocalLoss(class_reduction="max")
