"""3D MetaSeg end to end through ``python -m monai.bundle`` on tiny volumes: training -> inference -> evaluation."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from tests.utils import REPO_ROOT, TINY_NET, data_args, run_bundle, save_tiny_metaseg

TRAIN_3D = "['configs/train.json','configs/3d.json','configs/train_3d.json']"
INFER_3D = "['configs/inference.json','configs/3d.json']"
EVAL_3D = "['configs/inference.json','configs/evaluate.json','configs/3d.json','configs/evaluate_3d.json']"
INFER_2D = "['configs/inference.json']"
SHAPE = (24, 28, 26)  # tiny stand-in for neurite-oasis' 160x192x224 aligned volumes
AFFINE = np.array([[-1.0, 0, 0, 12], [0, 0, 1, -13], [0, -1, 0, 14], [0, 0, 0, 1]])
TINY_3D = ["--image_size", "[12,12,14]", "--fit_points", "256"]


def _subject(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Nested ellipsoids (WM inside cortex, deep GM and a ventricle) with noise, in a zero background."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    centre = rng.uniform(-0.05, 0.05, (3, 1, 1, 1))
    r = np.sqrt((((grid - centre) / rng.uniform(0.7, 0.8, (3, 1, 1, 1))) ** 2).sum(0))
    seg = np.zeros(SHAPE, np.uint8)
    seg[r < 1.0] = 1
    seg[r < 0.75] = 3
    seg[(r < 0.4) & (grid[0] > 0)] = 2
    seg[r < 0.2] = 4
    img = np.choose(seg, [0.0, 0.55, 0.7, 0.95, 0.15]) + 0.02 * rng.standard_normal(SHAPE) * (seg > 0)
    return np.clip(img, 0, 1).astype(np.float32), seg


@pytest.fixture(scope="module")
def tiny_volumes(tmp_path_factory) -> tuple[Path, Path]:
    """Six subjects in the neurite-oasis 3D layout (``aligned_norm``/``aligned_seg4``), splits by folder name."""
    root = tmp_path_factory.mktemp("oasis3d")
    rng = np.random.default_rng(0)
    names = [f"OASIS_OAS1_{i:04d}_MR1" for i in range(1, 7)]
    for name in names:
        (root / name).mkdir()
        img, seg = _subject(rng)
        nib.save(nib.Nifti1Image(img, AFFINE), str(root / name / "aligned_norm.nii.gz"))
        nib.save(nib.Nifti1Image(seg, AFFINE), str(root / name / "aligned_seg4.nii.gz"))
        nib.save(nib.Nifti1Image(img[:, :, 13:14], AFFINE), str(root / name / "slice_norm.nii.gz"))
        nib.save(nib.Nifti1Image(seg[:, :, 13:14], AFFINE), str(root / name / "slice_seg4.nii.gz"))
    splits = root / "splits.json"
    splits.write_text(json.dumps({"train": names[:3], "val": names[3:4], "test": names[4:], "test_shifted": names[5:]}))
    return root, splits


@pytest.fixture(scope="module")
def trained_3d(tiny_volumes, tmp_path_factory) -> tuple[Path, list[str]]:
    """Tiny 3D meta-training + head fine-tuning: the 2D configs overridden by ``3d.json`` and ``train_3d.json``."""
    root, splits = tiny_volumes
    work = tmp_path_factory.mktemp("bundle3d")
    common = data_args(root, splits, work / "models") + TINY_3D
    run_bundle(
        "run",
        "training",
        "--config_file",
        TRAIN_3D,
        "--output_dir",
        str(work / "train_eval"),
        *common,
        "--train#trainer#max_epochs",
        "1",
        "--val_interval",
        "1",
        "--train#trainer#num_points",
        "256",
        "--train#trainer#inner_points",
        "128",
        "--finetune#trainer#max_epochs",
        "1",
        "--finetune#val_interval",
        "1",
        "--finetune#trainer#num_points",
        "256",
        "--fit_steps",
        "2",
    )
    return work, common


def test_3d_training_writes_a_3d_model(trained_3d):
    import torch

    work, _ = trained_3d
    state = torch.load(work / "models" / "model.pt", weights_only=True)
    assert state["trunk.0.weight"].shape == (16, 3)  # spatial_dims=3: three input coordinates


def test_shipped_3d_weights_load_into_the_3d_config_network():
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / f) for f in ("inference.json", "3d.json")])
    net = parser.get_parsed_content("network_def")
    state = torch.load(REPO_ROOT / "models" / "3d" / "model.pt", weights_only=True)
    net.load_state_dict(state)  # strict: every tensor present, every shape equal
    assert net.spatial_dims == 3 and state["trunk.0.weight"].shape == (128, 3)


def test_3d_inference_keeps_input_shape_and_affine(trained_3d, tiny_volumes):
    work, common = trained_3d
    root, _ = tiny_volumes
    out = work / "infer"
    run_bundle("run", "inference", "--config_file", INFER_3D, "--output_dir", str(out), "--fit_steps", "2", *common)
    for name in ("OASIS_OAS1_0005_MR1", "OASIS_OAS1_0006_MR1"):
        src = nib.load(root / name / "aligned_norm.nii.gz")
        seg = nib.load(out / name / "aligned_norm_seg.nii.gz")
        assert seg.shape == src.shape == SHAPE
        np.testing.assert_allclose(seg.affine, src.affine, atol=1e-5)
        values = np.asarray(seg.dataobj)
        assert values.min() >= 0 and values.max() <= 4
        assert not values[np.asarray(src.dataobj) == 0][:1].any() or values.max() > 0


def test_3d_evaluation_writes_metrics(trained_3d):
    work, common = trained_3d
    out = work / "evaluate"
    run_bundle("run", "evaluating", "--config_file", EVAL_3D, "--output_dir", str(out), "--fit_steps", "2", *common)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2
    assert set(summary["dice_per_class"]) == {"cortex", "subcortical_gm", "white_matter", "csf"}
    assert 0.0 <= summary["metrics"]["mean_dice"] <= 1.0


def test_2d_and_3d_switch_by_config_file_refuses_the_wrong_input(trained_3d, tiny_volumes, tmp_path):
    """A 3D volume given to the 2D bundle, a 2D slice to the 3D bundle and 3D weights to the 2D bundle are refused."""
    work, common = trained_3d
    root, splits = tiny_volumes
    volume = root / "OASIS_OAS1_0005_MR1" / "aligned_norm.nii.gz"
    slice_2d = root / "OASIS_OAS1_0005_MR1" / "slice_norm.nii.gz"
    models_2d = save_tiny_metaseg(tmp_path / "models_2d").parent
    cases = (
        (INFER_2D, volume, data_args(root, splits, models_2d), [str(volume), "spatial_dims=2"]),
        (INFER_3D, slice_2d, common, [str(slice_2d), "spatial_dims=3", "is a 2D slice"]),
        # the 3D model folder with the 2D settings: its weights are refused, naming what differs
        (
            INFER_2D,
            slice_2d,
            data_args(root, splits, work / "models"),
            ["trained with spatial_dims=3", "has spatial_dims=2"],
        ),
    )
    for i, (config, image, args, phrases) in enumerate(cases):
        out = tmp_path / f"wrong{i}"  # a refused run writes failures.csv, which a re-run into its folder refuses
        proc = run_bundle(
            "run",
            "inference",
            "--config_file",
            config,
            "--output_dir",
            str(out),
            "--datalist",
            f"['{image}']",
            *args,
            check=False,
        )
        assert proc.returncode != 0
        assert all(p in proc.stderr for p in phrases), proc.stderr[-2000:]
        assert not list(out.rglob("*.nii.gz"))


SEGRESNET = "['configs/train.json','configs/train_unet.json','configs/3d.json','configs/train_segresnet.json']"
EVAL_SEGRESNET = str(
    [
        "configs/train.json",
        "configs/train_unet.json",
        "configs/3d.json",
        "configs/train_segresnet.json",
        "configs/evaluate_unet.json",
        "configs/evaluate_segresnet.json",
    ]
)


SEGRESNET_TINY = ["--image_size", "[16,16,20]", "--network_def#init_filters", "8"]


@pytest.fixture(scope="module")
def segresnet_trained(tiny_volumes, tmp_path_factory) -> tuple[Path, list[str]]:
    """One epoch of the SegResNet baseline on the tiny volumes -> ``<work>/models/segresnet.pt``."""
    root, splits = tiny_volumes
    work = tmp_path_factory.mktemp("segresnet")
    args = ["--dataset_dir", str(root), "--splits_file", str(splits), "--ckpt_dir", str(work / "models")]
    args += SEGRESNET_TINY
    run_bundle(
        "run",
        "training",
        "--config_file",
        SEGRESNET,
        "--output_dir",
        str(work / "train"),
        *args,
        "--train#trainer#max_epochs",
        "1",
        "--val_interval",
        "1",
    )
    return work, args


def test_segresnet_baseline_trains_and_evaluates_on_the_same_volumes(segresnet_trained):
    work, args = segresnet_trained
    assert (work / "models" / "segresnet.pt").is_file()
    out = work / "eval"
    run_bundle("run", "evaluating", "--config_file", EVAL_SEGRESNET, "--output_dir", str(out), *args)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and 0.0 <= summary["metrics"]["mean_dice"] <= 1.0


def test_3d_compare_reports_metaseg_against_segresnet(trained_3d, segresnet_trained, tiny_volumes, tmp_path):
    """``run compare`` with ``compare_3d.json``: both tiny 3D models on the same volumes, report and pictures."""
    root, splits = tiny_volumes
    tiny = {k.lstrip("-"): int(v) for k, v in zip(TINY_NET[::2], TINY_NET[1::2])}
    (tmp_path / "metaseg.json").write_text(json.dumps({**tiny, "image_size": [16, 16, 20], "fit_points": 256}))
    (tmp_path / "segresnet.json").write_text(json.dumps({"image_size": [16, 16, 20], "network_def#init_filters": 8}))
    metaseg_files = [*ast.literal_eval(EVAL_3D), str(tmp_path / "metaseg.json")]
    baseline_files = [*ast.literal_eval(EVAL_SEGRESNET), str(tmp_path / "segresnet.json")]
    report, out = tmp_path / "report", tmp_path / "out"
    run_bundle(
        "run", "compare", "--config_file", "['configs/compare.json','configs/compare_3d.json']",
        "--dataset_dir", str(root), "--splits_file", str(splits), "--metaseg_ckpt_dir", str(trained_3d[0] / "models"),
        "--baseline_ckpt_dir", str(segresnet_trained[0] / "models"), "--metaseg_config_files", str(metaseg_files),
        "--baseline_config_files", str(baseline_files), "--report_dir", str(report), "--output_dir", str(out),
        "--fit_steps_list", "[1, 2]", "--sweep_images", "1", "--num_overlay_images", "2", "--num_pca_images", "1",
    )  # fmt: skip
    result = json.loads((out / "comparison.json").read_text())
    assert result["baseline_name"] == "SegResNet" and result["image_shape"] == [16, 16, 20]
    assert result["fit_steps_sweep_images"] == 1 and [r["fit_steps"] for r in result["fit_steps_sweep"]] == [1, 2]
    assert result["num_images"] == 2 and 0.0 <= result["baseline"]["metrics"]["mean_dice"] <= 1.0
    assert list(result["extra_splits"]) == ["test_shifted"]  # compare_3d.json keeps compare.json's shifted split
    text = (report / "results_3d.md").read_text()
    assert "| `test_shifted` | 1 |" in text
    assert text.startswith("# MetaSeg vs SegResNet: results") and "configs/compare_3d.json" in text
    assert text.count("| | MetaSeg | SegResNet |") == 2 and "parameter ratio MetaSeg / SegResNet" in text
    assert "16x16x20 input grid" in text and "seconds per volume" in text and "segresnet_train_time.json" in text
    for name in ("results_3d_overlays.png", "results_3d_fit_steps.png", "results_3d_pca.png"):
        assert f"]({name})" in text
        with Image.open(report / name) as png:
            assert png.format == "PNG" and png.height > 16


def test_subject_folder_names_stand_for_the_aligned_volumes_in_3d(tiny_volumes):
    from scripts.data import load_datalist

    root, splits = tiny_volumes
    items = load_datalist(str(root), str(splits), "val", spatial_dims=3)
    assert items == [
        {
            "image": str(root / "OASIS_OAS1_0004_MR1" / "aligned_norm.nii.gz"),
            "label": str(root / "OASIS_OAS1_0004_MR1" / "aligned_seg4.nii.gz"),
        }
    ]
    assert load_datalist(str(root), str(splits), "val")[0]["image"].endswith("slice_norm.nii.gz")
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        load_datalist(str(root), str(splits), "val", spatial_dims=4)


def test_inner_points_must_be_positive():
    import torch
    from monai.losses import FocalLoss

    from scripts.network import MetaSegINR
    from scripts.trainer import MetaSegTrainer

    net = MetaSegINR(spatial_dims=3, hidden_channels=8, num_sine_layers=1, head_channels=8)
    with pytest.raises(ValueError, match="inner_points"):
        MetaSegTrainer(
            "cpu",
            1,
            [],
            net,
            torch.optim.Adam(net.parameters()),
            FocalLoss(use_softmax=True, to_onehot_y=True),
            inner_points=0,
        )


@pytest.mark.parametrize("config", [TRAIN_3D, SEGRESNET])
def test_3d_training_augments_after_the_cached_crop_and_resize(config):
    """3D training pipelines crop and resize first (cached once per volume), then augment: the random transforms
    act on the 80x80x100 grid each epoch, not on the whole 160x192x224 volume before the crop."""
    from monai.bundle import ConfigParser
    from monai.transforms import Randomizable

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / f) for f in ast.literal_eval(config)])
    transforms = parser.get_parsed_content("train#dataset#transform").transforms
    first_random = next(i for i, t in enumerate(transforms) if isinstance(t, Randomizable))
    cached = [type(t).__name__ for t in transforms[:first_random]]
    assert cached[-2:] == ["CropForegroundd", "Resized"] and "NormalizeBrainIntensityd" in cached
    augmented = {type(t).__name__ for t in transforms[first_random:]}
    assert {"RandAdjustContrastd", "RandBiasFieldd", "RandGaussianNoised", "RandRotated", "RandFlipd"} <= augmented
