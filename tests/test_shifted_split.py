"""The out-of-distribution ``test_shifted`` split: written by the generator, evaluated by ``run evaluating --split``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from scripts.demo_data import prepare_demo_data
from tests.utils import data_args, run_bundle, save_tiny_metaseg

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
