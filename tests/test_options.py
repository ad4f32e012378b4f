"""Boolean options given as bools or as command-line strings."""

from __future__ import annotations

import pytest

from scripts.options import as_bool


@pytest.mark.parametrize(
    "value,expected", [(True, True), ("true", True), ("False", False), ("false", False), (0, False)]
)
def test_as_bool(value, expected):
    assert as_bool(value, "resume") is expected


def test_as_bool_rejects_other_values():
    with pytest.raises(ValueError, match="--resume must be true or false, got 'maybe'"):
        as_bool("maybe", "resume")
