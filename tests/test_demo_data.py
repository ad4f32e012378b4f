"""Tests for the embedded demo data generator (scripts/demo_data/)."""

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from scripts.demo_data import DEMO_SUBJECT_FMT, dataset, prepare_demo_data, synthesis

SMALL = {"num_train": 3, "num_val": 1, "num_test": 1}


def _load(root: Path, rel: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / rel)).dataobj)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "oasis"
    prepare_demo_data(str(root), **SMALL)
    return root


def test_layout_shapes_and_values(demo_dir):
    splits_path = demo_dir / "demo_splits.json"
    assert prepare_demo_data(str(demo_dir), **SMALL) == str(splits_path)
    splits = json.loads(splits_path.read_text())
    assert {k: len(v) for k, v in splits.items()} == {"train": 3, "val": 1, "test": 1, "test_shifted": 1}
    subjects = [DEMO_SUBJECT_FMT.format(i) for i in range(1, 7)]
    assert (demo_dir / "subjects.txt").read_text().split() == subjects
    assert splits["train"][0] == {"img": f"{subjects[0]}/slice_norm.nii.gz", "seg4": f"{subjects[0]}/slice_seg4.nii.gz"}
    lut = [line.split() for line in (demo_dir / "seg4_labels.txt").read_text().splitlines()]
    assert [int(r[0]) for r in lut] == [0, 1, 2, 3, 4] and all(len(r) == 6 for r in lut)
    for split, entries in splits.items():
        entry = entries[0]
        img_nii = nib.load(str(demo_dir / entry["img"]))
        seg_nii = nib.load(str(demo_dir / entry["seg4"]))
        shifted = split == "test_shifted"
        assert img_nii.get_data_dtype() == (np.int16 if shifted else np.float32)
        assert seg_nii.get_data_dtype() == np.uint8
        assert img_nii.shape == seg_nii.shape == (160, 192, 1)  # as neurite-oasis stores its 2D slices
        img, seg = np.asarray(img_nii.dataobj).astype(np.float32)[..., 0], np.asarray(seg_nii.dataobj)[..., 0]
        wm = float(np.median(img[seg == 3]))
        if shifted:  # scanner-like integers with an offset background
            assert img.min() > 0 and 1000 < wm < 4000
        else:  # neurite-oasis: FreeSurfer norm / 255, white matter near 110 / 255
            assert img.min() >= 0.0 and img.max() <= 1.0
            assert 0.33 < wm < 0.5 and img.max() > 0.6  # the brightest voxels are not white matter
        assert set(np.unique(seg)) == {0, 1, 2, 3, 4}
        background = float(np.median(img[seg == 0]))
        assert np.all(img[seg > 0] > background)  # labelled brain has intensity
        assert np.any((seg == 0) & (img > background + 0.25 * wm))  # unlabelled rim / sulcal CSF keeps intensity
        np.testing.assert_array_equal(img_nii.affine, np.eye(4))  # neurite-oasis' identity affine
        assert img_nii.header["sform_code"] == 2 and img_nii.header["qform_code"] == 0
        # plausible tissue proportions for a coronal slice through the thalamus
        frac = np.bincount(seg.ravel(), minlength=5) / np.count_nonzero(seg)
        assert 0.3 < frac[1] < 0.6 and 0.02 < frac[2] < 0.15 and 0.3 < frac[3] < 0.6 and 0.002 < frac[4] < 0.1


def test_deterministic_and_subjects_differ(demo_dir, tmp_path):
    other = tmp_path / "again"
    prepare_demo_data(str(other), **SMALL)
    names = (demo_dir / "subjects.txt").read_text().split()
    for name in names:
        for f in ("slice_norm.nii.gz", "slice_seg4.nii.gz"):
            np.testing.assert_array_equal(_load(demo_dir, f"{name}/{f}"), _load(other, f"{name}/{f}"))
    a, b = _load(demo_dir, f"{names[0]}/slice_norm.nii.gz"), _load(demo_dir, f"{names[1]}/slice_norm.nii.gz")
    assert np.abs(a - b).mean() > 0.01
    sa, sb = _load(demo_dir, f"{names[0]}/slice_seg4.nii.gz"), _load(demo_dir, f"{names[1]}/slice_seg4.nii.gz")
    assert np.mean(sa != sb) > 0.02
    # another seed gives other subjects
    third = tmp_path / "seed1"
    prepare_demo_data(str(third), **SMALL, seed=1)
    assert not np.array_equal(a, _load(third, f"{names[0]}/slice_norm.nii.gz"))


def test_cached_and_overwrite(tmp_path):
    root = tmp_path / "cache"
    prepare_demo_data(str(root), num_train=1, num_val=1, num_test=1)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    prepare_demo_data(str(root), num_train=1, num_val=1, num_test=1)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # different parameters regenerate
    prepare_demo_data(str(root), num_train=2, num_val=1, num_test=1)
    assert len(json.loads((root / "demo_splits.json").read_text())["train"]) == 2
    assert (root / "subjects.txt").read_text().split()[-1] == DEMO_SUBJECT_FMT.format(5)  # 4 + 1 test_shifted
    # overwrite=True regenerates identical content
    before = _load(root, DEMO_SUBJECT_FMT.format(1) + "/slice_norm.nii.gz")
    prepare_demo_data(str(root), num_train=2, num_val=1, num_test=1, overwrite=True)
    np.testing.assert_array_equal(before, _load(root, DEMO_SUBJECT_FMT.format(1) + "/slice_norm.nii.gz"))
    # no temporary siblings left behind
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_refuses_foreign_directory(tmp_path):
    real = tmp_path / "neurite-oasis"
    (real / "OASIS_OAS1_0001_MR1").mkdir(parents=True)
    (real / "subjects.txt").write_text("OASIS_OAS1_0001_MR1\n")
    with pytest.raises(ValueError, match="refusing"):
        prepare_demo_data(str(real), num_train=1, num_val=1, num_test=1)
    assert (real / "subjects.txt").read_text() == "OASIS_OAS1_0001_MR1\n"
    # a demo dir with an extra foreign file is refused too
    demo = tmp_path / "demo"
    prepare_demo_data(str(demo), num_train=1, num_val=1, num_test=1)
    (demo / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        prepare_demo_data(str(demo), num_train=1, num_val=1, num_test=1, overwrite=True)
    assert (demo / "notes.txt").exists()


def test_foreign_files_in_complete_demo_folder_are_named_not_fatal(tmp_path, caplog):
    """What MONAI Label leaves in a studies folder: named with the fix; reading goes on, regenerating is refused."""
    demo = tmp_path / "demo"
    splits = prepare_demo_data(str(demo), num_train=1, num_val=1, num_test=1)
    listed = Path(splits).read_text()
    (demo / ".lock").write_text("")
    (demo / "labels" / "final").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="scripts.demo_data"):
        assert prepare_demo_data(str(demo), num_train=1, num_val=1, num_test=1) == splits
    warning = caplog.text
    assert ".lock, labels" in warning and "tools/serve_monailabel.sh --studies" in warning, warning
    assert "Move them out of" in warning and "not used" in warning
    with pytest.raises(ValueError, match=r"\(\.lock, labels\).*Move them out of .*regenerated there; refusing"):
        prepare_demo_data(str(demo), num_train=2, num_val=1, num_test=1)
    assert (demo / ".lock").exists() and (demo / "labels" / "final").is_dir()
    assert Path(splits).read_text() == listed


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        prepare_demo_data(str(tmp_path / "x"), spatial_dims=4)
    with pytest.raises(ValueError):
        prepare_demo_data(str(tmp_path / "x"), num_train=0, num_val=0, num_test=0)


def test_worker_processes_write_the_same_bytes_and_report_progress(tmp_path, caplog, monkeypatch):
    """Subjects made in 2 worker processes are the serial ones, byte for byte; progress goes to the log."""
    params = dataset._manifest_params(2, 1, 0, 1, seed=0, spatial_dims=2)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    serial.mkdir()
    parallel.mkdir()
    files = dataset._write_dataset(serial, params, num_workers=1)
    monkeypatch.setattr(dataset, "has_tqdm", False)  # the log lines, not a tqdm bar
    with caplog.at_level(logging.INFO, logger=dataset.__name__):
        assert dataset._write_dataset(parallel, params, num_workers=2, progress_interval=0.0) == files
    assert len(files) == 4 * 2 + 3
    for f in files:
        assert (serial / f).read_bytes() == (parallel / f).read_bytes(), f
    messages = [r.getMessage() for r in caplog.records]
    assert any("with 2 process(es)" in m for m in messages), messages
    assert any(m.startswith("2D demo data: 3/4 subjects") and m.endswith(" left") for m in messages), messages
    assert any(m.startswith("2D demo data: 4/4 subjects, ") for m in messages), messages


def test_progress_is_quiet_for_a_few_seconds(caplog, monkeypatch):
    monkeypatch.setattr(dataset, "has_tqdm", False)
    with caplog.at_level(logging.INFO, logger=dataset.__name__):
        progress = dataset._Progress(3, "3D demo data", interval=60.0)
        for _ in range(3):
            progress.update()
        progress.close()
    assert not caplog.records
    assert dataset._duration(72.4) == "1 min 12 s" and dataset._duration(9.6) == "10 s"
    assert dataset._default_workers(2, 124) == 1 and 1 <= dataset._default_workers(3, 2) <= 2


@pytest.mark.parametrize("up_to", [None, 2.5, 6.3, 9.9, 12.0])
def test_cropped_distance_transform_is_the_full_one(up_to):
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 34, 28), dtype=bool)
    mask[5:22, 8:30, 3:20] = rng.random((17, 22, 17)) > 0.2
    solid = np.zeros((40, 44, 38), dtype=bool)  # distances up to ~11
    solid[3:37, 2:44, 4:30] = rng.random((34, 42, 26)) > 0.001
    for m in (mask, ~mask, solid, ~solid, solid[:, :, 17]):
        full = ndimage.distance_transform_edt(m).astype(np.float32)
        cropped = synthesis._distance_inside(m, up_to=up_to)
        near = full <= (np.inf if up_to is None else up_to)
        np.testing.assert_array_equal(cropped[near], full[near])
        assert np.all(cropped[~near] > up_to) if up_to is not None else True


def test_separable_field_evaluation_is_the_pointwise_one():
    """3D evaluates the coarse random fields separably on the output grid: the same spline as point by point."""
    rng = np.random.default_rng(3)
    x, z, y = synthesis._reference_grid(synthesis.SLICE_Y_MM + 4.7, 3)
    grid = (x[::9], z[[0, 1, 50, 96, 150, 191]], y[::-13])  # a few points of each axis, the ends included
    for spacing, channels in ((24.0, 3), (8.0, 2), (48.0, 1)):
        field = synthesis._coarse_field(rng, spacing, channels)
        fast = synthesis._eval_coarse_grid(field, grid, spacing)
        pointwise = synthesis._eval_coarse(field, synthesis._reference_points(grid), spacing)
        np.testing.assert_allclose(fast, pointwise, rtol=0, atol=1e-12)


def test_interpolation_shortcuts_read_the_same_values():
    """Points in a template cell of one label, or where the ventricle gradient is 0, skip the interpolation: the
    labels, grey-matter probabilities and shifted coordinates are those of interpolating every point."""
    tpl = synthesis.template()
    rng = np.random.default_rng(5)
    n = np.array(tpl["labels"].shape)[:, None]
    vox = rng.uniform(-2.0, n + 1.0, (3, 300_000))
    vox[:, :1000] = np.round(vox[:, :1000])  # on voxels, where a cell's upper neighbours have weight 0
    prob = np.stack([ndimage.map_coordinates(c, vox, order=1, mode="constant") for c in tpl["onehot"]])
    prob[0] += prob.sum(0) < 0.5
    labels, sgm = synthesis._sample_labels(vox)
    np.testing.assert_array_equal(labels, np.argmax(prob, axis=0))
    np.testing.assert_array_equal(sgm, prob[2])
    assert len(np.unique(labels)) == 5 and np.count_nonzero(sgm) > 1000
    for vent in (2.7, -1.3):
        g = np.stack([ndimage.map_coordinates(c, vox, order=1, mode="constant") for c in tpl["vgrad"]])
        np.testing.assert_array_equal(synthesis._ventricle_shift(vox, vent), vox + vent * g)
