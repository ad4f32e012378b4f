"""Side-by-side benchmark of the decode in bfloat16 and float32 on this machine (results: docs/benchmarks.md).

The inferer's ``head_bf16`` / ``fit_bf16`` default to ``"auto"``: bfloat16 only where the device has bfloat16
kernels (:func:`scripts.inferer.native_bf16`). This script shows why, on the machine it runs on: it fits the first
``--num_images`` demo test images once with the settings of ``configs/inference.json`` and the shipped
``models/model.pt``, then decodes every fit with the head in bfloat16, in float32 and with ``"auto"``, taking turns
(best of ``--repeats``), and prints seconds per slice, the bfloat16 / float32 ratio, which one ``"auto"`` chose,
and the mean foreground Dice and argmax agreement of both precisions.

    python -m benchmarks.bf16_decode --num_images 5 --output eval/bf16_decode.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from benchmarks.fit_decode import load_model, load_split, scores
from scripts.inferer import native_bf16

MODES = {"bf16": True, "fp32": False, "auto": "auto"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_images", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="decodes of each fit per precision (best kept)")
    ap.add_argument("--output", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    net, product = load_model((), "python -m monai.bundle run training --config_file configs/train.json")
    net.eval()
    images, labels = load_split(args.num_images)
    device = images.device
    inferers = {name: copy.copy(product) for name in MODES}
    for name, mode in MODES.items():
        inferers[name].head_bf16 = mode
    fits = [inferers["fp32"].fit(images[i : i + 1], net) for i in range(len(images))]
    seconds = dict.fromkeys(MODES, 0.0)
    logits = {name: [] for name in MODES}
    recons = {name: [] for name in MODES}
    for fit in fits:
        for name, inferer in inferers.items():  # taking turns: the box's drift hits every precision alike
            best = float("inf")
            for _ in range(args.repeats):
                start = time.perf_counter()
                out, recon = inferer.decode(fit, net)
                best = min(best, time.perf_counter() - start)
            seconds[name] += best / len(fits)
            logits[name].append(out)
            recons[name].append(recon)
    logits = {name: torch.cat(v) for name, v in logits.items()}
    quality = {name: scores(logits[name], torch.cat(recons[name]), images, labels) for name in MODES}
    result = {
        "native_bf16": native_bf16(device),
        "auto_uses_bf16": inferers["auto"].uses_bf16(device),
        "num_images": len(images),
        "threads": torch.get_num_threads(),
        "decode_seconds_per_slice": seconds,
        "bf16_over_fp32": seconds["bf16"] / seconds["fp32"],
        "auto_over_fastest": seconds["auto"] / min(seconds["bf16"], seconds["fp32"]),
        "mean_dice": {name: q["mean_dice"] for name, q in quality.items()},
        "psnr": {name: q["psnr"] for name, q in quality.items()},
        "argmax_agreement_bf16_fp32": float((logits["bf16"].argmax(1) == logits["fp32"].argmax(1)).float().mean()),
    }
    print(json.dumps(result, indent=2))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
