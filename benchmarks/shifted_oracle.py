"""How hard the ``test_shifted`` population is in itself: a U-Net trained on that population, against the shipped one.

``benchmarks.shift_sources`` measures how much the shipped models lose on validation subjects re-synthesised with
the ``test_shifted`` population's shift. Part of that loss can be the population's own difficulty (thinner cortex,
lower grey/white contrast, more noise) rather than a failure to generalize. This script separates the two: it writes
the demo's 80 training and 20 validation subjects with the whole shift (``generate_subject(..., shifted=True)``, the
generator of ``test_shifted``) and the 20 validation subjects as they are, trains the bundle's U-Net on the shifted
training subjects with its own ``run training`` command (selected on the shifted validation subjects), and evaluates
it and the shipped U-Net on both validation sets with ``configs/evaluate_unet.json``. The shifted-trained U-Net's
Dice on shifted validation subjects bounds what training on the clean population could reach there. No test image
is read or generated.

    python -m benchmarks.shifted_oracle --work_dir eval/shifted_oracle --output eval/shifted_oracle.json

A second run with the same ``--work_dir`` reuses its data and weights (delete the folder to train again).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.intensity_reference import NUM_TRAIN, REPO_ROOT, VAL_FIRST_INDEX
from benchmarks.robustness import eval_namespace, evaluate, fmt, parse_sets, write_result
from benchmarks.shift_sources import write_subjects
from scripts.demo_data import SHIFT_PARTS

SPLITS = {"train": (1, True), "val": (VAL_FIRST_INDEX, True), "val_clean": (VAL_FIRST_INDEX, False)}  # first, shifted
UNET_CONFIGS = "['configs/train.json','configs/train_unet.json']"


def write_data(data_dir: Path, seed: int, num_train: int, num_val: int) -> Path:
    """Write :data:`SPLITS` (``num_train`` training, ``num_val`` validation subjects) under ``data_dir`` (once; a
    complete folder is reused) and return the splits JSON."""
    splits_file = data_dir / "splits.json"
    if splits_file.is_file():
        return splits_file
    if data_dir.exists():
        raise FileExistsError(f"{data_dir}: exists without splits.json (an interrupted run?); delete it and rerun.")
    tmp = data_dir.with_name(data_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed run's leftovers
    try:
        splits = {}
        for name, (first, shifted) in SPLITS.items():
            count = num_train if name == "train" else num_val
            parts = list(SHIFT_PARTS) if shifted else []
            splits[name] = write_subjects(tmp, name, seed, list(range(first, first + count)), parts)
        (tmp / "splits.json").write_text(json.dumps(splits, indent=1))
        tmp.rename(data_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return splits_file


def train_command(work_dir: Path, data_dir: Path, splits_file: Path, sets: list[str]) -> list[str]:
    """The bundle's documented U-Net ``run training`` command, on the shifted data, writing into ``work_dir``, with
    each ``KEY=VALUE`` of ``sets`` as ``--KEY VALUE``."""
    overrides = [arg for key, _, value in (kv.partition("=") for kv in sets) for arg in ("--" + key, value)]
    return [
        *("python", "-m", "monai.bundle", "run", "training", "--config_file", UNET_CONFIGS),
        *("--logging_file", "configs/logging.conf"),
        *("--ckpt_dir", str(work_dir / "models"), "--output_dir", str(work_dir / "train_out")),
        *("--dataset_dir", str(data_dir), "--splits_file", str(splits_file)),
        *overrides,
    ]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work_dir", required=True, help="folder for the shifted data, the weights and the logs")
    ap.add_argument("--seed", type=int, default=0, help="demo data seed (the configs' demo_seed)")
    ap.add_argument("--ckpt_dir", default=None, help="folder of the clean-trained U-Net (default: models/)")
    ap.add_argument("--output", default=None, help="JSON file for the results (optional)")
    ap.add_argument("--num_train", type=int, default=NUM_TRAIN, help="shifted training subjects (demo: 80)")
    ap.add_argument("--num_val", type=int, default=20, help="validation subjects, each clean and shifted (demo: 20)")
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override, training and eval"
    )
    args = ap.parse_args(argv)
    if min(args.num_train, args.num_val) < 1:
        ap.error("--num_train and --num_val must be at least 1")
    try:
        sets = parse_sets(args.sets)
    except ValueError as e:
        ap.error(str(e))
    work_dir = Path(args.work_dir).absolute()
    start = time.perf_counter()
    data_dir = work_dir / "data"
    splits_file = write_data(data_dir, args.seed, args.num_train, args.num_val)

    weights = work_dir / "models" / "unet.pt"
    command = train_command(work_dir, data_dir, splits_file, args.sets)
    if weights.is_file():
        print(f"{weights} exists: not trained again", flush=True)
    else:
        print("training: " + shlex.join(command), flush=True)
        subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, check=True)

    trained_on = {"clean": args.ckpt_dir, "shifted": str(weights.parent)}
    rows = []
    for population, ckpt_dir in trained_on.items():
        row = {"trained_on": population}
        eval_args = eval_namespace(ckpt_dir, str(data_dir), str(splits_file))
        for split in ("val_clean", "val"):
            dice, count = evaluate("unet", eval_args, sets, [], split)
            row[split] = {"dice": dice, "num_images": count}
            print(f"U-Net trained on {population:>7s}, {split:>9s}: Dice {dice:.4f} ({count} images)", flush=True)
        rows.append(row)

    print("\n| U-Net trained on | clean val | shifted val | drop |\n|---|---|---|---|")
    for row in rows:
        clean, shifted = row["val_clean"]["dice"], row["val"]["dice"]
        print(f"| {row['trained_on']} | {clean:.4f} | {shifted:.4f} | {fmt(clean - shifted)} |")
    info = {"rows": rows, "train_command": shlex.join(command), "sets": sets, "seconds": time.perf_counter() - start}
    return write_result("shifted_oracle", info, args.output, argv)


if __name__ == "__main__":
    main()
