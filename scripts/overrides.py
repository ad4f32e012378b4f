"""Reject unknown command-line overrides: ``--fit_stepz 3`` is a typo, not a new config id.

``monai.bundle`` merges every ``--id value`` pair into the config (``ConfigWorkflow.__init__`` calls
``parser.update(pairs=override)``) and silently adds ids that no config mentions, so a mistyped option is ignored.
The bundle's ``initialize`` calls :func:`check_cli_overrides`, which re-reads the command line of a
``python -m monai.bundle run ...`` process, and fails naming every override id that the given config files do not
define (with the closest known ids). ``--check_overrides false`` turns the check off, for deliberate new ids.

It also fails on an override meant to set ``null``: ``monai.bundle`` drops every override whose value parses to
``None`` (``--x None``) and keeps the config's value, and ``--x null`` sets the string ``'null'``; the config
expression ``'$None'`` is what sets ``null``.
"""

from __future__ import annotations

import difflib
import inspect
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle import scripts as bundle_scripts

from .options import as_bool

__all__ = ["cli_overrides", "config_ids", "unknown_overrides", "null_overrides", "check_cli_overrides"]

# arguments of ``monai.bundle run`` / ``ConfigWorkflow`` that are not config ids
RUN_ARGS = {
    *inspect.signature(bundle_scripts.run).parameters,
    "workflow_type",
    "workflow_name",
    "properties_path",
    "config_root",
} - {"override"}


def _parse_value(raw: str) -> Any:
    """A command-line value as ``fire`` (the ``monai.bundle`` CLI) parses it."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(raw)


def cli_overrides(argv: Sequence[str]) -> dict[str, Any] | None:
    """``{id: value}`` of the ``--id value`` / ``--id=value`` pairs of a ``monai.bundle run`` command line.

    Returns ``None`` when ``argv`` is not such a command (e.g. the bundle is used from Python or from pytest).
    """
    if len(argv) < 2 or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py") or argv[1] != "run":
        return None
    pairs: dict[str, Any] = {}
    tokens = list(argv[2:])
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i < len(tokens) and not tokens[i].startswith("--"):
                value, i = tokens[i], i + 1
            else:
                value = "True"
        pairs[key] = value
    return pairs


def config_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a config (``a``, ``a#b``, ``a#0#c``...)."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for k, v in items:
        key = f"{prefix}{k}"
        yield key
        yield from config_ids(v, f"{key}#")


def unknown_overrides(overrides: Sequence[str], config: dict) -> dict[str, list[str]]:
    """``{override id: closest known ids}`` for the ``overrides`` that ``config`` does not define."""
    parser = ConfigParser(config)
    known: list[str] | None = None
    unknown: dict[str, list[str]] = {}
    for key in overrides:
        if key in RUN_ARGS or key.startswith("_meta_") or key.replace("::", "#") in parser:
            continue
        if known is None:
            known = list(config_ids(config))
        unknown[key] = difflib.get_close_matches(key.replace("::", "#"), known, n=3, cutoff=0.6)
    return unknown


def null_overrides(pairs: dict[str, str]) -> list[str]:
    """The ``--id value`` pairs meant to set ``null`` that ``monai.bundle`` would not: ``None`` (dropped, the config's
    value stays) and ``null`` (the string ``'null'``)."""
    return [k for k, v in pairs.items() if k not in RUN_ARGS and (_parse_value(v) is None or v.strip() == "null")]


def check_cli_overrides(enabled: bool = True, argv: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` naming every override of this ``monai.bundle run`` command that no config file defines,
    or that is meant to set ``null`` but would not (:func:`null_overrides`)."""
    if not as_bool(enabled, "check_overrides"):
        return
    pairs = cli_overrides(sys.argv if argv is None else argv)
    if not pairs or "config_file" not in pairs:
        return
    nulls = null_overrides(pairs)
    if nulls:
        raise ValueError(
            "command-line override(s) that would not set null: "
            + ", ".join(f"--{k} {pairs[k]}" for k in nulls)
            + ". monai.bundle drops an override whose value is None (the config's value stays) and reads null as the"
            " string 'null'; pass '$None' (a config expression) instead, e.g. --" + nulls[0] + " '$None'."
        )
    config_file = _parse_value(pairs["config_file"])
    overrides = [k for k in pairs if k not in RUN_ARGS]
    if "args_file" in pairs:
        with open(_parse_value(pairs["args_file"])) as f:
            overrides += [k for k in json.load(f) if k not in RUN_ARGS]
    unknown = unknown_overrides(overrides, ConfigParser.load_config_files(config_file))
    if unknown:
        lines = [
            f"--{k}: no such id in {config_file}"
            + (f" (did you mean {', '.join('--' + m for m in near)}?)" if near else "")
            for k, near in unknown.items()
        ]
        raise ValueError(
            "unknown command-line override(s), which monai.bundle would silently ignore:\n  "
            + "\n  ".join(lines)
            + "\n(pass --check_overrides false to add new ids on purpose)"
        )
