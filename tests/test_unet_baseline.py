"""U-Net baseline: size of the configured network, tiny train -> unet.pt -> evaluation, and the comparison report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import BasicUNet
from PIL import Image

from scripts.report import render
from tests.utils import REPO_ROOT, TINY_NET, config_metaseg, run_bundle, save_tiny_metaseg, tiny_metaseg

TRAIN_UNET = "['configs/train.json','configs/train_unet.json']"
EVAL_UNET = "['configs/train.json','configs/train_unet.json','configs/evaluate_unet.json']"
TINY_FEATURES = [4, 4, 8, 8, 16, 4]
TINY_UNET = ["--network_def#features", str(TINY_FEATURES)]


def test_default_unet_is_the_buda_sized_basic_unet():
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / name) for name in ("train.json", "train_unet.json")])
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, BasicUNet)
    assert sum(p.numel() for p in net.parameters()) == 7_782_981  # docs/README.md, Buda et al.: ~7.76M
    assert sum(p.numel() for p in config_metaseg().parameters()) == 622_027  # docs/README.md
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 5, 64, 64)


@pytest.fixture(scope="module")
def unet_trained(tiny_dataset, tmp_path_factory) -> tuple[Path, list[str]]:
    """Tiny U-Net, 1 epoch on the tiny dataset, through ``run training``."""
    dataset_dir, splits = tiny_dataset
    work = tmp_path_factory.mktemp("unet")
    common = ["--dataset_dir", str(dataset_dir), "--splits_file", str(splits), "--ckpt_dir", str(work / "models")]
    common += TINY_UNET
    run_bundle(
        "run", "training", "--config_file", TRAIN_UNET, "--output_dir", str(work / "train"), *common,
        "--train#trainer#max_epochs", "1", "--train#dataloader#batch_size", "2",
    )  # fmt: skip
    return work, common


def test_unet_training_writes_weights_logs_and_wall_time(unet_trained):
    work, _ = unet_trained
    net = BasicUNet(2, 1, 5, features=TINY_FEATURES)
    net.load_state_dict(torch.load(work / "models" / "unet.pt", weights_only=True))
    record = json.loads((work / "models" / "unet_train_time.json").read_text())
    assert record["stages"]["unet"]["epochs"] == 1 and record["stages"]["unet"]["iterations"] == 2  # 3 images, batch 2
    assert record["total_seconds"] == pytest.approx(record["stages"]["unet"]["seconds"]) and record["total_seconds"] > 0
    assert list((work / "train" / "logs").glob("events.out.tfevents.*"))


def test_unet_evaluation_writes_the_metaseg_summary_format(unet_trained):
    work, common = unet_trained
    out = work / "evaluate"
    run_bundle("run", "evaluating", "--config_file", EVAL_UNET, "--output_dir", str(out), *common)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2
    assert set(summary["dice_per_class"]) == {"cortex", "subcortical_gm", "white_matter", "csf"}
    assert 0 <= summary["metrics"]["mean_dice"] <= 1 and 0 <= summary["metrics"]["mean_dice_with_background"] <= 1
    assert summary["seconds_per_image"] > 0 and "fit_steps" not in summary
    assert summary["num_parameters"] == sum(p.numel() for p in BasicUNet(2, 1, 5, features=TINY_FEATURES).parameters())
    assert (out / "mean_dice_raw.csv").is_file() and (out / "metrics.csv").is_file()


def test_unet_evaluation_without_weights_names_the_file_and_the_command(tiny_dataset, tmp_path):
    dataset_dir, splits = tiny_dataset
    proc = run_bundle(
        "run", "evaluating", "--config_file", EVAL_UNET, "--dataset_dir", str(dataset_dir), "--splits_file",
        str(splits), "--ckpt_dir", str(tmp_path / "none"), "--output_dir", str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert str(tmp_path / "none" / "unet.pt") in proc.stderr and "configs/train_unet.json" in proc.stderr


COMPARE = ["run", "compare", "--config_file", "configs/compare.json"]


@pytest.fixture(scope="module")
def compared(unet_trained, tiny_dataset, tmp_path_factory) -> tuple[Path, Path, str]:
    """``run compare`` on the tiny test split: the tiny U-Net above and random tiny MetaSeg weights."""
    work, _ = unet_trained
    dataset_dir, splits = tiny_dataset
    tmp = tmp_path_factory.mktemp("compare")
    save_tiny_metaseg(tmp / "models")
    tiny_metaseg = {k.lstrip("-"): int(v) for k, v in zip(TINY_NET[::2], TINY_NET[1::2])}
    (tmp / "tiny_metaseg.json").write_text(json.dumps({**tiny_metaseg, "fit_steps": 2}))
    tiny_unet = tmp / "tiny_unet.json"
    tiny_unet.write_text(json.dumps({"network_def#features": TINY_FEATURES}))
    (tmp / "one_step.json").write_text(json.dumps({"fit_steps": 1}))
    preset = {"name": "one_step", "config_files": [str(tmp / "one_step.json")], "ckpt_dir": str(tmp / "models")}
    preset.update(command="train it", note="the tiny network, fitted for one step")
    report, out = tmp / "report", tmp / "out"
    proc = run_bundle(
        *COMPARE, "--dataset_dir", str(dataset_dir), "--splits_file", str(splits),
        "--metaseg_ckpt_dir", str(tmp / "models"), "--baseline_ckpt_dir", str(work / "models"),
        "--metaseg_config_files", f"['configs/inference.json','configs/evaluate.json','{tmp / 'tiny_metaseg.json'}']",
        "--baseline_config_files", EVAL_UNET[:-1] + f",'{tiny_unet}']",
        "--report_dir", str(report), "--output_dir", str(out), "--fit_steps_list", "[1, 2]",
        "--num_overlay_images", "2", "--num_pca_images", "1", "--metaseg_train_seconds", "1812",
        "--presets", json.dumps([preset]),
    )  # fmt: skip
    return report, out, proc.stdout + proc.stderr


def test_compare_writes_the_report_and_its_pictures(compared, unet_trained):
    report, out, _ = compared
    text = (report / "results.md").read_text()
    result = json.loads((out / "comparison.json").read_text())
    n_metaseg = sum(p.numel() for p in tiny_metaseg().parameters())
    n_unet = sum(p.numel() for p in BasicUNet(2, 1, 5, features=TINY_FEATURES).parameters())
    assert result["metaseg"]["num_parameters"] == n_metaseg and result["baseline"]["num_parameters"] == n_unet
    assert f"| parameters | {n_metaseg:,} | {n_unet:,} |" in text
    change = f"{abs(100 * (n_metaseg / n_unet - 1)):.1f}% {'more' if n_metaseg > n_unet else 'fewer'}"
    assert f"{n_metaseg / n_unet:.4f} ({change})" in text
    for name in ("cortex", "subcortical_gm", "white_matter", "csf"):
        assert re.search(rf"\| Dice {name} \| \d\.\d{{3}} \| \d\.\d{{3}} \|", text), name
    assert f"{change} than the U-Net's {n_unet:,}." in text
    assert "| mean Dice including background |" in text and "| PSNR of the fitted reconstruction |" in text
    # training times: MetaSeg given in the config, U-Net read from the JSON its training run wrote
    assert "| training wall time | 30 min 12 s |" in text
    unet_time = json.loads((unet_trained[0] / "models" / "unet_train_time.json").read_text())["total_seconds"]
    assert result["baseline"]["train_seconds"] == pytest.approx(unet_time) and "unet_train_time.json" in text
    for key in ("metaseg", "baseline"):
        assert result[key]["seconds_per_image"] > 0 and result[key]["file_bytes"] > 0
        assert result[key]["memory"]["peak_rss_mib"] >= result[key]["memory"]["start_rss_mib"] > 0
    assert [r["fit_steps"] for r in result["fit_steps_sweep"]] == [1, 2]
    # the sweep runs the same inferer as the evaluation: at the evaluation's 2 fit steps, the same Dice and PSNR
    assert result["fit_steps_sweep"][1]["mean_dice"] == pytest.approx(result["metaseg"]["metrics"]["mean_dice"])
    assert result["fit_steps_sweep"][1]["psnr"] == pytest.approx(result["metaseg"]["metrics"]["psnr"], rel=1e-5)
    for name in ("results_overlays.png", "results_fit_steps.png", "results_pca.png"):
        assert f"]({name})" in text
        with Image.open(report / name) as png:
            assert png.format == "PNG" and png.width > 300 and png.height > 200
    assert (out / "metaseg" / "metrics_summary.json").is_file()
    assert (out / "baseline" / "metrics_summary.json").is_file()
    assert render(result) == text  # the report is a pure function of the saved measurements


def test_compare_tabulates_presets_beside_the_default(compared):
    """A preset (here: one fit step) is evaluated by its own configs, swept, tabulated and drawn with the default."""
    report, out, _ = compared
    text = (report / "results.md").read_text()
    result = json.loads((out / "comparison.json").read_text())
    (preset,) = result["presets"]
    assert preset["name"] == "one_step" and preset["fit_steps"] == 1 and preset["config_files"][0].endswith(".json")
    # its evaluation and its sweep at its own step count are the same fits
    sweep = {row["fit_steps"]: row for row in preset["fit_steps_sweep"]}
    assert sweep[1]["mean_dice"] == pytest.approx(preset["metrics"]["mean_dice"])
    # same weights, so its sweep is the default's: one fit per image kept at each step count equals separate fits
    assert preset["fit_steps_sweep"] == [
        {**row, "seconds_per_image": sweep[row["fit_steps"]]["seconds_per_image"]} for row in result["fit_steps_sweep"]
    ]
    assert "## Presets" in text and "- one_step: the tiny network, fitted for one step" in text
    assert "| preset | configs | parameters | 1 steps | 2 steps |" in text
    row = next(line for line in text.splitlines() if line.startswith("| one_step |"))
    assert f"| 1: **{preset['metrics']['mean_dice']:.3f}** (" in row and "`one_step.json`" in row
    assert next(line for line in text.splitlines() if line.startswith("| default | - |"))
    assert next(line for line in text.splitlines() if line.startswith("| U-Net | - |"))


def test_compare_without_preset_weights_names_them_before_any_work(unet_trained, tiny_dataset, tmp_path):
    work, _ = unet_trained
    dataset_dir, splits = tiny_dataset
    save_tiny_metaseg(tmp_path / "models")
    preset = {"name": "gone", "config_files": [], "ckpt_dir": str(tmp_path / "gone"), "command": "train the gone one"}
    proc = run_bundle(
        *COMPARE, "--dataset_dir", str(dataset_dir), "--splits_file", str(splits),
        "--metaseg_ckpt_dir", str(tmp_path / "models"), "--baseline_ckpt_dir", str(work / "models"),
        "--report_dir", str(tmp_path / "report"), "--output_dir", str(tmp_path / "out"),
        "--presets", json.dumps([preset]), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"MetaSeg preset 'gone' weights not found: {tmp_path / 'gone' / 'model.pt'}" in proc.stderr
    assert "train the gone one" in proc.stderr and not (tmp_path / "out").exists()


def test_compare_without_unet_weights_names_the_file_and_the_command(tiny_dataset, tmp_path):
    dataset_dir, splits = tiny_dataset
    proc = run_bundle(
        *COMPARE, "--dataset_dir", str(dataset_dir), "--splits_file", str(splits),
        "--baseline_ckpt_dir", str(tmp_path / "none"), "--report_dir", str(tmp_path / "report"),
        "--output_dir", str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"U-Net weights not found: {tmp_path / 'none' / 'unet.pt'}" in proc.stderr
    assert f'python -m monai.bundle run training --config_file "{TRAIN_UNET}"' in proc.stderr
    assert not (tmp_path / "report").exists()


def test_report_says_fewer_or_more_parameters():
    """The report's parameter comparison reads right whichever model is larger (the 3D MetaSeg is)."""
    from scripts.report import _fewer_or_more

    assert _fewer_or_more(83_846, 177_685) == "52.8% fewer"
    assert _fewer_or_more(198_859, 177_685) == "11.9% more"
