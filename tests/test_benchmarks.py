"""The benchmarks start as documented: ``python -m benchmarks.<name>`` from the bundle root."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

SCRIPTS = sorted(p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script):
    """Their imports of the bundle's ``scripts`` resolve without path tweaks: ``--help`` prints the usage."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
