"""End to end through ``python -m monai.bundle``: training -> model.pt -> inference NIfTI -> evaluation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.utils import REPO_ROOT, config_metaseg, data_args, run_bundle, tiny_metaseg

INFER = "['configs/inference.json']"
EVAL = "['configs/inference.json','configs/evaluate.json']"


@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory) -> tuple[Path, list[str]]:
    """Run tiny meta-training + head fine-tuning once; return the checkpoint dir and the shared overrides."""
    dataset_dir, splits = tiny_dataset
    work = tmp_path_factory.mktemp("bundle")
    common = data_args(dataset_dir, splits, work / "models")
    run_bundle(
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        "--output_dir",
        str(work / "train_eval"),
        *common,
        "--train#trainer#max_epochs",
        "2",
        "--val_interval",
        "1",
        "--train#trainer#num_points",
        "512",
        "--finetune#trainer#max_epochs",
        "2",
        "--finetune#val_interval",
        "1",
    )
    return work, common


def test_training_writes_checkpoints_and_logs(trained):
    work, _ = trained
    state = torch.load(work / "models" / "model.pt", weights_only=True)
    net = tiny_metaseg()
    net.load_state_dict(state)  # a plain state_dict of network_def
    assert (work / "models" / "meta_model.pt").is_file()
    assert list((work / "train_eval" / "logs").glob("events.out.tfevents.*"))


def test_inference_writes_one_label_per_input_with_input_geometry(trained, tiny_dataset):
    work, common = trained
    dataset_dir, _ = tiny_dataset
    out = work / "infer"
    run_bundle("run", "inference", "--config_file", INFER, "--output_dir", str(out), "--fit_steps", "3", *common)
    inputs = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))
    test_subjects = json.loads((dataset_dir / "demo_splits.json").read_text())["test"]
    assert len(test_subjects) == 2
    for entry in test_subjects:
        src = nib.load(dataset_dir / entry["img"])
        subject = Path(entry["img"]).parent.name
        seg = nib.load(out / subject / "slice_norm_seg.nii.gz")
        assert seg.shape == src.shape
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        values = np.unique(np.asarray(seg.dataobj))
        assert values.min() >= 0 and values.max() <= 4
    assert len(list(out.glob("*/*_seg.nii.gz"))) == 2 and len(inputs) == 9  # 7 + 2 test_shifted subjects


def test_inference_on_explicit_datalist(trained, tiny_dataset):
    work, common = trained
    dataset_dir, _ = tiny_dataset
    image = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0]
    out = work / "infer_list"
    run_bundle(
        "run", "inference", "--config_file", INFER, "--output_dir", str(out), "--datalist", f"['{image}']", *common
    )
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.nii.gz")] == [
        f"{image.parent.name}/slice_norm_seg.nii.gz"
    ]


def test_evaluation_writes_metrics(trained):
    work, common = trained
    out = work / "evaluate"
    proc = run_bundle("run", "evaluating", "--config_file", EVAL, "--output_dir", str(out), "--fit_steps", "3", *common)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2
    assert set(summary["dice_per_class"]) == {"cortex", "subcortical_gm", "white_matter", "csf"}
    assert 0.0 <= summary["metrics"]["mean_dice"] <= 1.0
    assert 0.0 <= summary["metrics"]["mean_dice_with_background"] <= 1.0
    assert summary["metrics"]["psnr"] > 0
    assert summary["fit_steps"] == 3 and summary["seconds_per_image"] > 0
    assert (out / "mean_dice_raw.csv").is_file() and (out / "metrics.csv").is_file()
    assert "mean_dice" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def default_demo(tmp_path_factory) -> Path:
    """The default demo dataset, generated through the bundle's ``prepare_data`` run id."""
    demo = tmp_path_factory.mktemp("default") / "demo"
    run_bundle("run", "prepare_data", "--config_file", "configs/train.json", "--demo_dir", str(demo))
    return demo


def test_prepare_data_run_id_generates_the_demo_layout(default_demo):
    splits = json.loads((default_demo / "demo_splits.json").read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 80, "val": 20, "test": 20, "test_shifted": 20}
    assert (default_demo / "OASIS_OAS1_0001_MR1" / "slice_norm.nii.gz").is_file()


def test_training_seed_leaves_the_demo_data_alone(default_demo):
    """``--seed`` draws a run's randomness; the demo data come from ``demo_seed`` and are not regenerated."""
    manifest = default_demo / "demo_manifest.json"
    before = manifest.read_bytes(), manifest.stat().st_mtime_ns
    run_bundle(
        "run", "prepare_data", "--config_file", "configs/train.json", "--demo_dir", str(default_demo), "--seed", "1"
    )
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == before
    assert json.loads(before[0])["params"]["seed"] == 0


def test_shipped_model_keeps_its_measured_dice(default_demo, tmp_path):
    """models/model.pt on the demo test split (generator 2.0): 0.888 mean foreground Dice (docs/results.md), >= 0.86."""
    state = torch.load(REPO_ROOT / "models" / "model.pt", weights_only=True)
    config_metaseg().load_state_dict(state)
    out = tmp_path / "eval"
    run_bundle(
        "run",
        "evaluating",
        "--config_file",
        EVAL,
        "--dataset_dir",
        str(default_demo),
        "--splits_file",
        str(default_demo / "demo_splits.json"),
        "--output_dir",
        str(out),
    )
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 20
    assert summary["metrics"]["mean_dice"] >= 0.86, summary


@pytest.mark.parametrize("config,workflow_type", [("configs/train.json", "train"), ("configs/inference.json", "infer")])
def test_configs_have_the_model_zoo_workflow_properties(config, workflow_type, tiny_dataset, tmp_path):
    from monai.bundle import ConfigWorkflow

    dataset_dir, splits = tiny_dataset
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / config),
        meta_file=str(REPO_ROOT / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        logging_file=None,
        bundle_root=str(REPO_ROOT),
        dataset_dir=str(dataset_dir),
        splits_file=str(splits),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
