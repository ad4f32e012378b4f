"""The benchmarks start as documented: ``python -m benchmarks.<name>`` from the bundle root."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script):
    """Their imports of the bundle's ``scripts`` resolve without path tweaks: ``--help`` prints the usage."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]


def test_scores_skip_classes_absent_from_an_image():
    """A class missing from an image's labels does not turn the benchmarks' mean Dice into NaN."""
    import torch

    from benchmarks.fit_decode import scores

    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[:, :, :2] = 1
    labels[0, :, 3, 3] = 2  # class 2 only in the first image
    logits = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).float()
    images = torch.rand(2, 1, 4, 4)
    result = scores(logits, images, images, labels)
    assert result["mean_dice"] == pytest.approx(1.0)
    assert result["psnr"] > 50


def test_scores_reduce_dice_as_run_evaluating_does():
    """Each image's mean over the classes it holds, then the mean over images (MONAI's MeanDice), not one flat mean
    over all (image, class) pairs."""
    import torch

    from benchmarks.fit_decode import scores

    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[:, :, :2] = 1
    labels[0, :, 3, 3] = 2  # class 2 only in the first image, and missed there
    pred = labels.clone()
    pred[0, :, 3, 3] = 0
    logits = torch.nn.functional.one_hot(pred[:, 0], 3).permute(0, 3, 1, 2).float()
    images = torch.rand(2, 1, 4, 4)
    # image 0: (1 + 0) / 2, image 1: 1 (class 2 absent) -> 0.75; a flat mean over the three pairs would give 2 / 3
    assert scores(logits, images, images, labels)["mean_dice"] == pytest.approx(0.75)


def test_head_context_reduces_dice_as_run_evaluating_does():
    """The head ablation's mean Dice is the same reduction; its per-class Dice averages the images that hold the
    class."""
    import torch

    from benchmarks.head_context import _dice

    labels = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    labels[:, :, :2] = 1
    labels[0, :, 3, 3] = 2  # class 2 only in the first image, and missed there
    preds = labels.clone()[:, 0]
    preds[0, 3, 3] = 0
    # per class: 1 and 0; their mean would be 0.5, run evaluating's reduction gives 0.75
    assert _dice(preds, labels, 3) == pytest.approx([0.75, 1.0, 0.0])


def test_meta_cost_settings_are_inner_steps_and_epochs():
    """``--setting 4:36`` is read as 4 inner steps for 36 epochs; anything else is refused with the expected form."""
    import argparse

    from benchmarks.meta_cost import parse_setting

    assert parse_setting("4:36") == (4, 36)
    for bad in ("4", "4:x", "0:36", "4:36:1"):
        with pytest.raises(argparse.ArgumentTypeError, match="INNER_STEPS:EPOCHS|positive"):
            parse_setting(bad)


def test_meta_step_benchmarks_time_the_trainer_of_train_json():
    """The meta-step timings build MetaSegTrainer from configs/train.json (inner loop, points, clipping, loss,
    optimizer), not from copies of its values, and one timed outer step runs on a small network."""
    import torch
    from monai.bundle import ConfigParser

    from benchmarks.fit_decode import META_TRAINER_KEYS, meta_trainer_kwargs, product_meta_step_seconds
    from scripts.losses import FocalLoss
    from scripts.network import MetaSegINR

    config = ConfigParser.load_config_file(str(REPO_ROOT / "configs" / "train.json"))
    trainer = config["train"]["trainer"]
    net = MetaSegINR(spatial_dims=2, hidden_channels=16, num_sine_layers=2, num_classes=5, head_channels=8)
    kwargs = meta_trainer_kwargs(net)
    for key in META_TRAINER_KEYS:
        expected = config["meta_inner_lr"] if trainer[key] == "@meta_inner_lr" else trainer[key]
        assert kwargs[key] == expected, key
    assert kwargs["grad_clip_norm"] == trainer["grad_clip_norm"]
    assert isinstance(kwargs["loss_function"], FocalLoss)
    optimizer = kwargs["optimizer"]
    assert optimizer.param_groups[0]["lr"] == config["train"]["optimizer"]["lr"]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in net.trunk.parameters()} <= optimized

    images = torch.rand(2, 1, 16, 16)
    labels = torch.randint(0, 5, (2, 1, 16, 16))
    assert product_meta_step_seconds(net, images, labels, iters=1, inner_steps=1) > 0
