"""Shared fixtures: a tiny demo dataset (helpers that are not fixtures live in ``tests/utils.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.demo_data import prepare_demo_data


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A demo dataset with 3 train / 2 val / 2 test subjects: ``(dataset_dir, splits_file)``."""
    root = tmp_path_factory.mktemp("data") / "demo"
    splits = prepare_demo_data(str(root), num_train=3, num_val=2, num_test=2, seed=1)
    return root, Path(splits)


@pytest.fixture()
def bundle_unchanged():
    """Fails the test when the run changed, added or removed a file of the bundle (weights, configs, data, docs)."""
    from tests.utils import bundle_snapshot

    before = bundle_snapshot()
    yield
    after = bundle_snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the run changed the bundle's own files: {changed[:20]}"
