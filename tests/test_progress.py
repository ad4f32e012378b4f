"""Progress of long inference and evaluation runs: ``scripts.handlers.ProgressLogger`` in the configs' handlers."""

from __future__ import annotations

import json
import logging

from ignite.engine import Engine

from scripts.handlers import ProgressLogger
from tests.utils import REPO_ROOT


def _run(interval: float, items: int, caplog) -> list[str]:
    """Progress lines of an engine run over ``items`` iterations, each reading of the clock 4 s after the last."""
    engine = Engine(lambda engine, batch: None)
    engine.logger = logging.getLogger("progress-test")
    progress = ProgressLogger(interval=interval)
    ticks = iter(range(1000))
    progress.clock = lambda: 4.0 * next(ticks)
    progress.attach(engine)
    with caplog.at_level(logging.INFO, logger="progress-test"):
        engine.run(range(items), max_epochs=1)
    return [r.getMessage() for r in caplog.records if r.name == "progress-test" and " images, " in r.getMessage()]


def test_progress_is_logged_with_what_is_left(caplog):
    lines = _run(interval=10.0, items=6, caplog=caplog)
    assert lines, lines
    assert lines[0].startswith("3/6 images, 12 s elapsed, ~12 s left"), lines
    assert lines[-1].startswith("6/6 images, ") and "left" not in lines[-1], lines


def test_short_runs_stay_quiet(caplog):
    assert _run(interval=1000.0, items=3, caplog=caplog) == []


def test_inference_and_evaluation_configs_report_progress():
    for name, key in (("inference.json", "handlers"), ("evaluate.json", "handlers"), ("evaluate_unet.json", None)):
        config = json.loads((REPO_ROOT / "configs" / name).read_text())
        handlers = config[key] if key else config["validate#handlers"]
        assert {"_target_": "scripts.handlers.ProgressLogger"} in handlers, name
