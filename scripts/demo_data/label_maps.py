"""Real-anatomy label maps for the demo data: SynthSeg's 20 training label maps placed on the demo volume grid.

``label_maps.npz`` (next to this file) holds the 20 whole-head label maps of the SynthSeg repository (Apache-2.0;
provenance and licence notice in docs/data_license.txt), each affinely placed in the neurite-oasis aligned space of the
demo data (160x192x224, LIA, coronal slice 109; ``anatomy``) and resampled (nearest neighbour) by
``tools/vendor_label_maps.py``. Voxels hold uint8 codes; ``CODE_TABLE`` gives each code's FreeSurfer label value.
``to_seg4`` / ``to_seg24`` turn a map into neurite-oasis style targets (FreeSurfer tissue types / the 24 structures of
the 2D slices); extra-cerebral CSF (24) and the non-brain classes (5xx) are background there, like the rim that
skull stripping leaves around a real brain.
"""

from __future__ import annotations

import functools
import lzma
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .anatomy import VOLUME_SHAPE

__all__ = [
    "VENDORED_FILE",
    "FILE_NAMES",
    "NUM_MAPS",
    "CODE_TABLE",
    "NON_BRAIN",
    "SEG24_LABELS",
    "LabelMapError",
    "label_map",
    "freesurfer_labels",
    "to_seg4",
    "to_seg24",
]

VENDORED_FILE = Path(__file__).with_name("label_maps.npz")
FILE_NAMES = tuple(f"training_seg_{i:02d}.nii.gz" for i in range(1, 21))  # SynthSeg's data/training_label_maps/
NUM_MAPS = len(FILE_NAMES)
NON_BRAIN = (502, 506, 507, 508, 509, 511, 512, 514, 515, 516, 530)  # SynthSeg's non-brain tissue classes

# code -> (FreeSurfer label value, name). 25/57 are white-matter lesions (SynthSeg segments them as white matter);
# 136/137 and 163/164 are left / right structures inside the lateral ventricles and their temporal horns with a T1
# prior between CSF and grey matter (SynthSeg segments them as ventricle): choroid plexus here (FreeSurfer: CSF).
CODE_TABLE: tuple[tuple[int, str], ...] = (
    (0, "Unknown"),
    (2, "Left-Cerebral-White-Matter"),
    (3, "Left-Cerebral-Cortex"),
    (4, "Left-Lateral-Ventricle"),
    (5, "Left-Inf-Lat-Vent"),
    (7, "Left-Cerebellum-White-Matter"),
    (8, "Left-Cerebellum-Cortex"),
    (10, "Left-Thalamus"),
    (11, "Left-Caudate"),
    (12, "Left-Putamen"),
    (13, "Left-Pallidum"),
    (14, "3rd-Ventricle"),
    (15, "4th-Ventricle"),
    (16, "Brain-Stem"),
    (17, "Left-Hippocampus"),
    (18, "Left-Amygdala"),
    (25, "Left-Lesion"),
    (26, "Left-Accumbens-area"),
    (28, "Left-VentralDC"),
    (30, "Left-vessel"),
    (41, "Right-Cerebral-White-Matter"),
    (42, "Right-Cerebral-Cortex"),
    (43, "Right-Lateral-Ventricle"),
    (44, "Right-Inf-Lat-Vent"),
    (46, "Right-Cerebellum-White-Matter"),
    (47, "Right-Cerebellum-Cortex"),
    (49, "Right-Thalamus"),
    (50, "Right-Caudate"),
    (51, "Right-Putamen"),
    (52, "Right-Pallidum"),
    (53, "Right-Hippocampus"),
    (54, "Right-Amygdala"),
    (57, "Right-Lesion"),
    (58, "Right-Accumbens-area"),
    (60, "Right-VentralDC"),
    (62, "Right-vessel"),
    (72, "5th-Ventricle"),
    (85, "Optic-Chiasm"),
    (136, "Left-choroid-plexus-body"),
    (137, "Left-choroid-plexus-temporal"),
    (163, "Right-choroid-plexus-body"),
    (164, "Right-choroid-plexus-temporal"),
    (24, "Extra-cerebral-CSF"),
    *((v, f"Non-brain-{v}") for v in NON_BRAIN),
)

# FreeSurfer tissue types (shared/neurite-oasis.md): 1 cortex, 2 subcortical grey matter, 3 white matter, 4 CSF
_SEG4 = {
    1: (3, 42),
    2: (8, 47, 10, 11, 12, 13, 49, 50, 51, 52, 17, 18, 53, 54, 26, 58),
    3: (2, 41, 7, 46, 16, 28, 60, 85, 25, 57),
    4: (4, 5, 43, 44, 14, 15, 30, 62, 72, 136, 137, 163, 164),
}  # everything else (0, extra-cerebral CSF 24, non-brain 5xx) is background

# seg24: the 24 structures of neurite-oasis' 2D slices, numbered by ascending FreeSurfer label value (as seg35 is)
SEG24_LABELS: tuple[tuple[int, str], ...] = tuple(
    (i, name)
    for i, name in enumerate(
        (
            "Unknown",
            "Left-Cerebral-White-Matter",
            "Left-Cerebral-Cortex",
            "Left-Lateral-Ventricle",
            "Left-Inf-Lat-Vent",
            "Left-Thalamus",
            "Left-Caudate",
            "Left-Putamen",
            "Left-Pallidum",
            "3rd-Ventricle",
            "Brain-Stem",
            "Left-Hippocampus",
            "Left-VentralDC",
            "Left-choroid-plexus",
            "Right-Cerebral-White-Matter",
            "Right-Cerebral-Cortex",
            "Right-Lateral-Ventricle",
            "Right-Inf-Lat-Vent",
            "Right-Thalamus",
            "Right-Caudate",
            "Right-Putamen",
            "Right-Pallidum",
            "Right-Hippocampus",
            "Right-VentralDC",
            "Right-choroid-plexus",
        )
    )
)
_SEG24_FS = (2, 3, 4, 5, 10, 11, 12, 13, 14, 16, 17, 28, 31, 41, 42, 43, 44, 49, 50, 51, 52, 53, 60, 63)
# map labels without a seg24 structure of their own: lesions are white matter, choroid plexus parts are 31 / 63;
# the other seg35 structures (cerebellum, amygdala, accumbens, vessels, 4th ventricle) and the rest are 0
_SEG24_ALIAS = {25: 2, 57: 41, 136: 31, 137: 31, 163: 63, 164: 63}

_FS = np.array([v for v, _ in CODE_TABLE], dtype=np.int16)
_SEG4_LUT = np.zeros(len(CODE_TABLE), dtype=np.uint8)
for _cls, _values in _SEG4.items():
    _SEG4_LUT[np.isin(_FS, _values)] = _cls
_SEG24_LUT = np.array(
    [_SEG24_FS.index(_SEG24_ALIAS.get(v, v)) + 1 if _SEG24_ALIAS.get(v, v) in _SEG24_FS else 0 for v in _FS.tolist()],
    dtype=np.uint8,
)
_BRAIN_CODES = np.flatnonzero(_SEG4_LUT > 0)


class LabelMapError(ValueError):
    """The vendored label-map file is missing, unreadable or does not hold the expected maps (names the file)."""


_READ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, lzma.LZMAError, zlib.error)


def _read(path: str, key: str) -> np.ndarray:
    """One member of the archive (opened and closed per read: no file handle is shared with forked workers)."""
    with np.load(path, allow_pickle=False) as npz:
        return npz[key]


@functools.lru_cache(maxsize=4)
def _check_archive(path: str) -> None:
    """Check the vendored file's code table and map names (the maps themselves are read one by one, lazily)."""
    try:
        codes, files = _read(path, "codes"), _read(path, "files")
    except _READ_ERRORS as err:
        raise LabelMapError(f"{path}: cannot read the vendored label maps ({type(err).__name__}: {err})") from err
    if codes.tolist() != _FS.tolist():
        raise LabelMapError(f"{path}: wrong label set: code table {codes.tolist()}, expected {_FS.tolist()}")
    if [str(f) for f in files] != list(FILE_NAMES):
        raise LabelMapError(f"{path}: holds maps {files.tolist()}, expected {list(FILE_NAMES)}")


@functools.lru_cache(maxsize=NUM_MAPS)
def _load_map(path: str, index: int) -> np.ndarray:
    """Map ``index`` of the archive at ``path``, checked (shape, dtype, codes, some brain), read-only."""
    _check_archive(path)
    name = f"{path} (map {index}, {FILE_NAMES[index]})"
    try:
        codes = _read(path, f"map_{index + 1:02d}")
    except _READ_ERRORS as err:
        raise LabelMapError(f"{name}: cannot read the label map ({type(err).__name__}: {err})") from err
    if codes.shape != VOLUME_SHAPE or codes.dtype != np.uint8:
        raise LabelMapError(f"{name}: expected uint8 {VOLUME_SHAPE}, got {codes.dtype} {codes.shape}")
    present = np.flatnonzero(np.bincount(codes.ravel(), minlength=len(_FS)))
    if present.max() >= len(_FS):
        raise LabelMapError(f"{name}: wrong label set: codes {present[present >= len(_FS)].tolist()} are not defined")
    if not np.isin(_BRAIN_CODES, present).any():
        raise LabelMapError(f"{name}: the map holds no brain labels")
    codes.flags.writeable = False
    return codes


def label_map(index: int, path: str | Path | None = None) -> np.ndarray:
    """Codes (uint8, 160x192x224, read-only) of map ``index`` (0-based: ``FILE_NAMES[index]``), on the demo grid."""
    if not 0 <= index < NUM_MAPS:
        raise IndexError(f"label map index {index} out of range 0..{NUM_MAPS - 1}")
    path = Path(path) if path is not None else VENDORED_FILE
    if not path.is_file():
        raise LabelMapError(f"{path}: vendored label maps not found (made by tools/vendor_label_maps.py)")
    return _load_map(str(path), index)


def freesurfer_labels(codes: np.ndarray) -> np.ndarray:
    """FreeSurfer label values (int16) of an array of codes."""
    return _FS[codes]


def to_seg4(codes: np.ndarray) -> np.ndarray:
    """seg4 tissue types (uint8: 0 background, 1 cortex, 2 subcortical GM, 3 WM, 4 CSF) by FreeSurfer's rules."""
    return _SEG4_LUT[codes]


def to_seg24(codes: np.ndarray) -> np.ndarray:
    """seg24 structures (uint8 0..24, ``SEG24_LABELS``) of an array of codes."""
    return _SEG24_LUT[codes]
