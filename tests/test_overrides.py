"""Command-line overrides: parsing a ``monai.bundle run`` command line, near-miss suggestions, and null values."""

from __future__ import annotations

import pytest

from scripts.overrides import check_cli_overrides, cli_overrides, unknown_overrides

BUNDLE_MAIN = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


def test_cli_overrides_parsing():
    argv = [BUNDLE_MAIN, "run", "training", "--config_file", "configs/train.json", "--fit_stepz", "3", "--a#b=4"]
    assert cli_overrides(argv) == {"config_file": "configs/train.json", "fit_stepz": "3", "a#b": "4"}
    assert cli_overrides(["pytest", "-q"]) is None
    assert cli_overrides([BUNDLE_MAIN, "verify_metadata", "--x", "1"]) is None


def test_unknown_overrides_with_suggestions():
    config = {"fit_steps": 2, "train": {"trainer": {"max_epochs": 3}}, "t": [{"keys": "image"}]}
    unknown = unknown_overrides(
        ["fit_steps", "fit_stepz", "train#trainer#max_epochs", "train#trainer#max_epoch", "t#0#keys", "config_file"],
        config,
    )
    assert {k: v[0] for k, v in unknown.items()} == {
        "fit_stepz": "fit_steps",
        "train#trainer#max_epoch": "train#trainer#max_epochs",
    }


def test_overrides_meant_to_set_null_fail_with_the_remedy():
    """``--x None`` is dropped by monai.bundle (the config's value stays) and ``--x null`` is a string: both fail."""
    base = [BUNDLE_MAIN, "run", "finetune_head", "--config_file", "configs/train.json"]
    for value in ("None", "null"):
        argv = base + ["--finetune#trainer#refit_interval", value]
        with pytest.raises(ValueError, match=r"--finetune#trainer#refit_interval " + value + r".*'\$None'"):
            check_cli_overrides(True, argv)
    check_cli_overrides(True, base + ["--finetune#trainer#refit_interval", "$None", "--resume"])
    check_cli_overrides(False, base + ["--finetune#trainer#refit_interval", "None"])  # the check turned off
