"""Import structure: ``import scripts`` is cheap (submodules load on first use) and the network has no cycle."""

from __future__ import annotations

import subprocess
import sys

import pytest

import scripts
from tests.utils import REPO_ROOT


def _modules_after(code: str) -> set[str]:
    """Names in ``sys.modules`` after running ``code`` in a fresh interpreter in the bundle root."""
    proc = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sys.modules))"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return set(proc.stdout.split())


def test_import_scripts_loads_no_submodule_nor_scipy():
    loaded = _modules_after("import scripts")
    assert not {m for m in loaded if m.startswith("scripts.")}
    assert not {m for m in loaded if m.split(".")[0] in {"scipy", "matplotlib", "PIL", "monai"}}


def test_network_does_not_import_the_inferer():
    loaded = _modules_after("import scripts.network")
    assert "scripts.inferer" not in loaded and "scipy" not in loaded


@pytest.mark.parametrize("name", scripts.__all__)
def test_submodules_load_on_attribute_access(name):
    assert getattr(scripts, name).__name__ == f"scripts.{name}"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        scripts.nope  # noqa: B018
