"""Multi-process configs under torchrun, 2 CPU processes (gloo): training in sync, evaluation equal to one process."""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.utils import REPO_ROOT, TINY_NET, data_args, run_bundle, save_tiny_metaseg, tiny_metaseg

# test-only: every rank saves its weights after meta-training and at the end, before the group is destroyed; the
# meta-training step of multi_gpu_train.json's run list is found by its content, not by its position
_RUN = json.loads((REPO_ROOT / "configs" / "multi_gpu_train.json").read_text())["run"]
SAVE_EACH_RANK = {
    f"run#{_RUN.index('$@train#trainer.run()')}": "$[@train#trainer.run(), "
    "torch.save(@network.state_dict(), @ckpt_dir + '/meta_rank' + str(dist.get_rank()) + '.pt')]",
    "finalize": [
        "$torch.save(@network.state_dict(), @ckpt_dir + '/final_rank' + str(dist.get_rank()) + '.pt')",
        "$dist.is_initialized() and dist.destroy_process_group()",
    ],
}


def test_two_process_training_keeps_replicas_identical(tiny_dataset, tmp_path):
    dataset_dir, splits = tiny_dataset
    extra = tmp_path / "save_each_rank.json"
    extra.write_text(json.dumps(SAVE_EACH_RANK))
    ckpt = tmp_path / "models"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"['configs/train.json','configs/multi_gpu_train.json','{extra}']",
        "--dataset_dir",
        str(dataset_dir),
        "--splits_file",
        str(splits),
        "--ckpt_dir",
        str(ckpt),
        "--output_dir",
        str(tmp_path / "eval"),
        *TINY_NET,
        "--train#trainer#max_epochs",
        "2",
        "--train#trainer#num_points",
        "256",
        "--val_interval",
        "1",
        "--finetune#trainer#max_epochs",
        "1",
        "--finetune#val_interval",
        "1",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    for stage in ("meta", "final"):  # after meta-training (before meta_model.pt is reloaded), after the head fine-tune
        states = [torch.load(ckpt / f"{stage}_rank{r}.pt", weights_only=True) for r in (0, 1)]
        assert states[0].keys() == states[1].keys()
        for name in states[0]:
            torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0, msg=f"{stage}: {name}")
    # rank 0 alone wrote the checkpoints; they load into the tiny network
    assert {p.name for p in ckpt.glob("*.pt")} == {
        "meta_model.pt",
        "model.pt",
        "checkpoint_meta.pt",
        "checkpoint_head.pt",
    } | {f"{s}_rank{r}.pt" for s in ("meta", "final") for r in (0, 1)}
    tiny_metaseg().load_state_dict(torch.load(ckpt / "model.pt", weights_only=True))
    # the head fine-tune ran (in sync) after meta-training: the final grid head differs from the meta-stage one
    meta = torch.load(ckpt / "meta_model.pt", weights_only=True)
    assert not torch.equal(states[0]["grid_head.0.weight"], meta["grid_head.0.weight"])


def _card_command(marker: str) -> list[str]:
    """The model card's ``torchrun`` command that names ``marker``, split as a shell would."""
    card = (REPO_ROOT / "docs" / "README.md").read_text().splitlines()
    lines = [line for line in card if line.startswith("torchrun") and marker in line]
    assert len(lines) == 1, f"docs/README.md: expected one torchrun command naming {marker}"
    return shlex.split(lines[0])


def _per_image_dice(output_dir: Path) -> dict[str, list[str]]:
    """``mean_dice_raw.csv`` (MONAI's ``MetricsSaver``: one row per image, one column per class), keyed by image."""
    with open(output_dir / "mean_dice_raw.csv") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return {row[0]: row[1:] for row in rows[1:]}


def test_two_process_evaluation_gives_the_per_image_metrics_of_one(tiny_dataset, tmp_path):
    """The model card's multi-GPU evaluation with N=2 CPU processes (gloo), 3 images split 2 + 1 between the ranks."""
    dataset_dir, splits = tiny_dataset
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    tiny = [*data_args(dataset_dir, splits, ckpt), "--split", "train", "--fit_steps", "5"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    cmd = _card_command("configs/multi_gpu_evaluate.json")
    assert "--nproc_per_node=2" in cmd  # the documented command as written, with N=2
    cmd[0] = str(Path(sys.executable).parent / cmd[0])  # the virtualenv's torchrun
    proc = subprocess.run(
        [*cmd, *tiny, "--output_dir", str(tmp_path / "two")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_bundle(
        "run",
        "evaluating",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        *tiny,
        "--output_dir",
        str(tmp_path / "one"),
    )

    one, two = _per_image_dice(tmp_path / "one"), _per_image_dice(tmp_path / "two")
    assert len(one) == 3 and two == one  # every image once, the same values to the last printed digit
    summaries = [json.loads((tmp_path / d / "metrics_summary.json").read_text()) for d in ("one", "two")]
    assert summaries[1]["num_images"] == summaries[0]["num_images"] == 3  # per-image times gathered from both ranks
    assert summaries[1]["metrics"] == pytest.approx(summaries[0]["metrics"], rel=1e-6)
    assert summaries[1]["dice_per_class"] == pytest.approx(summaries[0]["dice_per_class"], rel=1e-6)
    assert not list((tmp_path / "two").glob(".*"))  # no temporary files left by either rank
