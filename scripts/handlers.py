"""Evaluation summary: per-class Dice, PSNR, fit steps and time per image, printed and written as JSON."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

import torch
from ignite.engine import Engine, Events

from .evaluator import FIT_TIME_KEY

__all__ = ["MetricsSummaryHandler"]


class MetricsSummaryHandler:
    """At the end of an evaluation run, summarise its metrics into ``<output_dir>/<filename>`` and the log.

    Reads ``engine.state.metrics`` (all key/additional metrics, e.g. mean Dice and PSNR), the per-image, per-class
    details of ``dice_metric_name`` (``MeanDice(save_details=True)``) and the per-image fit times that
    :class:`scripts.evaluator.MetaSegEvaluator` reports.

    Args:
        output_dir: where to write the JSON summary.
        class_names: names of the foreground classes, in label order (Dice is reported per foreground class).
        dice_metric_name: name of the Dice metric in the evaluator.
        filename: JSON file name.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        dice_metric_name: str = "mean_dice",
        filename: str = "metrics_summary.json",
        logger_name: str = "MetricsSummaryHandler",
    ) -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.dice_metric_name = dice_metric_name
        self.filename = filename
        self.logger = logging.getLogger(logger_name)
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
            t = item.get(FIT_TIME_KEY) if isinstance(item, dict) else None
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
        if self._times:
            out["seconds_per_image"] = sum(self._times) / len(self._times)
        return out

    def __call__(self, engine: Engine) -> None:
        summary = self.summary(engine)
        lines = [f"evaluation of {summary['num_images']} image(s):"]
        lines += [f"  {k}: {v:.4f}" for k, v in summary["metrics"].items()]
        lines += [f"  dice[{k}]: {v:.4f}" for k, v in summary.get("dice_per_class", {}).items()]
        if "seconds_per_image" in summary:
            lines.append(
                f"  fit steps: {summary.get('fit_steps')}, seconds per image: {summary['seconds_per_image']:.3f}"
            )
        self.logger.info("\n".join(lines))
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, self.filename)
        fd, tmp = tempfile.mkstemp(dir=self.output_dir, prefix=f".{self.filename}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(summary, f, indent=2)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
