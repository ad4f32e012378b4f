"""Side-by-side benchmark of MetaSeg's fit-then-decode and meta-training step (results: docs/benchmarks.md).

In one process, on the demo test split and the shipped ``models/model.pt``:

1. ``reference``: the yardstick written plainly here, as the paper's code does it: a copy of the network per image,
   ``torch.optim.Adam`` on the trunk (lr 1e-4, constant), 100 steps of intensity MSE over every pixel with per-step
   autograd, fp32, then one decode of every pixel;
2. ``product``: the bundle's :class:`scripts.inferer.MetaSegInferer` with the settings of ``configs/inference.json``,
   one image at a time;
3. ``product batched``: the same inferer given all images as one batch (per-image weights, batched matmuls);
4. ``fast preset``: the inferer of ``configs/fast.json`` (5 fit steps) with its weights ``models/fast/model.pt``,
   one image at a time, taking turns with 1. and 2.

For each it prints seconds per slice, slices per second, mean foreground Dice, PSNR, peak resident memory and the
matmul GFLOPS achieved (matrix products counted analytically, elementwise work not counted) as a fraction of a
measured fp32 matmul peak; then the time of one second-order meta-training step, reference style (all pixels, plain
loop) against :class:`scripts.trainer.MetaSegTrainer` at the ``configs/train.json`` settings.

    python -m benchmarks.fit_decode --num_images 20 --output eval/benchmark.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.metrics import DiceMetric, PSNRMetric
from monai.networks.utils import one_hot
from torch.nn import functional as F

from scripts.checkpoint import require_weights
from scripts.fitting import adam_fit, coordinate_grid, flatten_image
from scripts.inferer import MetaSegInferer
from scripts.measure import read_peak_memory
from scripts.network import TRUNK_PREFIXES, MetaSegINR
from scripts.trainer import MetaSegTrainer

REPO_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_LR = 1e-4  # the reference's constant Adam learning rate: the paper's (and the product's before 0.15.0)


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Measured fp32 matmul throughput of this machine (GFLOPS) on ``n x n`` matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def matmul_flops_per_point(net: MetaSegINR) -> tuple[float, float]:
    """(trunk + intensity, decoder) multiply-add FLOPs of one point's forward pass (the grid head's per pixel)."""
    trunk = sum(2 * m.in_features * m.out_features for m in [*net.trunk, net.intensity])
    if net.grid_head is not None:
        convs = [m for m in net.grid_head if isinstance(m, torch.nn.modules.conv._ConvNd)]
        head = sum(2 * m.in_channels * m.out_channels * m.weight[0, 0].numel() for m in convs)
    else:
        head = sum(2 * m.in_features * m.out_features for m in net.head if isinstance(m, torch.nn.Linear))
    return float(trunk), float(head)


def load_split(num_images: int | None, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``num_images`` (``None``: all) preprocessed images and labels ``[B, 1, H, W]`` of the evaluation
    config's data of ``split``; the one loader of the benchmarks."""
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in ("inference.json", "evaluate.json")])
    parser["bundle_root"] = str(REPO_ROOT)
    parser["split"] = split
    data = parser.get_parsed_content("dataset#data")[:num_images]
    preprocessing = parser.get_parsed_content("preprocessing")
    items = [preprocessing(d) for d in data]
    images = torch.stack([torch.as_tensor(d["image"]) for d in items]).float()
    labels = torch.stack([torch.as_tensor(d["label"]) for d in items]).long()
    return images, labels


def reference_fit_decode(net: MetaSegINR, image: torch.Tensor, steps: int, lr: float) -> tuple[torch.Tensor, ...]:
    """The plain per-image loop: Adam on a copy of the trunk, full-image MSE, then decode (logits, recon)."""
    model = copy.deepcopy(net)
    coords = coordinate_grid(image.shape[2:])[None]
    target = flatten_image(image)
    optimizer = torch.optim.Adam([*model.trunk.parameters(), *model.intensity.parameters()], lr=lr)

    def trunk(x: torch.Tensor) -> torch.Tensor:
        for layer in model.trunk:
            x = torch.sin(model.omega0 * layer(x))
        return x

    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.mse_loss(model.intensity(trunk(coords)), target)
        loss.backward()
        optimizer.step()
    shape = image.shape[2:]
    with torch.no_grad():
        if model.grid_head is not None:  # the grid head convolves the features of every pixel
            features = trunk(coords)
            logits, recon = model.decode_grid(features, shape), model.intensity(features)
        else:
            out = model(coords)  # the module's own forward: intensity, then logits (head context evaluated pointwise)
            logits, recon = out[..., 1:], out[..., :1]
    return logits.transpose(1, 2).reshape(1, -1, *shape), recon.transpose(1, 2).reshape(1, 1, *shape)


def scores(logits: torch.Tensor, recon: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Mean foreground Dice and PSNR of a batch of predictions, reduced as ``run evaluating`` reduces them (MONAI's
    ``aggregate``: each image's mean over the classes it holds, then the mean over images)."""
    num_classes = logits.shape[1]
    pred = one_hot(logits.argmax(1, keepdim=True), num_classes)
    dice = DiceMetric(include_background=False, reduction="mean")
    dice(pred, one_hot(labels, num_classes))
    psnr = PSNRMetric(max_val=1.0, reduction="mean")
    psnr(recon.clamp(0, 1), images)
    return {"mean_dice": float(dice.aggregate()), "psnr": float(psnr.aggregate())}


def timed(fn, *args) -> tuple[float, dict, Any]:
    """(seconds, memory (``peak_rss_mib``, ``start_rss_mib``: :func:`read_peak_memory`), result) of ``fn(*args)``."""
    memory: dict = {}
    with read_peak_memory(memory):
        start = time.perf_counter()
        out = fn(*args)
        seconds = time.perf_counter() - start
    return seconds, memory, out


def bench_fit(
    net, images, labels, inferer: MetaSegInferer, ref_steps: int, peak: float, fast: tuple | None = None
) -> list[dict]:
    """The fit-then-decode rows of the table (``fast``: the fast preset's network and inferer, a fourth row).

    The reference and the product take turns image by image, so that both see the same machine: this CPU's speed
    drifts by tens of percent over minutes, and a ratio of two blocks run minutes apart would carry that drift.
    """
    n, num_pixels = images.shape[0], images[0, 0].numel()
    trunk_flops, head_flops = matmul_flops_per_point(net)
    fit_points = min(inferer.fit_points or num_pixels, num_pixels)
    methods = {
        f"reference ({ref_steps} steps, all pixels, per-image Adam)": (
            lambda image: reference_fit_decode(net, image, ref_steps, REFERENCE_LR),
            ref_steps,
            num_pixels,
        ),
        f"product ({inferer.fit_steps} steps, {fit_points} points)": (
            lambda image: inferer.fit_decode(image, net),
            inferer.fit_steps,
            fit_points,
        ),
    }
    fast_name = None
    if fast is not None:
        fast_net, fast_inferer = fast
        fast_name = f"fast preset ({fast_inferer.fit_steps} steps, {fit_points} points)"
        methods[fast_name] = (
            lambda image: fast_inferer.fit_decode(image, fast_net),
            fast_inferer.fit_steps,
            fit_points,
        )
    inferer.fit_decode(images[:1], net)  # warm-up: oneDNN builds its bf16 kernels on first use
    runs: dict[str, list] = {name: [] for name in methods}
    for i in range(n):
        for name, (fn, _, _) in methods.items():
            runs[name].append(timed(fn, images[i : i + 1]))
    batched = f"product batched (B={n})"
    methods[batched] = (None, inferer.fit_steps, fit_points)
    runs[batched] = [timed(inferer.fit_decode, images, net)]

    rows = []
    # the fast preset's point-wise head classifies only the non-zero pixels (skip_background); a grid head runs on all
    head_pixels = {name: n * num_pixels for name in methods}
    if fast_name is not None and fast[1].skip_background and fast[0].grid_head is None:
        head_pixels[fast_name] = int((images != 0).sum())
    order = [name for name in methods if name != batched]
    methods = {name: methods[name] for name in [*order[:2], batched, *order[2:]]}
    for name, (_, steps, points) in methods.items():
        seconds = sum(r[0] for r in runs[name])
        logits, recon = (torch.cat([r[2][j] for r in runs[name]]) for j in (0, 1))
        # forward + backward of a fit step ~ 3x the forward's matrix products; decoding: trunk per pixel, head per
        # classified pixel
        flops = n * (steps * points * 3 * trunk_flops + num_pixels * trunk_flops) + head_pixels[name] * head_flops
        rows.append(
            {
                "method": name,
                "s_per_slice": seconds / n,
                "slices_per_s": n / seconds,
                **scores(logits, recon, images, labels),
                "peak_rss_mib": max(r[1]["peak_rss_mib"] for r in runs[name]),
                # above what the process held when the call started (the other method's freed memory included)
                "rss_growth_mib": max(r[1]["peak_rss_mib"] - r[1]["start_rss_mib"] for r in runs[name]),
                "gflops": flops / seconds / 1e9,
                "fraction_of_matmul_peak": flops / seconds / 1e9 / peak,
            }
        )
    return rows


META_TRAINER_KEYS = ("inner_steps", "inner_lr", "inner_seg_weight", "seg_weight", "num_points", "seg_points")


def meta_trainer_kwargs(net: MetaSegINR) -> dict[str, Any]:
    """The :class:`scripts.trainer.MetaSegTrainer` settings of ``configs/train.json`` for ``net`` (inner loop,
    points, gradient clipping, its ``loss`` and ``train#optimizer`` built over ``net``), read from the config so a
    benchmark times the trainer ``run training`` builds."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    parser["bundle_root"] = str(REPO_ROOT)
    parser["network"] = net
    missing = [k for k in META_TRAINER_KEYS if k not in parser["train"]["trainer"]]
    if missing:
        raise KeyError(f"configs/train.json: train#trainer lacks {missing}")
    kwargs = {k: parser.get_parsed_content(f"train#trainer#{k}") for k in META_TRAINER_KEYS}
    kwargs["grad_clip_norm"] = parser.get_parsed_content("train#trainer#grad_clip_norm", default=None)
    kwargs["optimizer"] = parser.get_parsed_content("train#optimizer")
    kwargs["loss_function"] = parser.get_parsed_content("loss")
    return kwargs


def product_meta_step_seconds(
    net: MetaSegINR, images: torch.Tensor, labels: torch.Tensor, iters: int, inner_steps: int | None = None
) -> float:
    """Seconds per outer step of :class:`scripts.trainer.MetaSegTrainer` with ``configs/train.json``'s settings (on a
    copy of ``net``; ``inner_steps`` replaces the config's): ``iters`` steps over the images in turn, after one
    warm-up step."""
    n = images.shape[0]
    product_net = copy.deepcopy(net)
    kwargs = meta_trainer_kwargs(product_net)
    if inner_steps is not None:
        kwargs["inner_steps"] = inner_steps
    trainer = MetaSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[
            {"image": images[i % n : i % n + 1], "label": labels[i % n : i % n + 1]} for i in range(iters + 1)
        ],
        network=product_net,
        **kwargs,
    )
    starts: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: starts.append(time.perf_counter()))
    trainer.run()
    return (time.perf_counter() - starts[1]) / iters  # the first iteration is a warm-up


def bench_meta_step(net: MetaSegINR, images: torch.Tensor, labels: torch.Tensor, iters: int) -> list[dict]:
    """Seconds per outer step: reference style (all pixels, plain loop) and the bundle's MetaSegTrainer."""
    model = copy.deepcopy(net)
    settings = meta_trainer_kwargs(model)  # the same loss, optimizer and inner loop as the product's step
    inner_steps, num_points, seg_points = settings["inner_steps"], settings["num_points"], settings["seg_points"]
    lr, loss_fn, optimizer = settings["inner_lr"], settings["loss_function"], settings["optimizer"]

    def forward(p: dict[str, torch.Tensor], coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = coords
        for i in range(len(model.trunk)):
            x = torch.sin(model.omega0 * F.linear(x, p[f"trunk.{i}.weight"], p[f"trunk.{i}.bias"]))
        return F.linear(x, p["intensity.weight"], p["intensity.bias"]), model.decode(model.head_input(coords, p, x), p)

    def reference_step(image: torch.Tensor, label: torch.Tensor) -> None:
        coords, target, seg = coordinate_grid(image.shape[2:])[None], flatten_image(image), flatten_image(label)
        params = model.param_dict()
        trunk = [k for k in params if k.startswith(TRUNK_PREFIXES)]
        inner = lambda p: F.mse_loss(forward(p, coords)[0], target)  # noqa: E731
        adapted = adam_fit(inner, params, trunk, inner_steps, lr, create_graph=True)
        intensity, logits = forward(adapted, coords)
        loss = F.mse_loss(intensity, target) + loss_fn(logits.transpose(1, 2), seg.transpose(1, 2))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    n = min(iters, images.shape[0])
    reference_step(images[:1], labels[:1])  # warm-up
    start = time.perf_counter()
    for i in range(n):
        reference_step(images[i : i + 1], labels[i : i + 1])
    ref = (time.perf_counter() - start) / n

    prod = product_meta_step_seconds(net, images, labels, n)
    return [
        {"method": f"reference meta step ({inner_steps} inner steps, all pixels, plain loop)", "s_per_step": ref},
        {
            "method": f"product meta step (MetaSegTrainer, {num_points} points, {seg_points} classified)",
            "s_per_step": prod,
        },
    ]


def load_model(presets: tuple[str, ...], command: str) -> tuple[MetaSegINR, MetaSegInferer]:
    """The network of ``configs/inference.json`` (plus ``presets``' config files, e.g. ``fast.json``) with the
    ``model.pt`` of its ``ckpt_dir`` (missing: an error naming ``command``, which trains it), and its inferer."""
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in ("inference.json", *presets)])
    parser["bundle_root"] = str(REPO_ROOT)
    name = f"MetaSeg ({', '.join(presets)})" if presets else "MetaSeg"
    weights = require_weights(str(Path(parser.get_parsed_content("ckpt_dir")) / "model.pt"), name, command)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(weights, weights_only=True))
    return net, parser.get_parsed_content("inferer")


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--num_images", type=int, default=20)
    args.add_argument("--ref_steps", type=int, default=100)
    args.add_argument("--meta_iters", type=int, default=5)
    args.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args.add_argument("--no_fast", action="store_true", help="leave out the fast preset's row")
    opts = args.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)

    images, labels = load_split(opts.num_images)
    net, inferer = load_model((), "python -m monai.bundle run training --config_file configs/train.json")
    fast = None
    if not opts.no_fast:
        train_fast = "\"['configs/train.json','configs/fast.json','configs/train_fast.json']\" (or pass --no_fast)"
        fast = load_model(("fast.json",), f"python -m monai.bundle run training --config_file {train_fast}")
    peak = matmul_peak_gflops()
    print(
        f"{images.shape[0]} test slices {tuple(images.shape[2:])}, {torch.get_num_threads()} threads, "
        f"fp32 matmul peak {peak:.1f} GFLOPS"
    )

    rows = bench_fit(net, images, labels, inferer, opts.ref_steps, peak, fast)
    print("| method | s/slice | slices/s | mean Dice | PSNR dB | peak RSS MiB (growth) | GFLOPS | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['s_per_slice']:.3f} | {r['slices_per_s']:.2f} | {r['mean_dice']:.4f} | "
            f"{r['psnr']:.2f} | {r['peak_rss_mib']:.0f} ({r['rss_growth_mib']:+.0f}) | {r['gflops']:.1f} | "
            f"{r['fraction_of_matmul_peak']:.0%} |"
        )
    ref, prod, batched = rows[:3]
    print(
        f"reference / product: {ref['s_per_slice'] / prod['s_per_slice']:.1f}x faster per slice "
        f"(batched: {ref['s_per_slice'] / batched['s_per_slice']:.1f}x), "
        f"Dice difference {prod['mean_dice'] - ref['mean_dice']:+.4f}"
    )
    for row in rows[3:]:
        print(
            f"product / fast preset: {prod['s_per_slice'] / row['s_per_slice']:.1f}x faster per slice, "
            f"Dice difference {row['mean_dice'] - prod['mean_dice']:+.4f}"
        )

    meta = bench_meta_step(net, images, labels, opts.meta_iters)
    print(
        f"meta step: reference {meta[0]['s_per_step']:.3f} s, product {meta[1]['s_per_step']:.3f} s "
        f"({meta[0]['s_per_step'] / meta[1]['s_per_step']:.1f}x faster)"
    )
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(json.dumps({"matmul_peak_gflops": peak, "fit": rows, "meta": meta}, indent=2))


if __name__ == "__main__":
    main()
