"""The out-of-distribution ``test_shifted`` split: written by the generator, evaluated by ``run evaluating --split``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from scripts.demo_data import SHIFT_PARTS, generate_subject, prepare_demo_data
from tests.utils import (
    REPO_ROOT,
    TINY_NET,
    TINY_UNET_FEATURES,
    bundle_env,
    data_args,
    run_bundle,
    save_tiny_metaseg,
    save_tiny_unet,
)

EVAL = "['configs/inference.json','configs/evaluate.json']"


def run_benchmark(script: str, args: list[str], cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m benchmarks.<script> ARGS`` from ``cwd``; fails the test unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *args],
        cwd=cwd,
        env=bundle_env(PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def test_evaluating_the_shifted_split(tmp_path):
    root = tmp_path / "demo"
    splits_file = prepare_demo_data(str(root), num_train=1, num_val=1, num_test=1, num_test_shifted=2, seed=3)
    splits = json.loads(open(splits_file).read())
    shifted = [e["img"] for e in splits["test_shifted"]]
    assert len(shifted) == 2 and not set(shifted) & {e["img"] for k in ("train", "val", "test") for e in splits[k]}
    for rel in shifted:  # scanner-like integers, not the training convention
        assert nib.load(str(root / rel)).get_data_dtype() == np.int16
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "eval"
    run_bundle(
        "run",
        "evaluating",
        "--config_file",
        EVAL,
        "--split",
        "test_shifted",
        *data_args(root, splits_file, ckpt),
        "--output_dir",
        str(out),
        "--fit_steps",
        "2",
    )
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and 0.0 <= summary["metrics"]["mean_dice"] <= 1.0


def test_partly_shifted_subjects():
    """``shifted=parts`` shifts only those parts: all of them is the ``test_shifted`` subject, none the regular one;
    contrast or scanner alone keeps the subject's anatomy (same labels) and changes its image."""
    for index in (81, 121):
        for parts, shifted in ((list(SHIFT_PARTS), True), ([], False)):
            for a, b in zip(generate_subject(0, index, shifted=parts), generate_subject(0, index, shifted=shifted)):
                assert a.dtype == b.dtype and np.array_equal(a, b)
    img, seg = generate_subject(0, 81)
    for part in ("contrast", "scanner"):
        part_img, part_seg = generate_subject(0, 81, shifted=[part])
        assert np.array_equal(part_seg, seg) and not np.allclose(part_img, img)
    assert generate_subject(0, 81, shifted="scanner")[0].dtype == np.int16
    assert not np.array_equal(generate_subject(0, 81, shifted=["anatomy"])[1], seg)
    with pytest.raises(ValueError, match="contrst"):
        generate_subject(0, 81, shifted=["contrst"])


def test_shift_sources_benchmark(tmp_path):
    """``python -m benchmarks.shift_sources`` end to end with tiny weights: one row per shift, drops against ``none``,
    the Markdown table, and nothing written to the working directory."""
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    save_tiny_unet(ckpt)
    cwd, output = tmp_path / "cwd", tmp_path / "out" / "shift.json"
    cwd.mkdir()
    sets = [f"--set={k.lstrip('-')}={v}" for k, v in zip(TINY_NET[::2], TINY_NET[1::2])]
    args = ["--num_images", "1", "--ckpt_dir", str(ckpt), "--output", str(output), *sets, "--set", "fit_steps=2"]
    args += ["--set", f"network_def#features={json.dumps(TINY_UNET_FEATURES)}"]
    proc = run_benchmark("shift_sources", args, cwd)
    assert list(cwd.iterdir()) == []
    result = json.loads(output.read_text())
    assert [row["shift"] for row in result["rows"]] == [
        "none",
        "contrast",
        "scanner",
        "contrast + scanner",
        "anatomy",
        "all",
    ]
    for row in result["rows"]:
        for model in ("metaseg", "unet"):
            assert 0.0 <= row[model]["dice"] <= 1.0 and row[model]["num_images"] == 1, row
            assert row[model]["drop"] == pytest.approx(result["rows"][0][model]["dice"] - row[model]["dice"])
    assert "| shift | MetaSeg Dice | drop | U-Net Dice | drop |" in proc.stdout.splitlines()


def test_shift_sources_tissue_levels(tmp_path):
    """``--tissue_levels``: one line per normalization and shift, no model read, the ``none`` row unmoved; a candidate
    above a CSF cut gets the exponent and value that ``benchmarks.intensity_reference`` measures (docs/benchmarks.md).
    """
    output = tmp_path / "levels.json"
    args = ["--tissue_levels", "--num_images", "2", "--ckpt_dir", str(tmp_path / "no_models"), "--output", str(output)]
    args += ["--contrast_percentile", "35", "--floor_level", "0.45"]
    proc = run_benchmark("shift_sources", args, tmp_path)
    levels = json.loads(output.read_text())["tissue_levels"]
    configs = "configs (p75, p35 above cut 2.11)"
    assert list(levels) == [
        f"{configs}, bias field sigma 8",
        configs,
        "linear (p75)",
        "p75, p35 above cut 2.07 -> 0.76",
    ]
    for rows in levels.values():
        assert len(rows) == 6
        for name, tissue in rows["none"].items():
            if name != "overlap":
                assert tissue["move"] == pytest.approx(0.0, abs=1e-9)
        assert rows["none"]["cortex"]["level"] < rows["none"]["white matter"]["level"]
        assert all(0.0 <= v <= 0.5 for row in rows.values() for v in row["overlap"].values()), rows
    assert f"| {configs}, bias field sigma 8 | all |" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["levels.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--contrast_percentile", "35"], "--contrast_percentile needs --tissue_levels"),
        (["--tissue_levels", "--floor_level", "0.45"], "--floor_level needs --contrast_percentile"),
        (["--bias_sigma", "8"], "--bias_sigma needs --tissue_levels"),
    ],
)
def test_shift_sources_refuses_inconsistent_options(argv, message, capsys):
    from benchmarks.shift_sources import main

    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_shift_sources_bias_correction_separates_tissues(tmp_path):
    """``--tissue_levels``: on the shifted scanner's subjects (a stronger bias field) cortex and white matter overlap
    less with the configs' map than with the same map without its bias-field correction; ``--bias_sigma 8`` (the
    configs' own sigma, so no extra row) measures the CSF-cut landmark on corrected training subjects and gets the
    exponent and value the configs hold (docs/experiments.md, 0.16.4)."""
    output = tmp_path / "levels.json"
    args = ["--tissue_levels", "--num_images", "3", "--bias_sigma", "8", "--output", str(output)]
    args += ["--contrast_percentile", "35", "--floor_level", "0.45"]
    run_benchmark("shift_sources", args, tmp_path)
    levels = json.loads(output.read_text())["tissue_levels"]
    configs = "configs (p75, p35 above cut 2.11)"
    corrected, candidate = f"{configs}, bias field sigma 8", "p75, p35 above cut 2.11 -> 0.762, bias field sigma 8"
    assert list(levels) == [corrected, configs, "linear (p75)", candidate]
    with_correction = levels[corrected]["contrast + scanner"]["overlap"]["cortex / WM"]
    assert with_correction < 0.85 * levels[configs]["contrast + scanner"]["overlap"]["cortex / WM"]


def test_shifted_oracle_benchmark(tmp_path):
    """``python -m benchmarks.shifted_oracle`` end to end with a tiny U-Net and one epoch: the shifted data and the
    weights land in ``--work_dir``, both U-Nets are scored on both validation sets, and a rerun reuses the work."""
    ckpt = tmp_path / "models"
    save_tiny_unet(ckpt)
    work, output, cwd = tmp_path / "work", tmp_path / "oracle.json", tmp_path / "cwd"
    cwd.mkdir()
    args = ["--work_dir", str(work), "--ckpt_dir", str(ckpt), "--output", str(output)]
    args += ["--num_train", "2", "--num_val", "1", "--set", "train#trainer#max_epochs=1"]
    args += ["--set", f"network_def#features={json.dumps(TINY_UNET_FEATURES)}"]
    for attempt in range(2):
        proc = run_benchmark("shifted_oracle", args, cwd, timeout=600)
        assert ("not trained again" in proc.stdout) == (attempt == 1)
    assert list(cwd.iterdir()) == []
    splits = json.loads((work / "data" / "splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 2, "val": 1, "val_clean": 1}
    assert nib.load(str(work / "data" / splits["val"][0]["img"])).get_data_dtype() == np.int16
    assert nib.load(str(work / "data" / splits["val_clean"][0]["img"])).get_data_dtype() != np.int16
    assert (work / "models" / "unet.pt").is_file()
    result = json.loads(output.read_text())
    assert [r["trained_on"] for r in result["rows"]] == ["clean", "shifted"]
    for row in result["rows"]:
        for split in ("val_clean", "val"):
            assert 0.0 <= row[split]["dice"] <= 1.0 and row[split]["num_images"] == 1, row
    command = shlex.split(result["train_command"])
    assert command[command.index("--train#trainer#max_epochs") + 1] == "1"
