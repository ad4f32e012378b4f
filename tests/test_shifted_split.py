"""The out-of-distribution ``test_shifted`` split: written by the generator, evaluated by ``run evaluating --split``."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.networks.nets import BasicUNet

from scripts.demo_data import SHIFT_PARTS, generate_subject, prepare_demo_data
from tests.utils import REPO_ROOT, TINY_NET, TINY_UNET_FEATURES, bundle_env, data_args, run_bundle, save_tiny_metaseg

EVAL = "['configs/inference.json','configs/evaluate.json']"


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
    torch.manual_seed(0)
    unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=5, features=tuple(TINY_UNET_FEATURES))
    torch.save(unet.state_dict(), ckpt / "unet.pt")
    cwd, output = tmp_path / "cwd", tmp_path / "out" / "shift.json"
    cwd.mkdir()
    sets = [f"--set={k.lstrip('-')}={v}" for k, v in zip(TINY_NET[::2], TINY_NET[1::2])]
    args = ["--num_images", "1", "--ckpt_dir", str(ckpt), "--output", str(output), *sets, "--set", "fit_steps=2"]
    args += ["--set", f"network_def#features={json.dumps(TINY_UNET_FEATURES)}"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.shift_sources", *args],
        cwd=cwd,
        env=bundle_env(PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
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
