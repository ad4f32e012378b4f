"""MetaSeg bundle scripts: network, fitting, engines, inferer, data and I/O helpers."""

from . import (
    checkpoint,
    data,
    demo_data,
    distributed,
    evaluator,
    fitting,
    handlers,
    head_trainer,
    inferer,
    io,
    network,
    overrides,
    resume,
    trainer,
    transforms,
)

__all__ = [
    "checkpoint",
    "data",
    "demo_data",
    "distributed",
    "evaluator",
    "fitting",
    "handlers",
    "head_trainer",
    "inferer",
    "io",
    "network",
    "overrides",
    "resume",
    "trainer",
    "transforms",
]
