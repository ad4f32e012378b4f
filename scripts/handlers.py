"""Handlers: evaluation summary (per-class Dice, PSNR, time per image), inference timing and progress, training wall
time."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timezone

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from .evaluator import FIT_TIME_KEY
from .outputs import atomic_path

__all__ = [
    "MetricsSummaryHandler",
    "InferenceTimer",
    "ProgressLogger",
    "TrainingTimeRecorder",
    "INFER_TIME_KEY",
    "write_json_atomic",
]

INFER_TIME_KEY = "infer_time"


def write_json_atomic(obj: object, path: str) -> None:
    """``json.dump`` into a temporary file next to ``path``, then rename it into place."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)


class MetricsSummaryHandler:
    """At the end of an evaluation run, summarise its metrics into ``<output_dir>/<filename>`` and the log.

    Reads ``engine.state.metrics`` (all key/additional metrics, e.g. mean Dice and PSNR), the per-image, per-class
    details of ``dice_metric_name`` (``MeanDice(save_details=True)``), the per-image seconds found under
    ``time_key`` in each iteration's output (the fit times that :class:`scripts.evaluator.MetaSegEvaluator` reports,
    or :class:`InferenceTimer`'s) and the network's parameter count. Under ``torch.distributed`` (each rank
    evaluating a shard, ``configs/multi_gpu_evaluate.json``) every rank must run it: the per-image times are gathered
    from all ranks (the metrics already are, by MONAI), and rank 0 alone logs and writes the summary.

    Args:
        output_dir: where to write the JSON summary.
        class_names: names of the foreground classes, in label order (Dice is reported per foreground class).
        dice_metric_name: name of the Dice metric in the evaluator.
        filename: JSON file name.
        time_key: iteration output key of the per-image seconds.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        dice_metric_name: str = "mean_dice",
        filename: str = "metrics_summary.json",
        logger_name: str = "MetricsSummaryHandler",
        time_key: str = FIT_TIME_KEY,
    ) -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.dice_metric_name = dice_metric_name
        self.filename = filename
        self.logger = logging.getLogger(logger_name)
        self.time_key = time_key
        self._times: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect_time)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._times = []

    def _collect_time(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            t = item.get(self.time_key) if isinstance(item, dict) else None
            if t is not None:
                self._times.extend(float(v) for v in torch.as_tensor(t).reshape(-1))

    def summary(self, engine: Engine) -> dict:
        """The summary dictionary for the engine's last run."""
        metrics = {k: float(v) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))}
        out: dict = {"num_images": len(self._times), "metrics": metrics}
        details = getattr(engine.state, "metric_details", {}).get(self.dice_metric_name)
        if details is not None:
            per_class = torch.nanmean(torch.as_tensor(details, dtype=torch.float64), dim=0).tolist()
            names = (
                self.class_names
                if len(self.class_names) == len(per_class)
                else [str(i + 1) for i in range(len(per_class))]
            )
            out["dice_per_class"] = dict(zip(names, per_class))
        inferer = getattr(engine, "inferer", None)
        if hasattr(inferer, "fit_steps"):
            out["fit_steps"] = inferer.fit_steps
            out["fit_lr"] = inferer.fit_lr
            out["fit_lr_end_factor"] = inferer.fit_lr_end_factor
        if self._times:
            out["seconds_per_image"] = sum(self._times) / len(self._times)
            out["seconds_per_image_median"] = statistics.median(self._times)
        network = getattr(engine, "network", None)
        if isinstance(network, torch.nn.Module):
            out["num_parameters"] = sum(p.numel() for p in network.parameters())
        return out

    def _gather_times(self) -> None:
        """Replace this rank's per-image times by those of all ranks (a collective call) when distributed."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list = [None] * dist.get_world_size()
            dist.all_gather_object(parts, self._times)
            self._times = [t for part in parts for t in part]

    def __call__(self, engine: Engine) -> None:
        self._gather_times()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() > 0:
            return
        summary = self.summary(engine)
        lines = [f"evaluation of {summary['num_images']} image(s):"]
        lines += [f"  {k}: {v:.4f}" for k, v in summary["metrics"].items()]
        lines += [f"  dice[{k}]: {v:.4f}" for k, v in summary.get("dice_per_class", {}).items()]
        if "seconds_per_image" in summary:
            steps = f"fit steps: {summary['fit_steps']}, " if "fit_steps" in summary else ""
            lines.append(f"  {steps}seconds per image: {summary['seconds_per_image']:.3f}")
        self.logger.info("\n".join(lines))
        write_json_atomic(summary, os.path.join(self.output_dir, self.filename))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


class ProgressLogger:
    """Say how far an inference or evaluation run is: ``<done>/<total> images, <elapsed> elapsed, ~<left> left``
    through the engine's logger, at most every ``interval`` seconds (nothing for a run shorter than that) and once
    when the epoch ends. One iteration is one ``unit`` (the configs' data loaders hold one image per batch)."""

    def __init__(self, interval: float = 10.0, unit: str = "images") -> None:
        self.interval = float(interval)
        self.unit = unit
        self.clock = time.monotonic
        self._start = self._last = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._step)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._step, True)

    def _started(self, engine: Engine) -> None:
        self._start = self._last = self.clock()

    def _step(self, engine: Engine, final: bool = False) -> None:
        now = self.clock()
        if now - self._last < self.interval and not (final and now - self._start >= self.interval):
            return
        self._last = now
        total = int(engine.state.epoch_length or 0)
        done = (int(engine.state.iteration) - 1) % max(total, 1) + 1
        elapsed = now - self._start
        message = f"{done}/{total} {self.unit}, {_duration(elapsed)} elapsed"
        if done < total:
            message += f", ~{_duration(elapsed / done * (total - done))} left"
        engine.logger.info(message)


class InferenceTimer:
    """Put the seconds per image of each evaluator iteration (batch preparation + inferer) into its output.

    Measured from ``ITERATION_STARTED`` to MONAI's ``IterationEvents.FORWARD_COMPLETED`` (before postprocessing and
    metrics), divided by the batch size, stored as ``[B]`` under ``key`` for :class:`MetricsSummaryHandler`.
    """

    def __init__(self, key: str = INFER_TIME_KEY) -> None:
        self.key = key
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self._started)
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self._completed)

    @staticmethod
    def _sync(engine: Engine) -> None:
        device = getattr(engine.state, "device", None)
        if isinstance(device, torch.device) and device.type == "cuda":
            torch.cuda.synchronize(device)

    def _started(self, engine: Engine) -> None:
        self._sync(engine)
        self._start = time.perf_counter()

    def _completed(self, engine: Engine) -> None:
        self._sync(engine)
        output = engine.state.output
        pred = output.get("pred") if isinstance(output, dict) else None
        batch = int(pred.shape[0]) if isinstance(pred, torch.Tensor) else 1
        seconds = (time.perf_counter() - self._start) / max(batch, 1)
        if isinstance(output, dict):
            output[self.key] = torch.full((batch,), seconds)


class TrainingTimeRecorder:
    """Record a training stage's wall time into a small JSON file (``<ckpt_dir>/<model>_train_time.json``).

    On ``STARTED`` the clock starts; on ``COMPLETED`` the stage's entry ``{"seconds", "epochs", "iterations",
    "finished"}`` is written under ``stages[stage]``, keeping the entries of other stages (e.g. meta-training and
    head fine-tuning of one model), and ``total_seconds`` is their sum. Written atomically; nothing is written for a
    run that fails. Validation inside the run counts (it is part of training). A run resumed from a checkpoint
    (``--resume``) records ``"resumed": true``: its seconds cover the resumed part only (``iterations_timed``); one
    resumed after the stage had finished runs no iteration and leaves the stage's record unchanged.

    Args:
        filepath: the JSON file.
        stage: this run's name in the file.
    """

    def __init__(self, filepath: str, stage: str = "training") -> None:
        self.filepath = filepath
        self.stage = stage
        self._start = 0.0
        self._first: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_STARTED, self._first_iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()
        self._first = None

    def _first_iteration(self, engine: Engine) -> None:
        if self._first is None:
            self._first = int(engine.state.iteration)  # > 1 when a checkpoint was resumed at STARTED

    def _completed(self, engine: Engine) -> None:
        record: dict = {"stages": {}}
        if os.path.isfile(self.filepath):
            try:
                with open(self.filepath) as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict) and isinstance(loaded.get("stages"), dict):
                    record = loaded
            except (OSError, ValueError):
                pass
        if self._first is None and self.stage in record["stages"]:
            # resumed after the stage had finished: no iteration ran, the stage's record stays as it was
            logging.getLogger(__name__).info(f"{self.stage}: already finished, {self.filepath} left unchanged.")
            return
        record["stages"][self.stage] = {
            "seconds": round(time.perf_counter() - self._start, 3),
            "epochs": int(engine.state.epoch),
            "iterations": int(engine.state.iteration),
            "iterations_timed": int(engine.state.iteration) - (self._first or 1) + 1,
            "resumed": (self._first or 1) > 1,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        record["total_seconds"] = round(sum(float(v["seconds"]) for v in record["stages"].values()), 3)
        write_json_atomic(record, self.filepath)
