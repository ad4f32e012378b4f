"""configs/multi_gpu_train.json under torchrun: 2 CPU processes (gloo) end meta-training + head fine-tuning in sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.utils import REPO_ROOT, TINY_NET, tiny_metaseg

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
    # the head fine-tune ran (in sync) after meta-training: the final head differs from the meta-learned one
    meta = torch.load(ckpt / "meta_model.pt", weights_only=True)
    assert not torch.equal(states[0]["head.2.weight"], meta["head.2.weight"])
