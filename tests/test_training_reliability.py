"""Training survives a SIGKILL (``--resume true`` continues exactly), and fixed seeds give identical results."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.utils import REPO_ROOT, bundle_env, data_args, run_bundle, run_inference_on_files

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes

META_EPOCHS, HEAD_EPOCHS, NUM_TRAIN = 12, 8, 3


def _training_args(
    tiny_dataset: tuple[Path, Path], work: Path, meta_epochs: int = META_EPOCHS, head_epochs: int = HEAD_EPOCHS
) -> list[str]:
    dataset_dir, splits = tiny_dataset
    return [
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        *data_args(dataset_dir, splits, work / "models"),
        "--output_dir",
        str(work / "eval"),
        "--train#trainer#max_epochs",
        str(meta_epochs),
        "--val_interval",
        "2",
        "--train#trainer#num_points",
        "512",
        "--finetune#trainer#max_epochs",
        str(head_epochs),
        "--finetune#val_interval",
        "2",
        "--finetune#trainer#refit_interval",  # a new fit of every image each epoch: resumed runs refit alike
        "1",
        "--checkpoint_interval",
        "1",
        "--fit_steps",  # validation fits: tiny
        "2",
    ]


def _train(tiny_dataset: tuple[Path, Path], work: Path, *extra: str, **epochs: int) -> str:
    proc = run_bundle(*_training_args(tiny_dataset, work, **epochs), *extra)
    return proc.stdout + proc.stderr


def _kill_when(tiny_dataset: tuple[Path, Path], work: Path, checkpoint: str, timeout: float = 300.0) -> str:
    """Start training, SIGKILL it as soon as ``models/<checkpoint>`` appears; return its log."""
    log = work / "killed.log"
    env = bundle_env(PYTHONUNBUFFERED="1")  # the thread count of the reference and resumed runs
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "monai.bundle", *_training_args(tiny_dataset, work)],
            cwd=REPO_ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
        target, start = work / "models" / checkpoint, time.monotonic()
        while not target.exists() and proc.poll() is None and time.monotonic() - start < timeout:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{log.read_text()[-3000:]}"
    return log.read_text()


def _trainer_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["trainer"]


def _checkpoint_epoch(state: dict) -> int:
    """The epoch a training checkpoint was saved after (ignite stores the iteration and the epoch length)."""
    return state["iteration"] // state["epoch_length"]


def _assert_same_state(a: Path, b: Path) -> None:
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{a.name} differs at {k}"


def _epochs_completed(log: str, engine: str) -> list[int]:
    return [int(e) for e in re.findall(rf"{engine} - INFO - Epoch\[(\d+)\] Complete", log)]


def _saved_epochs(log: str, engine: str) -> list[int]:
    return [int(e) for e in re.findall(rf"{engine} - INFO - Saved checkpoint at epoch: (\d+)", log)]


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory) -> Path:
    """One uninterrupted tiny training run: its folder."""
    work = tmp_path_factory.mktemp("reference")
    _train(tiny_dataset, work)
    return work


def test_uninterrupted_run_saves_full_checkpoints(reference):
    models = reference / "models"
    meta, head = _trainer_state(models / "checkpoint_meta.pt"), _trainer_state(models / "checkpoint_head.pt")
    assert (meta["iteration"], meta["epoch_length"]) == (META_EPOCHS * NUM_TRAIN, NUM_TRAIN)
    assert head["iteration"] == HEAD_EPOCHS * NUM_TRAIN
    full = torch.load(models / "checkpoint_meta.pt", weights_only=True)
    assert set(full) == {"model", "optimizer", "rng", "best_model_saver", "trainer"}
    assert not [p.name for p in models.iterdir() if p.name.startswith(".") or "tmp" in p.name]


def test_training_is_deterministic(reference, tiny_dataset, tmp_path):
    _train(tiny_dataset, tmp_path)
    for name in ("meta_model.pt", "model.pt"):
        _assert_same_state(reference / "models" / name, tmp_path / "models" / name)


def test_inference_is_deterministic(reference, tiny_dataset, tmp_path):
    dataset_dir, _ = tiny_dataset
    image = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0]
    labels = []
    for run in ("a", "b"):
        out = tmp_path / run
        run_inference_on_files([image], out, reference / "models")
        labels.append(np.asarray(nib.load(out / image.parent.name / "slice_norm_seg.nii.gz").dataobj))
    assert np.array_equal(labels[0], labels[1])


def test_resume_after_kill_in_meta_stage(reference, tiny_dataset, tmp_path):
    killed = _kill_when(tiny_dataset, tmp_path, "checkpoint_meta.pt")
    state = _trainer_state(tmp_path / "models" / "checkpoint_meta.pt")  # complete although the process was killed
    saved = [_checkpoint_epoch(state)]  # the kill may come before the saver's log line, so read the file itself
    assert 0 < state["iteration"] == saved[-1] * NUM_TRAIN < META_EPOCHS * NUM_TRAIN
    assert _saved_epochs(killed, "MetaSegTrainer") in ([], saved)
    # work lost: the epoch in progress at the kill, at most one checkpoint interval (1 epoch)
    assert max(_epochs_completed(killed, "MetaSegTrainer"), default=0) <= saved[-1]

    resumed = _train(tiny_dataset, tmp_path, "--resume", "true")
    assert f"Resumed from {tmp_path / 'models' / 'checkpoint_meta.pt'} at epoch {saved[-1]}," in resumed
    assert _epochs_completed(resumed, "MetaSegTrainer") == list(range(saved[-1] + 1, META_EPOCHS + 1))
    assert _trainer_state(tmp_path / "models" / "checkpoint_meta.pt")["iteration"] == META_EPOCHS * NUM_TRAIN
    assert _trainer_state(tmp_path / "models" / "checkpoint_head.pt")["iteration"] == HEAD_EPOCHS * NUM_TRAIN
    # same RNG streams and optimizer state: the result equals the uninterrupted run's
    for name in ("meta_model.pt", "model.pt"):
        _assert_same_state(reference / "models" / name, tmp_path / "models" / name)


def test_resume_after_kill_in_head_stage_skips_the_complete_meta_stage(reference, tiny_dataset, tmp_path):
    killed = _kill_when(tiny_dataset, tmp_path, "checkpoint_head.pt")
    saved = [_checkpoint_epoch(_trainer_state(tmp_path / "models" / "checkpoint_head.pt"))]
    assert 0 < saved[-1] < HEAD_EPOCHS and _saved_epochs(killed, "HeadFineTuneTrainer") in ([], saved)
    meta_before = (tmp_path / "models" / "meta_model.pt").read_bytes()

    resumed = _train(tiny_dataset, tmp_path, "--resume", "true")
    total = META_EPOCHS * NUM_TRAIN
    assert f"iteration {total} of {total}: this stage is complete." in resumed
    assert _epochs_completed(resumed, "MetaSegTrainer") == []
    assert _epochs_completed(resumed, "HeadFineTuneTrainer") == list(range(saved[-1] + 1, HEAD_EPOCHS + 1))
    assert (tmp_path / "models" / "meta_model.pt").read_bytes() == meta_before
    assert _trainer_state(tmp_path / "models" / "checkpoint_head.pt")["iteration"] == HEAD_EPOCHS * NUM_TRAIN
    _assert_same_state(reference / "models" / "model.pt", tmp_path / "models" / "model.pt")


def test_fresh_run_discards_an_earlier_runs_checkpoints(reference, tiny_dataset, tmp_path):
    """Without --resume a new run starts from scratch, and a later --resume cannot pick up the old checkpoints."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("checkpoint_meta.pt", "checkpoint_head.pt"):
        (models / name).write_bytes((reference / "models" / name).read_bytes())
    log = _train(tiny_dataset, tmp_path, meta_epochs=2, head_epochs=1)
    assert "Starting afresh: deleting the earlier run's checkpoint" in log
    assert _epochs_completed(log, "MetaSegTrainer") == [1, 2]
    assert _trainer_state(models / "checkpoint_meta.pt")["iteration"] == 2 * NUM_TRAIN
    assert _trainer_state(models / "checkpoint_head.pt")["iteration"] == NUM_TRAIN


def test_resuming_a_finished_stage_keeps_its_time_record(tmp_path):
    """``--resume true`` on a stage that had finished runs no iteration and must not rewrite its record (it wrote
    "meta-training took 0.03 s" before)."""
    from ignite.engine import Engine, Events

    from scripts.handlers import TrainingTimeRecorder

    path = tmp_path / "model_train_time.json"
    first = Engine(lambda engine, batch: None)
    TrainingTimeRecorder(str(path), stage="meta_training").attach(first)
    first.run(range(4), max_epochs=2)
    before = path.read_text()
    assert json.loads(before)["stages"]["meta_training"]["iterations"] == 8

    resumed = Engine(lambda engine, batch: None)

    @resumed.on(Events.STARTED)
    def restore_finished_state(engine):  # what the resume handler does with a finished stage's checkpoint
        engine.state.epoch, engine.state.iteration = 2, 8

    TrainingTimeRecorder(str(path), stage="meta_training").attach(resumed)
    resumed.run(range(4), max_epochs=2)
    assert path.read_text() == before


@pytest.mark.parametrize(
    "run_id, config, weights, extra",
    [
        ("training", "configs/train.json", "model.pt", []),
        ("training", "['configs/train.json','configs/train_unet.json']", "unet.pt", []),
        # --resume true with no checkpoint of an interrupted run would train from scratch: it replaced model.pt
        ("training", "configs/train.json", "model.pt", ["--resume", "true"]),
        ("finetune_head", "configs/train.json", "model.pt", ["--resume", "true"]),
    ],
)
def test_training_never_replaces_weights_by_surprise(tiny_dataset, tmp_path, run_id, config, weights, extra):
    """A training run into a folder that holds weights (the default ``models/`` holds the shipped ones) stops before
    any work, names the folder, the file and the ways on, and leaves the folder as it was; ``--resume true`` counts
    only with a checkpoint to resume."""
    dataset_dir, splits = tiny_dataset
    models = tmp_path / "models"
    models.mkdir()
    (models / weights).write_bytes(b"the shipped weights")
    if run_id == "finetune_head":
        (models / "meta_model.pt").write_bytes(b"meta weights")  # what the head fine-tune starts from
    before = sorted(p.name for p in models.iterdir())
    paths = ["--dataset_dir", str(dataset_dir), "--splits_file", str(splits), "--ckpt_dir", str(models)]
    proc = run_bundle(
        "run", run_id, "--config_file", config, *paths, "--output_dir", str(tmp_path / "eval"), *extra, check=False
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"ckpt_dir {models} already holds {weights}" in log, log[-3000:]
    assert "--replace_weights true" in log and "--ckpt_dir" in log
    if extra:
        assert "--resume true found no checkpoint of an interrupted run" in log
    assert "Epoch[1]" not in log  # no work done
    assert sorted(p.name for p in models.iterdir()) == before
    assert (models / weights).read_bytes() == b"the shipped weights"


def test_weights_guard_allows_resume_replace_and_new_folders(tmp_path):
    from scripts.checkpoint import check_weights_replaceable

    (tmp_path / "meta_model.pt").write_bytes(b"x")
    check_weights_replaceable(str(tmp_path), ["model.pt"])  # finetune_head reads meta_model.pt, writes model.pt
    check_weights_replaceable(str(tmp_path / "new"), ["meta_model.pt", "model.pt"])
    check_weights_replaceable(str(tmp_path), ["meta_model.pt"], replace="true")
    with pytest.raises(FileExistsError, match="--resume true found no checkpoint of an interrupted run"):
        check_weights_replaceable(str(tmp_path), ["meta_model.pt"], resume=True, checkpoints=["checkpoint_meta.pt"])
    (tmp_path / "checkpoint_meta.pt").write_bytes(b"x")  # resuming the run that wrote the weights
    check_weights_replaceable(str(tmp_path), ["meta_model.pt"], resume=True, checkpoints=["checkpoint_meta.pt"])
    with pytest.raises(FileExistsError, match="meta_model.pt"):  # without --resume the checkpoint counts for nothing
        check_weights_replaceable(str(tmp_path), ["meta_model.pt"], checkpoints=["checkpoint_meta.pt"])
    with pytest.raises(FileExistsError, match="meta_model.pt"):
        check_weights_replaceable(str(tmp_path), ["meta_model.pt", "model.pt"], replace="false")
    with pytest.raises(ValueError, match="--replace_weights must be true or false"):
        check_weights_replaceable(str(tmp_path), ["meta_model.pt"], replace="maybe")
