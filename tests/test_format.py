"""Code format with the Model Zoo's settings over the Python sources: black (line length 120, skip magic trailing
commas; pyproject.toml), isort, and flake8 with the bugbear, comprehensions and naming plugins (.flake8)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

PATHS = [p for p in ("scripts", "tests", "benchmarks", "tools") if (REPO_ROOT / p).is_dir()]


@pytest.mark.parametrize(
    "tool",
    [["black", "--check", "--quiet"], ["isort", "--check-only", "--quiet"], ["flake8"]],
    ids=["black", "isort", "flake8"],
)
def test_sources_are_formatted(tool):
    proc = subprocess.run(
        [sys.executable, "-m", *tool, *PATHS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{' '.join(tool)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
