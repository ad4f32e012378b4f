"""``bundle_root`` is the bundle's own folder, whatever the working directory: nothing is written where the caller is.

Each check runs from an empty temporary working directory, in a fresh process whose ``sys.path`` does not hold the
bundle (as for a user who loads the bundle from elsewhere), and asserts that the directory is still empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.utils import REPO_ROOT

ENV = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
ENV.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))


def _python(cwd: Path, code: str) -> str:
    """Run ``code`` with this interpreter in ``cwd``; its stdout."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc.stdout


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """An empty working directory outside the bundle."""
    cwd = tmp_path / "caller"
    cwd.mkdir()
    return cwd


def test_run_inference_from_another_directory(elsewhere, tmp_path, tiny_dataset):
    """``run inference`` with absolute config paths: the bundle's scripts and weights are found, cwd stays empty."""
    dataset_dir, _ = tiny_dataset
    image = dataset_dir / "OASIS_OAS1_0006_MR1" / "slice_norm.nii.gz"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference"]
    cmd += ["--config_file", str(REPO_ROOT / "configs" / "inference.json")]
    cmd += ["--datalist", json.dumps([str(image)]), "--output_dir", str(out), "--fit_steps", "2"]
    proc = subprocess.run(cmd, cwd=elsewhere, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (out / "OASIS_OAS1_0006_MR1" / "slice_norm_seg.nii.gz").is_file()
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("workflow_type", ["inference", "train"])
def test_monai_bundle_load_from_another_directory(elsewhere, workflow_type):
    """``monai.bundle.load`` builds ``network_def`` with the bundle's own ``scripts`` and weights."""
    code = (
        "import monai, sys\n"
        f"net = monai.bundle.load({REPO_ROOT.name!r}, bundle_dir={str(REPO_ROOT.parent)!r}, "
        f"workflow_type={workflow_type!r}, device='cpu')\n"
        "print(type(net).__name__, sys.modules[type(net).__module__].__file__)\n"
    )
    name, module_file = _python(elsewhere, code).split()[-2:]
    assert name == "MetaSegINR" and Path(module_file) == REPO_ROOT / "scripts" / "network.py"
    assert os.listdir(elsewhere) == []


def test_default_folders_are_the_bundles(elsewhere, tmp_path):
    """A workflow built from elsewhere puts its default folders in the bundle (demo data, weights, outputs)."""
    code = (
        "from monai.bundle import ConfigWorkflow\n"
        f"w = ConfigWorkflow(config_file={str(REPO_ROOT / 'configs' / 'train.json')!r}, workflow_type='train', "
        f"logging_file=False, output_dir={str(tmp_path / 'eval')!r})\n"
        "w.initialize()\n"
        "print(*(w.parser.get_parsed_content(k) for k in ('bundle_root', 'ckpt_dir', 'demo_dir')))\n"
    )
    root, ckpt_dir, demo_dir = _python(elsewhere, code).split()[-3:]
    assert (Path(root), Path(ckpt_dir), Path(demo_dir)) == (REPO_ROOT, REPO_ROOT / "models", REPO_ROOT / "data/demo")
    assert os.listdir(elsewhere) == []
