"""MetaSeg's presets: the authors' published configuration (configs/paper.json, + train_paper.json for training) and
the few-step fast path (configs/fast.json, + train_fast.json)."""

from __future__ import annotations

import json

import torch
from monai.bundle import ConfigParser

from tests.utils import REPO_ROOT, data_args, run_bundle, save_tiny_metaseg, tiny_metaseg

PAPER_INFER = "['configs/inference.json','configs/paper.json']"
PAPER_TRAIN = ["configs/train.json", "configs/paper.json", "configs/train_paper.json"]
PAPER_EVAL = "['configs/inference.json','configs/evaluate.json','configs/paper.json']"
FAST_TRAIN = "['configs/train.json','configs/fast.json','configs/train_fast.json']"
FAST_EVAL = "['configs/inference.json','configs/evaluate.json','configs/fast.json']"


def _parser(files: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / f) for f in files])
    return parser


def test_paper_network_has_the_authors_size():
    """SIREN 2-128x5, head Linear(128,128)-LeakyReLU-Linear(128,5) on one pixel's features: 83,718 parameters."""
    net = _parser(["configs/inference.json", "configs/paper.json"]).get_parsed_content("network_def")
    count = sum(p.numel() for p in net.parameters())
    print(f"paper preset: {count:,} parameters")
    assert count == 83_718
    assert net.context_radius == 0 and len(net.head) == 3


def test_paper_training_stack_is_the_authors_method():
    parser = _parser(PAPER_TRAIN)
    loss = parser.get_parsed_content("loss")
    assert loss.class_reduction == "sum" and loss.gamma == 1.0
    assert parser.get_parsed_content("finetune#loss").class_reduction == "sum"
    trainer = parser["train"]["trainer"]
    assert trainer["inner_steps"] == 2 and trainer["inner_seg_weight"] == 1.0
    assert trainer["seg_points"] is None and trainer["grad_clip_norm"] is None
    # the one deviation, for CPU time: 4,096 random pixels per meta step and per training-time fit step (theirs: all)
    assert trainer["num_points"] == 4096 and parser["train"]["inferer"]["fit_points"] == 4096
    assert parser["train"]["head_lr"] == parser["train"]["optimizer"]["lr"] == 1e-4
    assert parser["intensity_augmentations"] == [] and parser["spatial_augmentations"] == []
    assert parser["finetune"]["optimizer"]["lr"] == 5e-5
    assert (parser["fit_steps"], parser["fit_points"], parser["fit_bf16"]) == (100, None, False)
    assert parser.get_parsed_content("ckpt_dir").endswith("/models/paper")


def test_weights_keep_the_normalization_they_were_trained_with():
    """The default and fast weights (release 0.17.0) were trained with the bias-corrected CSF-cut map; the paper
    preset's and the 3D weights with release 0.16's maps, which their configs pin in training and inference alike."""
    default = {"contrast_percentile": 35.0, "contrast_value": 0.762, "tissue_floor": 2.11, "bias_sigma": 8.0}
    paper = {"contrast_percentile": 25.0, "contrast_value": 0.595, "tissue_floor": 0.0, "bias_sigma": 0.0}
    stacks = [
        (["configs/inference.json"], default),
        (["configs/train.json", "configs/fast.json", "configs/train_fast.json"], default),
        (["configs/inference.json", "configs/paper.json"], paper),
        (PAPER_TRAIN, paper),
        (["configs/inference.json", "configs/3d.json"], {"contrast_percentile": None, "bias_sigma": 0.0}),
        (
            ["configs/train.json", "configs/3d.json", "configs/train_3d.json"],
            {"contrast_percentile": None, "bias_sigma": 0.0},
        ),
    ]
    for files, expected in stacks:
        norm = _parser(files)["normalize_intensity"]
        assert {k: norm[k] for k in expected} == expected, files


def test_paper_preset_trains_and_evaluates_end_to_end(tmp_path, tiny_dataset):
    dataset_dir, splits = tiny_dataset
    common = data_args(dataset_dir, splits, tmp_path / "models")
    run_bundle(
        "run",
        "training",
        "--config_file",
        json.dumps(PAPER_TRAIN).replace('"', "'"),
        "--output_dir",
        str(tmp_path / "train_eval"),
        *common,
        "--train#trainer#max_epochs",
        "1",
        "--val_interval",
        "1",
        "--finetune#trainer#max_epochs",
        "1",
        "--finetune#val_interval",
        "1",
        "--fit_steps",
        "2",
    )
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    tiny_metaseg(head_layers=1, context_radius=0, grid_head_channels=None).load_state_dict(
        state
    )  # the paper's head at test sizes
    out = tmp_path / "evaluate"
    run_bundle("run", "evaluating", "--config_file", PAPER_EVAL, "--output_dir", str(out), "--fit_steps", "2", *common)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and summary["fit_steps"] == 2


def test_fast_preset_fits_five_steps_from_the_default_initialization():
    inference = _parser(["configs/inference.json", "configs/fast.json"])
    inferer = inference.get_parsed_content("inferer")
    assert inferer.fit_steps == 5 and inference.get_parsed_content("ckpt_dir").endswith("/models/fast")
    assert (
        inferer.skip_background
        and not _parser(["configs/inference.json"]).get_parsed_content("inferer").skip_background
    )
    # same network as the default: only its decoder (the grid head) is trained again, on 5-step fits' features
    fast_net, default_net = (
        p.get_parsed_content("network_def") for p in (inference, _parser(["configs/inference.json"]))
    )
    assert fast_net.grid_head is not None
    assert {k: v.shape for k, v in fast_net.state_dict().items()} == {
        k: v.shape for k, v in default_net.state_dict().items()
    }
    training = _parser(["configs/train.json", "configs/fast.json", "configs/train_fast.json"])
    assert training.get_parsed_content("meta_model_path").endswith("/models/model.pt")
    assert training["training"] == "@finetune_head" and training.get_parsed_content("train#inferer").fit_steps == 5


def test_fast_preset_trains_only_the_head_and_evaluates_end_to_end(tmp_path, tiny_dataset):
    dataset_dir, splits = tiny_dataset
    init = torch.load(save_tiny_metaseg(tmp_path / "default"), weights_only=True)
    common = data_args(dataset_dir, splits, tmp_path / "models")
    run_bundle(
        "run", "training", "--config_file", FAST_TRAIN, "--output_dir", str(tmp_path / "train_eval"), *common,
        "--meta_model_path", str(tmp_path / "default" / "model.pt"),
        "--finetune#trainer#max_epochs", "1", "--finetune#val_interval", "1",
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "models").glob("*.pt")) == ["checkpoint_head.pt", "model.pt"]
    # model.pt is the best validation epoch (possibly the start), the checkpoint the trained network
    for name in ("model.pt", "checkpoint_head.pt"):
        state = torch.load(tmp_path / "models" / name, weights_only=False)
        state = state.get("model", state)
        assert all(torch.equal(state[k], v) for k, v in init.items() if not k.startswith("grid_head.")), name
    assert any(not torch.equal(state[k], v) for k, v in init.items() if k.startswith("grid_head."))
    out = tmp_path / "evaluate"
    run_bundle("run", "evaluating", "--config_file", FAST_EVAL, "--output_dir", str(out), *common)
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and summary["fit_steps"] == 5
