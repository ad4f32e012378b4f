"""Side-by-side cost of the meta-training stage under different inner-loop lengths (results: docs/benchmarks.md).

In one process, taking turns (A B A B ...), it times outer steps of the bundle's
:class:`scripts.trainer.MetaSegTrainer` at the ``configs/train.json`` settings (points per step, focal-loss points,
inner learning rate), once per ``INNER_STEPS:EPOCHS`` setting, on the first demo training images, and prints seconds
per outer step and the stage's compute, epochs x training images x seconds per step, against the first setting.
Not timed: the meta stage's validation checks (release 0.15's 60 epochs every 10 and train.json's 36 every 6 are six
checks each) and the grid-head stage, which does not depend on these settings. The default compares release 0.15's
meta stage (2 inner steps, 60 epochs) with train.json's::

    python -m benchmarks.meta_cost --output eval/meta_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks.fit_decode import REPO_ROOT, load_split, product_meta_step_seconds


def parse_setting(text: str) -> tuple[int, int]:
    """``"INNER_STEPS:EPOCHS"`` -> (inner steps, epochs)."""
    try:
        inner, epochs = (int(v) for v in text.split(":"))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected INNER_STEPS:EPOCHS, e.g. 2:60, got {text!r}") from e
    if inner < 1 or epochs < 1:
        raise argparse.ArgumentTypeError(f"inner steps and epochs must be positive, got {text!r}")
    return inner, epochs


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument(
        "--setting",
        type=parse_setting,
        action="append",
        default=None,
        help="INNER_STEPS:EPOCHS, repeatable (default: 2:60, then train.json's inner_steps:max_epochs)",
    )
    args.add_argument("--num_images", type=int, default=5, help="training images to take turns on")
    args.add_argument("--iters", type=int, default=20, help="timed outer steps per turn (after one warm-up)")
    args.add_argument("--rounds", type=int, default=3, help="turns per setting; the median is reported")
    args.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    opts = args.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "train.json"))
    parser["bundle_root"] = str(REPO_ROOT)
    trainer = parser["train"]["trainer"]
    settings = opts.setting or [(2, 60), (trainer["inner_steps"], trainer["max_epochs"])]
    net = parser.get_parsed_content("network_def")
    images, labels = load_split(opts.num_images, split="train")
    # iterations per epoch of the default training: one outer step per training image (batch size 1)
    steps_per_epoch = len(parser.get_parsed_content("train#dataset#data"))
    print(
        f"{images.shape[0]} training slices {tuple(images.shape[2:])}, {torch.get_num_threads()} threads, "
        f"{trainer['num_points']} points per step, {steps_per_epoch} outer steps per epoch"
    )

    times: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for _ in range(opts.rounds):
        for inner, epochs in settings:
            seconds = product_meta_step_seconds(net, images, labels, opts.iters, inner_steps=inner)
            times[(inner, epochs)].append(seconds)
    rows = []
    for inner, epochs in settings:
        step = statistics.median(times[(inner, epochs)])
        rows.append(
            {
                "inner_steps": inner,
                "epochs": epochs,
                "s_per_outer_step": step,
                "s_per_outer_step_all": times[(inner, epochs)],
                "meta_compute_s": epochs * steps_per_epoch * step,
            }
        )
    print("| inner steps | epochs | s per outer step (median) | meta-stage compute s | vs first |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['inner_steps']} | {r['epochs']} | {r['s_per_outer_step']:.3f} | {r['meta_compute_s']:.0f} | "
            f"{r['meta_compute_s'] / rows[0]['meta_compute_s']:.2f}x |"
        )
    if opts.output:
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(json.dumps({"steps_per_epoch": steps_per_epoch, "settings": rows}, indent=2))


if __name__ == "__main__":
    main()
