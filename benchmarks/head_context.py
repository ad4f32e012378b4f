"""Ablation of MetaSeg's segmentation head on fitted features: neighbourhood context, width and depth.

Every demo image (train, val, test) is fitted once by the bundle's :class:`scripts.inferer.MetaSegInferer` (settings of
``configs/inference.json``) from the trunk of ``--model``; then, for each ``--variant``, a fresh head is trained on the
fitted features of the training images (DiceFocal loss, Adam with cosine decay, random pixels) and scored on the val
and test images (mean foreground Dice of the argmax on the 192x192 grid, as ``run evaluating`` computes it). The
trunk is the same for all variants, so the table isolates what the head reads. Results: docs/experiments.md.

    python -m benchmarks.head_context --model models/model.pt --iters 1500 \\
        --variant point=0,4,128,1 --variant ctx4=1,4,256,2 --variant ctx8=1,8,256,2

A variant is ``name=context_radius,context_step,head_channels,head_layers`` (``MetaSegINR`` arguments). A
``--grid_variant name=channels,d1-d2-...`` is a convolutional grid head (``grid_head_channels`` and
``grid_head_dilations``), trained on random 96x96 crops of the fitted feature maps (4 per step, same loss and
optimizer) and scored on whole images:

    python -m benchmarks.head_context --iters 1500 --variant r2s4=2,4,256,2 --grid_variant g64=64,1-2-4-8-16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from monai.losses import DiceFocalLoss
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot

from benchmarks.fit_decode import load_split
from scripts.fitting import gather_neighbours, grid_neighbour_index
from scripts.inferer import MetaSegInferer
from scripts.network import TRUNK_PREFIXES, MetaSegINR

REPO_ROOT = Path(__file__).resolve().parents[1]


def fitted_features(net: MetaSegINR, inferer: MetaSegInferer, images: torch.Tensor) -> torch.Tensor:
    """Penultimate features ``[B, N, hidden]`` (fp16) of every pixel after the test-time fit of each image."""
    out = []
    for image in images:
        fit = inferer.fit(image[None], net)
        with torch.no_grad():
            out.append(net.trunk_features(fit.coords, fit.params)[0].half())
    return torch.stack(out)


def train_head(net: MetaSegINR, feats: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, iters: int) -> None:
    """Train ``net``'s head on random pixels of the fitted training features (neighbours gathered by ``index``)."""
    optimizer = torch.optim.Adam(net.head.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    loss_fn = DiceFocalLoss(softmax=True, to_onehot_y=True, gamma=1.0)
    flat_labels = labels.flatten(1)
    for _ in range(iters):
        images = torch.randint(len(feats), (2,))
        pixels = torch.randint(index.shape[0], (2, 8192))
        head_input = torch.cat([gather_neighbours(feats[i : i + 1], index[p]) for i, p in zip(images, pixels)])
        logits = net.decode(head_input.float())
        target = torch.stack([flat_labels[i][p] for i, p in zip(images, pixels)])
        loss = loss_fn(logits.transpose(1, 2), target[:, None])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


def train_grid_head(net: MetaSegINR, feats: torch.Tensor, labels: torch.Tensor, iters: int, crop: int = 96) -> None:
    """Train ``net``'s grid head on random ``crop``-sized windows of the fitted training feature maps."""
    optimizer = torch.optim.Adam(net.grid_head.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iters)
    loss_fn = DiceFocalLoss(softmax=True, to_onehot_y=True, gamma=1.0)
    shape = labels.shape[2:]
    maps = feats.transpose(1, 2).reshape(len(feats), feats.shape[2], *shape)  # [B, hidden, H, W]
    for _ in range(iters):
        images = torch.randint(len(feats), (4,))
        corners = [torch.randint(0, n - crop + 1, (4,)) for n in shape]
        windows = [(i, slice(y, y + crop), slice(x, x + crop)) for i, y, x in zip(images, *corners)]
        x = torch.stack([maps[i, :, ys, xs] for i, ys, xs in windows]).float()
        target = torch.stack([labels[i, :, ys, xs] for i, ys, xs in windows])
        logits = net.decode_grid(x.flatten(2).transpose(1, 2), (crop, crop)).transpose(1, 2)
        loss = loss_fn(logits.reshape(len(x), -1, crop, crop), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()


@torch.no_grad()
def score_grid(net: MetaSegINR, feats: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """:func:`score` for a grid head, which decodes each whole fitted image."""
    shape = labels.shape[2:]
    preds = torch.cat([net.decode_grid(f[None].float(), shape).argmax(-1) for f in feats])
    return _dice(preds, labels, net.num_classes)


def _dice(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float]:
    """Mean foreground Dice as ``run evaluating`` reduces it (each image's mean over the classes it has, then the mean
    over images), then the Dice of each foreground class, averaged over the images that have it."""
    shape = labels.shape[2:]
    metric = DiceMetric(include_background=False)
    dice = metric(one_hot(preds.reshape(-1, 1, *shape), num_classes), one_hot(labels, num_classes))
    per_class = torch.as_tensor(dice).nanmean(0)  # [B, C - 1] -> per class
    return [float(metric.aggregate()), *(float(d) for d in per_class)]


@torch.no_grad()
def score(net: MetaSegINR, feats: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> list[float]:
    """Mean foreground Dice, then the Dice of each foreground class, averaged over images."""
    preds = torch.cat([net.decode(gather_neighbours(f[None], index).float()).argmax(-1) for f in feats])
    return _dice(preds, labels, net.num_classes)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "model.pt")
    args.add_argument("--variant", action="append", default=[], help="name=radius,step,head_channels,head_layers")
    args.add_argument("--grid_variant", action="append", default=[], help="name=channels,d1-d2-... (grid head)")
    args.add_argument("--iters", type=int, default=1500)
    args.add_argument("--seed", type=int, default=0)
    args.add_argument("--num_images", type=int, default=None, help="first N images per split (default: all)")
    opts = args.parse_args()

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in ("inference.json", "evaluate.json")])
    parser["bundle_root"] = str(REPO_ROOT)
    state = torch.load(opts.model, weights_only=True)
    trunk_state = {k: v for k, v in state.items() if k.startswith(TRUNK_PREFIXES)}
    base = parser.get_parsed_content("network_def")
    base.load_state_dict({**base.state_dict(), **trunk_state})
    inferer = parser.get_parsed_content("inferer")
    data = {}
    for split in ("train", "val", "test"):
        start = time.perf_counter()
        images, labels = load_split(opts.num_images, split=split)
        data[split] = (fitted_features(base, inferer, images), labels)
        print(f"{split}: {len(images)} images fitted in {time.perf_counter() - start:.0f} s", flush=True)

    grid = tuple(data["train"][1].shape[2:])
    names = ["cortex", "subcortical_gm", "white_matter", "csf"]
    print("| variant | radius, step, width, layers | head params | val Dice | test Dice | " + " | ".join(names) + " |")
    for spec in opts.variant:
        name, values = spec.split("=")
        radius, step, width, layers = (int(v) for v in values.split(","))
        torch.manual_seed(opts.seed)
        net = MetaSegINR(
            hidden_channels=base.trunk[0].out_features,
            num_sine_layers=len(base.trunk),
            num_classes=base.num_classes,
            head_channels=width,
            head_layers=layers,
            context_radius=radius,
            context_step=step,
            context_grid=grid if radius else None,
        )
        index = grid_neighbour_index(grid, net.context_pixels)
        train_head(net, *data["train"], index, opts.iters)
        val, test = score(net, *data["val"], index), score(net, *data["test"], index)
        params = sum(p.numel() for p in net.head.parameters())
        per_class = " | ".join(f"{d:.3f}" for d in test[1:])
        print(f"| {name} | {values} | {params:,} | {val[0]:.4f} | {test[0]:.4f} | {per_class} |", flush=True)
    for spec in opts.grid_variant:
        name, values = spec.split("=")
        width, dilations = values.split(",")
        torch.manual_seed(opts.seed)
        net = MetaSegINR(
            hidden_channels=base.trunk[0].out_features,
            num_sine_layers=len(base.trunk),
            num_classes=base.num_classes,
            grid_head_channels=int(width),
            grid_head_dilations=[int(d) for d in dilations.split("-")],
        )
        train_grid_head(net, *data["train"], opts.iters)
        val, test = score_grid(net, *data["val"]), score_grid(net, *data["test"])
        params = sum(p.numel() for p in net.grid_head.parameters())
        per_class = " | ".join(f"{d:.3f}" for d in test[1:])
        print(f"| {name} | grid {values} | {params:,} | {val[0]:.4f} | {test[0]:.4f} | {per_class} |", flush=True)


if __name__ == "__main__":
    main()
