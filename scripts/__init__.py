"""MetaSeg bundle scripts: network, fitting, engines, inferer, data and I/O helpers."""

from . import (
    compare,
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
    plots,
    postprocess,
    resolution,
    trainer,
    transforms,
)

__all__ = [
    "compare",
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
    "plots",
    "postprocess",
    "resolution",
    "trainer",
    "transforms",
]
