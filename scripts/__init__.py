"""MetaSeg bundle scripts: network, fitting, engines, inferer, data and I/O helpers.

Submodules are imported on first access (PEP 562), so ``$import scripts`` in a config loads only the modules its
expressions use (``scripts.data.load_datalist(...)``), not scipy, the plotting or the report code.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "checkpoint",
    "compare",
    "data",
    "demo_data",
    "distributed",
    "evaluator",
    "fitting",
    "handlers",
    "head_trainer",
    "inferer",
    "intensity",
    "losses",
    "measure",
    "network",
    "options",
    "outputs",
    "overrides",
    "plots",
    "postprocess",
    "report",
    "resolution",
    "segmenter",
    "trainer",
    "transforms",
]


def __getattr__(name: str) -> ModuleType:
    """Import the submodule ``scripts.<name>`` when it is first used as an attribute."""
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)  # also binds it as an attribute of this package
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
