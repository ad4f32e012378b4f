"""Option values as configs and the command line give them: booleans, and the numeric options with their bounds.

The bounds of every numeric option of the test-time fit and of the outputs are in :data:`NUMERIC_OPTIONS`, the one
place where they are checked (:func:`check_option`, used by :class:`scripts.inferer.MetaSegInferer` and, for the
seed, by the configs' ``initialize``), so that a value out of range or not a number (``--fit_steps 1e9``,
``--fit_lr abc``) is refused before any work with the option and its allowed range named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["as_bool", "as_int", "as_float", "NUMERIC_OPTIONS", "check_option", "as_seed"]


def as_bool(value: Any, name: str) -> bool:
    """A boolean option given as a bool or, from the command line, as ``true``/``false`` (``fire`` keeps those as
    strings, and ``"false"`` is truthy); anything else is a ``ValueError`` naming the option."""
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "none", ""):
        return False
    raise ValueError(f"--{name} must be true or false, got {value!r}.")


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a number (or a string holding one; never a bool), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    try:  # numpy and torch scalars
        return float(value) if getattr(value, "ndim", None) == 0 else None
    except (TypeError, ValueError):
        return None


def as_int(value: Any, name: str, low: int, high: int, allow_none: bool = False) -> int | None:
    """An integer option in ``[low, high]`` (``1e3`` and ``"12"`` count as integers; ``2.5``, ``"abc"``, ``True`` do
    not); ``None`` too when ``allow_none``. Anything else is a ``ValueError`` naming the option and its range."""
    if value is None and allow_none:
        return None
    number = _number(value)
    if number is None or not math.isfinite(number) or number != int(number) or not low <= number <= high:
        none = " (or null)" if allow_none else ""
        raise ValueError(f"--{name} must be an integer from {low} to {high}{none}, got {value!r}.")
    return int(number)


def as_float(value: Any, name: str, low: float, high: float, low_open: bool = False) -> float:
    """A finite number option in ``[low, high]`` (``(low, high]`` with ``low_open``); anything else is a
    ``ValueError`` naming the option and its range."""
    number = _number(value)
    above_low = number is not None and (number > low if low_open else number >= low)
    if number is None or not math.isfinite(number) or not above_low or number > high:
        bound = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"--{name} must be a finite number {bound} and <= {high}, got {value!r}.")
    return number


@dataclass(frozen=True)
class _Range:
    low: float
    high: float
    integer: bool = True
    allow_none: bool = False
    low_open: bool = False

    def __call__(self, value: Any, name: str) -> Any:
        if self.integer:
            return as_int(value, name, int(self.low), int(self.high), self.allow_none)
        return as_float(value, name, self.low, self.high, self.low_open)


# bounds of the numeric options; a value outside them is refused before any work
NUMERIC_OPTIONS: dict[str, _Range] = {  # fit_points 0 or null: all pixels; decode_chunk null: all at once
    "fit_steps": _Range(0, 10_000),
    "fit_lr": _Range(0.0, 1.0, integer=False, low_open=True),
    "fit_lr_end_factor": _Range(0.0, 1.0, integer=False),
    "fit_points": _Range(0, 2**24, allow_none=True),
    "decode_chunk": _Range(1, 2**30, allow_none=True),
    "output_scale": _Range(1, 8),
    "seed": _Range(0, 2**32 - 1),
}


def check_option(name: str, value: Any) -> Any:
    """``value`` checked against the bounds of the numeric option ``name`` (:data:`NUMERIC_OPTIONS`) and converted
    (``int``, ``float`` or ``None``); a ``ValueError`` naming ``--name`` and the range when it is out of them."""
    return NUMERIC_OPTIONS[name](value, name)


def as_seed(value: Any) -> int:
    """The ``seed`` option checked (an integer from 0 to 2**32 - 1), for ``monai.utils.set_determinism``."""
    return check_option("seed", value)
