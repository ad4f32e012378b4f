"""Unknown command-line overrides: parsing a ``monai.bundle run`` command line, and near-miss suggestions."""

from __future__ import annotations

from scripts.overrides import cli_overrides, unknown_overrides

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
