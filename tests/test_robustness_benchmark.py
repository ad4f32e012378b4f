"""``python -m benchmarks.robustness`` end to end on a tiny demo dataset with tiny random MetaSeg and U-Net weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scripts.demo_data import prepare_demo_data
from tests.utils import REPO_ROOT, TINY_NET, TINY_UNET_FEATURES, data_args, save_tiny_metaseg, save_tiny_unet

ROWS = [
    "clean",
    "intensity x0.5",
    "intensity x2",
    "offset +0.1",
    "gamma 0.6",
    "gamma 1.6",
    "bias field",
    "noise sigma 0.05",
    "blur sigma 1 px",
    "rotation +10 deg",
    "rotation -10 deg",
    "left-right flip",
    "test_shifted split",
]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """``(dataset_dir, splits_file, ckpt_dir)``: 2 test + 2 test_shifted subjects, tiny random weights."""
    root = tmp_path_factory.mktemp("robustness")
    splits = prepare_demo_data(str(root / "demo"), num_train=1, num_val=1, num_test=2, seed=1)
    models = root / "models"
    save_tiny_metaseg(models)
    save_tiny_unet(models)
    return root / "demo", Path(splits), models


def run_script(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks.robustness <args>`` in ``cwd``, the bundle root being importable (as from the root)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.robustness", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


TINY_METASEG = [f"--set={k.lstrip('-')}={v}" for k, v in zip(TINY_NET[::2], TINY_NET[1::2])]


def tiny_args(dataset_dir: Path, splits_file: Path, ckpt_dir: Path) -> list[str]:
    return [
        *data_args(dataset_dir, splits_file, ckpt_dir)[: -len(TINY_NET)],  # the data, without the bundle's --id form
        *TINY_METASEG,
        "--set",
        f"network_def#features={json.dumps(TINY_UNET_FEATURES)}",
        "--set",
        "fit_steps=2",
    ]


def test_robustness_benchmark_end_to_end(tiny_setup, tmp_path):
    """Every row for both models, Dice in [0, 1], drops against the clean row, the Markdown table and the command;
    the evaluations' files go to temporary folders (the working directory stays empty)."""
    dataset_dir, splits_file, ckpt_dir = tiny_setup
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    output = tmp_path / "out" / "robustness.json"
    proc = run_script(cwd, *tiny_args(dataset_dir, splits_file, ckpt_dir), "--output", str(output))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert list(cwd.iterdir()) == []

    result = json.loads(output.read_text())
    assert result["models"] == {"metaseg": "MetaSeg", "unet": "U-Net"}
    assert [row["perturbation"] for row in result["rows"]] == ROWS
    for row in result["rows"]:
        for model in ("metaseg", "unet"):
            assert 0.0 <= row[model]["dice"] <= 1.0, row
            assert row[model]["num_images"] == 2, row
            assert row[model]["drop"] == pytest.approx(result["rows"][0][model]["dice"] - row[model]["dice"])
    assert result["rows"][-1]["split"] == "test_shifted"
    assert result["bias_field_max_min"] > 1.5  # "strong": the field varies by more than 1.5x over the brain

    lines = proc.stdout.splitlines()
    assert "| perturbation | MetaSeg Dice | drop | U-Net Dice | drop |" in lines
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines if line.startswith("| ")]
    table = {cells[0]: cells[1:] for cells in rows}
    for row in result["rows"]:
        printed = [float(x) for x in table[row["perturbation"]]]
        expected = [row[m][k] for m in ("metaseg", "unet") for k in ("dice", "drop")]
        assert printed == pytest.approx(expected, abs=5e-5), row
    assert any(line.startswith("command: python -m benchmarks.robustness ") for line in lines)


def test_robustness_benchmark_rejects_unknown_override(tiny_setup, tmp_path):
    """A ``--set`` id that no selected model's config defines (a typo) stops the run before any evaluation."""
    dataset_dir, splits_file, ckpt_dir = tiny_setup
    args = ["--dataset_dir", str(dataset_dir), "--splits_file", str(splits_file), "--ckpt_dir", str(ckpt_dir)]
    proc = run_script(tmp_path, *args, "--set", "fit_steps=2", "--set", "fit_stepz=2")
    assert proc.returncode == 2 and "['fit_stepz']" in proc.stderr, proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []


def test_robustness_benchmark_runs_a_preset_with_its_own_weights(tiny_setup, tmp_path):
    """``--preset FILE`` adds a MetaSeg config file; the weights come from that file's ``ckpt_dir``."""
    dataset_dir, splits_file, ckpt_dir = tiny_setup
    preset = tmp_path / "one_step.json"
    preset.write_text(json.dumps({"ckpt_dir": str(ckpt_dir), "fit_steps": 1}))
    args = ["--dataset_dir", str(dataset_dir), "--splits_file", str(splits_file), *TINY_METASEG]
    output = tmp_path / "robustness.json"
    proc = run_script(
        tmp_path,
        *args,
        "--models",
        "metaseg",
        "--preset",
        str(preset),
        "--rows",
        "offset +0.1",
        "--output",
        str(output),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(output.read_text())
    assert result["presets"] == [str(preset)] and [r["perturbation"] for r in result["rows"]] == [
        "clean",
        "offset +0.1",
    ]
    missing = tmp_path / "gone.json"
    missing.write_text(json.dumps({"ckpt_dir": str(tmp_path / "gone")}))
    proc = run_script(tmp_path, *args, "--models", "metaseg", "--preset", str(missing))
    assert proc.returncode != 0 and str(tmp_path / "gone" / "model.pt") in proc.stderr


def _save_config_network(files: list[str], overrides: dict, path: Path) -> None:
    """Seeded random weights of the ``network_def`` of the bundle ``files`` (``configs/``) with ``overrides``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in files])
    parser.update(overrides)
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def test_robustness_benchmark_3d_rows_metaseg_against_segresnet(tmp_path):
    """``--spatial_dims 3``: MetaSeg's 3D configs against SegResNet on demo volumes, perturbed before the crop."""
    root = tmp_path / "data"
    splits = prepare_demo_data(
        str(root), num_train=1, num_val=1, num_test=1, num_test_shifted=1, seed=2, spatial_dims=3
    )
    models = tmp_path / "models"
    models.mkdir()
    size = {"image_size": [16, 16, 20]}
    tiny = {k.lstrip("-"): int(v) for k, v in zip(TINY_NET[::2], TINY_NET[1::2])}
    _save_config_network(["inference.json", "3d.json"], {**size, **tiny}, models / "model.pt")
    segresnet = ["train.json", "train_unet.json", "3d.json", "train_segresnet.json"]
    _save_config_network(segresnet, size, models / "segresnet.pt")
    output = tmp_path / "robustness_3d.json"
    args = ["--dataset_dir", str(root), "--splits_file", splits, "--ckpt_dir", str(models), *TINY_METASEG]
    args += ["--set", "image_size=[16,16,20]", "--set", "fit_steps=2", "--set", "fit_points=512"]
    rows = ["rotation +10 deg", "left-right flip", "test_shifted split"]
    proc = run_script(tmp_path, "--spatial_dims", "3", *args, "--rows", *rows, "--output", str(output))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(output.read_text())
    assert result["spatial_dims"] == 3 and result["models"] == {"metaseg": "MetaSeg", "segresnet": "SegResNet"}
    assert [row["perturbation"] for row in result["rows"]] == ["clean", *rows]
    for row in result["rows"]:
        assert all(0.0 <= row[m]["dice"] <= 1.0 and row[m]["num_images"] == 1 for m in ("metaseg", "segresnet"))
    assert "| perturbation | MetaSeg Dice | drop | SegResNet Dice | drop |" in proc.stdout.splitlines()
    proc = run_script(tmp_path, "--spatial_dims", "3", *args, "--models", "unet")
    assert proc.returncode == 2 and "not available with --spatial_dims 3" in proc.stderr, proc.stderr[-2000:]
