"""Vendored SynthSeg label maps (scripts/demo_data/label_maps.npz) and their seg4 / seg24 recoding."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scripts.demo_data import label_maps
from scripts.demo_data.anatomy import SLICE_INDEX, VOLUME_SHAPE
from scripts.demo_data.label_maps import CODE_TABLE, NUM_MAPS, VENDORED_FILE, LabelMapError

FS = [v for v, _ in CODE_TABLE]
SEG24 = {name: i for i, name in label_maps.SEG24_LABELS}
# seg24 structures every map shows in the coronal slice 109 (through thalamus and hippocampus); caudate, pallidum and
# the temporal horns are missing there in some maps (measured: 3, 13 and 5 of the 20 maps)
EXPECTED_SEG24 = [
    f"{side}-{s}"
    for side in ("Left", "Right")
    for s in ("Cerebral-White-Matter", "Cerebral-Cortex", "Lateral-Ventricle", "Thalamus", "Putamen", "Hippocampus")
    + ("VentralDC", "choroid-plexus")
] + ["3rd-Ventricle", "Brain-Stem"]
# training_seg_07's left hippocampus is small in the source map (1438 voxels vs 4848 on the right; left temporal horn
# 11 voxels): its head is missing, and it ends behind slice 109
NOT_IN_SLICE = {6: ["Left-Hippocampus"]}


def codes_of(*fs_values: int) -> np.ndarray:
    return np.array([FS.index(v) for v in fs_values], dtype=np.uint8)


def test_vendored_file_loads_and_is_small():
    assert VENDORED_FILE.is_file() and VENDORED_FILE.stat().st_size <= 15 * 2**20
    with np.load(VENDORED_FILE) as npz:
        assert npz["codes"].tolist() == FS
        assert [str(f) for f in npz["files"]] == [f"training_seg_{i:02d}.nii.gz" for i in range(1, 21)]
        assert npz["world_to_grid"].shape == (NUM_MAPS, 4, 4) and np.all(npz["dice"] > 0.84)
    assert NUM_MAPS == 20
    first = label_maps.label_map(0)
    assert first.shape == VOLUME_SHAPE and first.dtype == np.uint8 and not first.flags.writeable
    assert label_maps.label_map(0) is first  # cached
    with pytest.raises(IndexError):
        label_maps.label_map(NUM_MAPS)


@pytest.mark.parametrize("index", range(20))
def test_slice_109_is_plausible(index):
    codes = label_maps.label_map(index)[:, :, SLICE_INDEX]
    seg4 = label_maps.to_seg4(codes)
    frac = np.bincount(seg4.ravel(), minlength=5) / np.count_nonzero(seg4)
    # tissue proportions of a coronal slice through the thalamus (tests/test_demo_data.py's bounds, with room for the
    # thinner cortex and larger ventricles of atrophic brains: measured cortex 0.29-0.40, CSF 0.013-0.123)
    assert 0.25 < frac[1] < 0.6 and 0.02 < frac[2] < 0.15 and 0.3 < frac[3] < 0.6 and 0.002 < frac[4] < 0.15, frac
    present = set(np.unique(label_maps.to_seg24(codes)).tolist())
    missing = [
        name for name in EXPECTED_SEG24 if SEG24[name] not in present and name not in NOT_IN_SLICE.get(index, [])
    ]
    assert not missing, f"map {index}: slice {SLICE_INDEX} lacks {missing}"
    assert present <= set(range(25))
    # the rim around the brain (extra-cerebral CSF, non-brain tissue) is there and is background in seg4
    rim = np.isin(label_maps.freesurfer_labels(codes), [24, *label_maps.NON_BRAIN])
    assert rim.mean() > 0.05 and not seg4[rim].any()


def test_to_seg4_follows_freesurfer_tissue_types():
    cases = {
        1: (3, 42),  # cortex
        2: (10, 49, 11, 50, 12, 51, 13, 52, 17, 53, 18, 54, 26, 58, 8, 47),  # thalamus, basal ganglia, hippocampus ...
        3: (2, 41, 7, 46, 16, 28, 60, 25, 57, 85),  # white matter incl. brainstem, ventral DC, lesions
        4: (4, 43, 5, 44, 14, 15, 72, 30, 62, 136, 137, 163, 164),  # ventricles, choroid plexus, vessels
        0: (0, 24, *label_maps.NON_BRAIN),  # background: extra-cerebral CSF and non-brain tissue
    }
    for seg4, values in cases.items():
        np.testing.assert_array_equal(label_maps.to_seg4(codes_of(*values)), seg4, err_msg=str(values))
    assert sorted(v for values in cases.values() for v in values) == sorted(FS)  # every code is covered


def test_to_seg24_numbering():
    assert len(label_maps.SEG24_LABELS) == 25 and label_maps.SEG24_LABELS[0] == (0, "Unknown")
    pairs = {
        2: "Left-Cerebral-White-Matter",
        42: "Right-Cerebral-Cortex",
        16: "Brain-Stem",
        14: "3rd-Ventricle",
        60: "Right-VentralDC",
        25: "Left-Cerebral-White-Matter",  # lesion
        136: "Left-choroid-plexus",
        164: "Right-choroid-plexus",
    }
    for fs, name in pairs.items():
        assert label_maps.to_seg24(codes_of(fs))[0] == SEG24[name], fs
    np.testing.assert_array_equal(label_maps.to_seg24(codes_of(0, 24, 18, 26, 8, 15, 507)), 0)
    assert sorted(set(label_maps.to_seg24(np.arange(len(FS), dtype=np.uint8)).tolist())) == list(range(25))


def _rewrite(src: Path, dst: Path, change: dict[str, np.ndarray]) -> None:
    """Copy of the vendored archive with some members replaced (stored uncompressed, for speed)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.namelist():
            key = item[: -len(".npy")]
            if key in change:
                buf = io.BytesIO()
                np.save(buf, change[key])
                zout.writestr(item, buf.getvalue())
            elif not key.startswith("map_") or key == "map_01":
                zout.writestr(item, zin.read(item))


def test_bad_files_give_errors_naming_them(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(LabelMapError, match="absent.npz.*not found"):
        label_maps.label_map(0, missing)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file" * 100)
    with pytest.raises(LabelMapError, match="garbage.npz: cannot read"):
        label_maps.label_map(0, garbage)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(VENDORED_FILE.read_bytes()[: 2**20])
    with pytest.raises(LabelMapError, match="truncated.npz"):
        label_maps.label_map(0, truncated)
    wrong_table = tmp_path / "wrong_table.npz"
    _rewrite(VENDORED_FILE, wrong_table, {"codes": np.arange(len(FS), dtype=np.int16)})
    with pytest.raises(LabelMapError, match="wrong_table.npz: wrong label set"):
        label_maps.label_map(0, wrong_table)
    bad_codes = np.zeros(VOLUME_SHAPE, dtype=np.uint8)
    bad_codes[80, 96, 100] = 250
    wrong_codes = tmp_path / "wrong_codes.npz"
    _rewrite(VENDORED_FILE, wrong_codes, {"map_01": bad_codes})
    with pytest.raises(LabelMapError, match=r"wrong_codes.npz \(map 0, training_seg_01.nii.gz\): wrong label set"):
        label_maps.label_map(0, wrong_codes)
    with pytest.raises(LabelMapError, match=r"wrong_codes.npz \(map 1, training_seg_02.nii.gz\): cannot read"):
        label_maps.label_map(1, wrong_codes)  # member dropped by _rewrite
    empty = tmp_path / "empty.npz"
    _rewrite(VENDORED_FILE, empty, {"map_01": np.zeros(VOLUME_SHAPE, dtype=np.uint8)})
    with pytest.raises(LabelMapError, match="empty.npz .*no brain labels"):
        label_maps.label_map(0, empty)
    copy = tmp_path / "copy.npz"
    shutil.copy(VENDORED_FILE, copy)
    np.testing.assert_array_equal(label_maps.label_map(3, copy), label_maps.label_map(3))


def test_corrupted_map_data_gives_an_error_naming_the_file(tmp_path):
    data = bytearray(VENDORED_FILE.read_bytes())
    for offset in range(len(data) // 10, len(data) - 2**16, len(data) // 12):  # damage every map's member
        data[offset : offset + 64] = bytes(64)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(bytes(data))
    errors = []
    for index in range(NUM_MAPS):
        try:
            label_maps.label_map(index, damaged)
        except LabelMapError as err:
            errors.append(str(err))
    assert errors and all(str(damaged) in e for e in errors)
