"""Every ``monai.bundle`` command written in the docs names config files that exist, a run id they define and only
override ids they define, so a renamed id or a re-layered config cannot leave a documented command behind.

The commands themselves are run end to end by the workflow tests; this check covers all of them at once, cheaply.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from scripts.overrides import RUN_ARGS, _parse_value, unknown_overrides

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))]
# ``-m monai.bundle <subcommand> ...`` up to the end of the line or the closing backtick of inline code
COMMAND = re.compile(r"-m monai\.bundle (run|verify_net_in_out|ckpt_export) ([^`\n]*)")


def documented_commands() -> list[tuple[str, str, str]]:
    """``(doc, subcommand, arguments)`` of every ``python -m monai.bundle`` / ``torchrun ... -m monai.bundle`` line."""
    found = []
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text().replace("\\\n", " ")
        # prose that only names a run id (``run inference``) is not a command: commands give their config files
        found += [
            (doc, m.group(1), m.group(2).strip()) for m in COMMAND.finditer(text) if "--config_file" in m.group(2)
        ]
    return found


def _pairs(tokens: list[str]) -> dict[str, str]:
    """``{id: value}`` of ``--id value`` tokens (a flag without a value counts as ``True``)."""
    pairs = {}
    for i, token in enumerate(tokens):
        if token.startswith("--"):
            has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
            pairs[token[2:]] = tokens[i + 1] if has_value else "True"
    return pairs


COMMANDS = documented_commands()


def test_the_docs_hold_the_bundle_commands():
    runs = {args.split()[0] for _, sub, args in COMMANDS if sub == "run"}
    assert {"training", "inference", "evaluating", "compare", "prepare_data", "finetune_head"} <= runs, runs


@pytest.mark.parametrize("doc, subcommand, arguments", COMMANDS, ids=[f"{d}:{a[:60]}" for d, _, a in COMMANDS])
def test_documented_command_resolves(doc, subcommand, arguments):
    tokens = shlex.split(arguments.split(" # ")[0])
    run_id = tokens.pop(0) if subcommand == "run" else None
    pairs = _pairs(tokens)
    files = _parse_value(pairs["config_file"])
    files = [files] if isinstance(files, str) else list(files)
    # ``/path/to/bundle/configs/x.json`` (a command run from elsewhere) names this bundle's configs/x.json
    files = [f[f.index("configs/") :] if f.startswith("/") and "configs/" in f else f for f in files]
    missing = [f for f in files if not (REPO_ROOT / f).is_file()]
    layers_3d = {"configs/train_3d.json", "configs/evaluate_3d.json", "configs/train_segresnet.json"}
    if layers_3d & set(files):  # these only add to the shared 3D layer; without it the stack silently runs 2D
        assert "configs/3d.json" in files, f"{doc}: `{arguments}` uses a 3D layer without configs/3d.json"
    assert not missing, f"{doc}: `{arguments}` names missing config files {missing}"
    try:
        config = ConfigParser.load_config_files([str(REPO_ROOT / f) for f in files])
        parser = ConfigParser(config)
    except (KeyError, ValueError) as err:  # e.g. an override file given without the config it layers on
        pytest.fail(f"{doc}: `{arguments}`: {files} do not load as one config: {err}")
    if run_id is not None:
        assert run_id in parser, f"{doc}: run id {run_id!r} is not defined by {files}"
    if subcommand in ("verify_net_in_out", "ckpt_export"):
        assert pairs.get("net_id", "network_def") in parser, f"{doc}: `{arguments}`"
        return
    unknown = unknown_overrides([k for k in pairs if k not in RUN_ARGS], config)
    assert not unknown, f"{doc}: `{arguments}` overrides ids that {files} do not define: {unknown}"
