"""Option values as configs and the command line give them."""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]


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
