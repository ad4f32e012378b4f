"""MetaSeg bundle scripts: network, fitting, engines, inferer, data and I/O helpers."""

from . import (
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
    trainer,
    transforms,
)

__all__ = [
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
    "trainer",
    "transforms",
]
