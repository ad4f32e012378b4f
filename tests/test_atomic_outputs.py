"""A failure in the middle of a write never leaves a truncated file under the final name (checkpoints, CSVs, NIfTI)."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from scripts.checkpoint import AtomicCheckpointSaver, TrainingCheckpointSaver
from scripts.handlers import MetricsSummaryHandler, write_json_atomic
from scripts.network import MetaSegINR
from scripts.outputs import AtomicMetricsSaver, AtomicNiftiWriter, remove_stale_temp_files

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes


class DiskFull(OSError):
    pass


def _half_then_fail(real):
    """Wrap a ``save(obj, f)`` function: write the first half of what it would write to ``f``, then raise."""

    def save(obj, f, *args, **kwargs):
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(data)
        else:
            f.write(data)
            f.flush()
        raise DiskFull("no space left on device (injected)")

    return save


def _engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {}
    return engine


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


@pytest.mark.parametrize("saver_class,atomic", [(AtomicCheckpointSaver, True), (CheckpointSaver, False)])
def test_failed_checkpoint_save_keeps_the_previous_file(saver_class, atomic, tmp_path, monkeypatch):
    """model.pt is replaced atomically; MONAI's own CheckpointSaver (atomic=False) is the counter-example."""
    net = MetaSegINR(hidden_channels=8, num_sine_layers=1, head_channels=8)
    saver = saver_class(save_dir=str(tmp_path), save_dict={"model": net}, save_final=True, final_filename="model.pt")
    engine = _engine()
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "model.pt").read_bytes()
    torch.load(tmp_path / "model.pt", weights_only=True)  # a plain, complete state dict

    with torch.no_grad():
        net.head[2].bias.add_(1.0)
    monkeypatch.setattr(torch, "save", _half_then_fail(torch.save))
    with pytest.raises(DiskFull):
        engine.run([0], max_epochs=1)
    if atomic:
        assert (tmp_path / "model.pt").read_bytes() == before
        assert _files(tmp_path) == ["model.pt"]  # no temporary file left behind
    else:
        assert (tmp_path / "model.pt").read_bytes() != before  # truncated in place, or deleted


def test_failed_training_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    net = MetaSegINR(hidden_channels=8, num_sine_layers=1, head_channels=8)
    opt = torch.optim.Adam(net.parameters())
    saver = TrainingCheckpointSaver(str(tmp_path), {"model": net, "optimizer": opt}, "checkpoint_meta.pt")
    engine = _engine()
    saver.attach(engine)

    def fail_at_epoch_2(e: Engine) -> None:
        if e.state.epoch == 2:
            monkeypatch.setattr(torch, "save", _half_then_fail(torch.save))

    engine.add_event_handler(Events.EPOCH_STARTED, fail_at_epoch_2)
    with pytest.raises(DiskFull):
        engine.run([0, 1], max_epochs=3)
    state = torch.load(tmp_path / "checkpoint_meta.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 and set(state) == {"model", "optimizer", "trainer"}
    assert _files(tmp_path) == ["checkpoint_meta.pt"]


def test_failed_metrics_csv_write_leaves_no_file(tmp_path, monkeypatch):
    import monai.handlers.metrics_saver as metrics_saver

    real = metrics_saver.write_metrics_reports

    def half_then_fail(save_dir, **kwargs):
        real(save_dir=save_dir, **kwargs)
        path = Path(save_dir) / "metrics.csv"
        path.write_text(path.read_text()[:5])
        raise DiskFull("no space left on device (injected)")

    engine = _engine()
    engine.state.metrics = {"mean_dice": 0.75, "psnr": 23.0}
    out = tmp_path / "eval"
    AtomicMetricsSaver(save_dir=str(out), metrics="*")(engine)
    assert (out / "metrics.csv").read_text() == "mean_dice,0.75\npsnr,23.0\n"

    (out / "metrics.csv").unlink()
    monkeypatch.setattr(metrics_saver, "write_metrics_reports", half_then_fail)
    with pytest.raises(DiskFull):
        AtomicMetricsSaver(save_dir=str(out), metrics="*")(engine)
    assert _files(out) == []


def test_failed_summary_json_write_leaves_no_file(tmp_path, monkeypatch):
    engine = _engine()
    engine.state.metrics = {"mean_dice": 0.75}

    def half_then_fail(obj, f, **kwargs):
        f.write(json.dumps(obj)[:10])
        raise DiskFull("no space left on device (injected)")

    monkeypatch.setattr(json, "dump", half_then_fail)
    with pytest.raises(DiskFull):
        MetricsSummaryHandler(str(tmp_path), class_names=["a"])(engine)
    assert _files(tmp_path) == []


def test_failed_nifti_write_leaves_no_file(tmp_path, monkeypatch, caplog):
    import nibabel as nib

    real = nib.save
    monkeypatch.setattr(nib, "save", lambda img, f: (real(img, f), _truncate(f)))
    writer = AtomicNiftiWriter(output_dtype=np.uint8)
    writer.set_data_array(torch.zeros(1, 8, 8), channel_dim=0)
    writer.set_metadata({"affine": np.eye(4)}, resample=False)
    with pytest.raises(DiskFull):
        writer.write(str(tmp_path / "seg.nii.gz"))
    assert _files(tmp_path) == []
    # the real cause is logged first, naming the file (MONAI's SaveImage then says "cannot find a suitable writer")
    assert f"cannot write {tmp_path / 'seg.nii.gz'}: no space left on device (injected)" in caplog.text


def _truncate(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    raise DiskFull("no space left on device (injected)")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_files_get_the_umask_permissions(tmp_path, umask):
    """Files written through ``atomic_path`` (segmentations, JSON, PNG) are as readable as the user's umask says."""
    old = os.umask(umask)
    try:
        write_json_atomic({"a": 1}, str(tmp_path / "summary.json"))
        writer = AtomicNiftiWriter()
        writer.set_data_array(np.zeros((1, 8, 8), np.uint8), channel_dim=0)
        writer.set_metadata({"affine": np.eye(4)}, resample=False)
        writer.write(str(tmp_path / "seg.nii.gz"))
    finally:
        os.umask(old)
    for name in ("summary.json", "seg.nii.gz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    """A kill -9 leaves ``.metaseg-tmp<pid>.<name>.*``; the next run removes those of dead processes in the folders it
    writes, not a live one's, not anything else (a user's backup named like ``.<name>.tmp<digits>.<x>`` was deleted
    before), and not in other folders."""
    sub = tmp_path / "OASIS_OAS1_0001_MR1"
    (sub / "deeper").mkdir(parents=True)
    dead = sub / ".metaseg-tmp999999999.slice_norm_seg.nii.gz.x1y2.nii.gz"
    dead_dir = sub / ".metaseg-tmp999999999.metrics.k3j4"  # the metric writer's temporary folder
    live = sub / f".metaseg-tmp{os.getpid()}.slice_norm_seg.nii.gz.a9b8.nii.gz"
    backup = sub / ".thesis.tex.tmp999999999.bak"  # a user's file that merely looks like a temporary one
    deeper = sub / "deeper" / ".metaseg-tmp999999999.slice_norm_seg.nii.gz.zz.nii.gz"  # not a folder this run writes
    other = sub / ".hidden_user_file.nii.gz"
    dead_dir.mkdir()
    (dead_dir / "metrics.csv").write_text("partial")
    for path in (dead, live, backup, deeper, other):
        path.write_bytes(b"partial")
    assert remove_stale_temp_files(tmp_path) == []  # only the folders named, not their subfolders
    assert sorted(remove_stale_temp_files([sub])) == sorted([str(dead), str(dead_dir)])
    assert not dead.exists() and not dead_dir.exists()
    assert live.exists() and backup.exists() and deeper.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path / "missing") == []


def test_atomic_temp_names_are_the_bundles_own(tmp_path):
    """The temporary name of an atomic write carries the ``.metaseg-tmp<pid>.`` prefix that the clean-up looks for."""
    from scripts.outputs import atomic_path

    with atomic_path(tmp_path / "seg.nii.gz", suffix=".nii.gz") as tmp:
        assert os.path.basename(tmp).startswith(f".metaseg-tmp{os.getpid()}.seg.nii.gz.")
        Path(tmp).write_bytes(b"x")
    assert _files(tmp_path) == ["seg.nii.gz"]


def test_inference_cleans_a_killed_runs_temp_files_and_keeps_umask(tmp_path):
    """End to end: ``run inference`` into a folder holding a killed run's temp file removes it; outputs are 0644
    under umask 022 (they were 0600 before)."""
    from scripts.demo_data import generate_subject
    from tests.utils import run_inference_on_files, save_tiny_metaseg

    img, _ = generate_subject(0, 1)
    (tmp_path / "in" / "sub01").mkdir(parents=True)
    nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(tmp_path / "in" / "sub01" / "slice_norm.nii.gz"))
    out = tmp_path / "out"
    (out / "sub01").mkdir(parents=True)
    stale = out / "sub01" / ".metaseg-tmp999999999.slice_norm_seg.nii.gz.abcd.nii.gz"
    stale.write_bytes(b"partial")
    backup = out / "sub01" / ".slice_norm_seg.nii.gz.tmp999999999.bak"  # a user's file: kept
    backup.write_bytes(b"mine")
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    old = os.umask(0o022)
    try:
        run_inference_on_files([tmp_path / "in" / "sub01" / "slice_norm.nii.gz"], out, ckpt, "--fit_steps", "2")
    finally:
        os.umask(old)
    assert not stale.exists() and backup.read_bytes() == b"mine"
    seg = out / "sub01" / "slice_norm_seg.nii.gz"
    assert stat.S_IMODE(seg.stat().st_mode) == 0o644
    assert sorted(p.name for p in (out / "sub01").iterdir()) == [backup.name, "slice_norm_seg.nii.gz"]
