"""Train and evaluate several MetaSeg training settings side by side (the experiments in docs/experiments.md).

Each named setting is a list of ``monai.bundle`` overrides of ``configs/train.json``. Every setting is trained with
``run training`` into ``<work_dir>/<name>/models`` and then evaluated on the demo test split with
``run evaluating`` (same network overrides), up to ``--parallel`` settings at a time (useful on a GPU, where one
run leaves most of the device idle). The table of test Dice, PSNR and wall times is printed and written to
``<work_dir>/sweep_results.json``.

Example (the default settings, and 3x the meta-training epochs)::

    python -m benchmarks.train_sweep --work_dir sweep --parallel 2 \
        --setting "base=" --setting "ep180=--train#trainer#max_epochs 180"
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
NETWORK_KEYS = ("--network_def#", "--num_classes", "--spatial_dims", "--fit_steps", "--fit_lr", "--fit_points")


def _bundle(args: list[str], log: Path) -> float:
    """Run ``python -m monai.bundle <args>`` in the repository root, logging to ``log``; return the wall time."""
    start = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO_ROOT, stdout=f, stderr=f, check=True)
    return time.perf_counter() - start


def _network_overrides(overrides: list[str]) -> list[str]:
    """The overrides that also apply to inference (network shape, fit settings), as ``[key, value, ...]``."""
    out = []
    for key, value in zip(overrides[::2], overrides[1::2]):
        if key.startswith(NETWORK_KEYS):
            out += [key, value]
    return out


def run_setting(
    name: str, overrides: list[str], work_dir: Path, eval_fit_steps: list[int | None], run_id: str, init_from: str
) -> dict:
    """Train one setting, then evaluate it on the test split at each of ``eval_fit_steps`` (None: as trained).

    ``init_from``: a folder whose ``meta_model.pt`` is copied in first (for ``run_id="finetune_head"``).
    """
    run_dir = work_dir / name
    ckpt_dir, out_dir = run_dir / "models", run_dir / "eval"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if init_from:
        shutil.copy(Path(init_from) / "meta_model.pt", ckpt_dir / "meta_model.pt")
    result: dict = {"name": name, "overrides": overrides}
    try:
        result["train_s"] = _bundle(
            ["run", run_id, "--config_file", "configs/train.json", "--ckpt_dir", str(ckpt_dir)]
            + ["--output_dir", str(out_dir), *overrides],
            run_dir / "train.log",
        )
        for steps in eval_fit_steps:
            tag = "test" if steps is None else f"test_fit{steps}"
            net_overrides = _network_overrides(overrides)
            if steps is not None:
                net_overrides = [
                    x for k, v in zip(net_overrides[::2], net_overrides[1::2]) if k != "--fit_steps" for x in (k, v)
                ]
                net_overrides += ["--fit_steps", str(steps)]
            _bundle(
                ["run", "evaluating", "--config_file", "['configs/inference.json','configs/evaluate.json']"]
                + ["--ckpt_dir", str(ckpt_dir), "--output_dir", str(run_dir / tag), *net_overrides],
                run_dir / f"{tag}.log",
            )
            result[tag] = json.loads((run_dir / tag / "metrics_summary.json").read_text())
    except subprocess.CalledProcessError as e:
        result["error"] = f"{e} (see {run_dir}/*.log)"
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", required=True, type=Path)
    parser.add_argument(
        "--setting", action="append", required=True, help="NAME[@META_DIR]=OVERRIDES (a shell-quoted string)"
    )
    parser.add_argument("--common", default="", help="overrides added to every setting")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--run_id", default="training", help="train.json run id (e.g. finetune_head)")
    parser.add_argument("--eval_fit_steps", default="", help="comma-separated fit steps to evaluate (default: trained)")
    args = parser.parse_args()

    settings = {}
    for item in args.setting:
        name, _, overrides = item.partition("=")
        name, _, init_from = name.partition("@")  # NAME@DIR: start from DIR/meta_model.pt
        settings[name] = (shlex.split(args.common) + shlex.split(overrides), init_from)
    steps: list[int | None] = [int(s) for s in args.eval_fit_steps.split(",") if s] or [None]
    args.work_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = [
            pool.submit(run_setting, n, o, args.work_dir, steps, args.run_id, init) for n, (o, init) in settings.items()
        ]
        results = [f.result() for f in futures]
    (args.work_dir / "sweep_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
