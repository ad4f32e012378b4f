"""Measurements behind the comparison report: one bundle evaluation, peak memory, a fit-steps sweep, training time.

Each function measures one thing and returns plain numbers; :mod:`scripts.report` turns them into Markdown.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import monai
import torch
from monai.bundle import ConfigWorkflow
from monai.metrics import DiceMetric, PSNRMetric
from torch.nn import functional as F

from .inferer import MetaSegInferer

__all__ = ["read_peak_memory", "run_evaluation", "fit_steps_sweep", "read_train_time", "system_info"]

logger = logging.getLogger(__name__)


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@contextmanager
def read_peak_memory(result: dict) -> Iterator[dict]:
    """Fill ``result`` with the peak resident memory (MiB) of this process during the ``with`` block.

    Linux: writing ``5`` to ``/proc/self/clear_refs`` resets ``VmHWM`` (the resident high-water mark) to the current
    ``VmRSS``; ``VmHWM`` read afterwards is the block's peak. ``result["reset"]`` tells whether the reset worked (if
    not, the peak is the process's peak so far); ``start_rss_mib`` is the resident memory when the block started.
    """
    result["start_rss_mib"] = (_proc_status_kb("VmRSS") or 0) / 1024
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        result["reset"] = True
    except OSError:
        result["reset"] = False
    try:
        yield result
    finally:
        hwm = _proc_status_kb("VmHWM")
        result["peak_rss_mib"] = hwm / 1024 if hwm is not None else None


def run_evaluation(
    config_files: Sequence[str], meta_file: str, overrides: Mapping[str, Any]
) -> tuple[ConfigWorkflow, dict]:
    """Run a bundle evaluation (``run evaluating``'s configs) in this process and return it with its summary.

    The summary is the run's ``metrics_summary.json`` plus ``evaluation_seconds`` (wall time of ``run``) and
    ``memory`` (:func:`read_peak_memory`). The workflow is returned finalized, for its parsed network and data.
    """
    workflow = ConfigWorkflow(
        config_file=list(config_files), meta_file=meta_file, logging_file=False, workflow_type=None, **overrides
    )
    workflow.initialize()
    memory: dict = {}
    start = time.perf_counter()
    with read_peak_memory(memory):
        workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    with open(os.path.join(workflow.parser.get_parsed_content("output_dir"), "metrics_summary.json")) as f:
        summary = json.load(f)
    summary["evaluation_seconds"] = seconds
    summary["memory"] = memory
    return workflow, summary


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[B, 1, *spatial]`` class indices -> ``[B, C, *spatial]`` float one-hot."""
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()


def fit_steps_sweep(
    inferer: MetaSegInferer, network: torch.nn.Module, items: Sequence[dict], device: Any, steps_list: Sequence[int]
) -> list[dict]:
    """Mean foreground Dice, reconstruction PSNR and seconds per image of fit-then-decode for each number of steps.

    ``inferer`` keeps all its settings but ``fit_steps``; ``items`` are preprocessed ``{"image", "label"}`` dicts.
    Each image is fitted once, for the largest number of steps, and decoded at every listed step
    (:meth:`MetaSegInferer.fit_snapshots`: the same results as separate fits). The seconds of ``n`` steps are
    those of a fit of ``n`` steps and one decoding.
    """
    steps_list = sorted({int(n) for n in steps_list})
    num_classes = int(getattr(network, "num_classes", 5))
    dice = {n: DiceMetric(include_background=False) for n in steps_list}
    psnr = {n: PSNRMetric(max_val=1.0) for n in steps_list}
    seconds = dict.fromkeys(steps_list, 0.0)
    for item in items:
        image = item["image"][None].to(device)
        label = _one_hot(item["label"][None].to(device), num_classes)
        for steps, fit_seconds, fit in inferer.fit_snapshots(image, network, steps_list):
            start = time.perf_counter()
            logits, recon = inferer.decode(fit, network)
            seconds[steps] += fit_seconds + time.perf_counter() - start
            dice[steps](_one_hot(logits.argmax(1, keepdim=True), num_classes), label)
            psnr[steps](recon.as_tensor() if hasattr(recon, "as_tensor") else recon, image.as_tensor())
    rows = []
    for steps in steps_list:
        rows.append(
            {
                "fit_steps": steps,
                "mean_dice": float(dice[steps].aggregate().item()),
                "psnr": float(psnr[steps].aggregate().item()),
                "seconds_per_image": seconds[steps] / max(len(items), 1),
            }
        )
        logger.info(f"fit steps {steps}: mean Dice {rows[-1]['mean_dice']:.4f}, PSNR {rows[-1]['psnr']:.2f} dB")
    return rows


def read_train_time(value: float | None, path: str) -> tuple[float | None, str]:
    """Training seconds (``value`` if given, else the ``*_train_time.json`` record at ``path``) and their source."""
    if value is not None:
        return float(value), "given in the config (`*_train_seconds`)"
    if os.path.isfile(path):
        with open(path) as f:
            record = json.load(f)
        stages = ", ".join(f"{k} {float(v['seconds']):.0f} s" for k, v in record.get("stages", {}).items())
        return float(record["total_seconds"]), f"recorded by the training run in `{os.path.basename(path)}` ({stages})"
    return None, f"not recorded (no `{os.path.basename(path)}`; give it with `--*_train_seconds`)"


def system_info(device: Any) -> dict:
    """Device, CPU, thread count and library versions of this process."""
    return {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None,
    }
