"""The benchmark scripts start as documented (``python benchmarks/<name>.py``), from any working directory."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.utils import REPO_ROOT

SCRIPTS = sorted(p.name for p in (REPO_ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script, tmp_path):
    """Their imports of the bundle's ``scripts`` resolve: ``--help`` prints the usage (run from a temporary dir)."""
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / script), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-3000:]
