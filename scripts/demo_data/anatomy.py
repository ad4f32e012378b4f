"""Template anatomy of the demo data: the MNI152 template, its seg4 labels and the geometry of the written images.

The seg4 label volume (0 background, 1 cortex, 2 subcortical grey matter, 3 white matter, 4 ventricular CSF) is derived
once per process from the MNI ICBM 152 2009a template's T1 and tissue probability maps, which ship inside the nilearn
wheel (nothing is downloaded; docs/data_license.txt).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "SLICE_SHAPE",
    "VOLUME_SHAPE",
    "SLICE_INDEX",
    "SLICE_Y_MM",
    "AFFINE",
    "AFFINE_3D",
    "SEG4_LABELS",
    "NUM_CLASSES",
    "template",
]

SLICE_SHAPE = (160, 192)  # left-right x superior-inferior
VOLUME_SHAPE = (160, 192, 224)  # L-R, S-I, A-P (FreeSurfer LIA, cropped like neurite-oasis' aligned volumes)
SLICE_INDEX = 109  # coronal slice of the aligned volume that neurite-oasis' 2D data uses
SLICE_Y_MM = -16.0  # MNI y of the nominal slice (behind the anterior commissure, through thalamus + hippocampus)
# 2D slices are written as real neurite-oasis ones are: 160x192x1, identity affine (the arrays' axes are left-right
# and superior->inferior all the same; scripts.geometry says how such files and anatomically oriented ones are read)
AFFINE = np.eye(4)
# volumes: 1 mm, first axis right->left, second superior->inferior, third posterior->anterior (FreeSurfer LIA)
AFFINE_3D = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -SLICE_INDEX], [0, -1.0, 0, 96], [0, 0, 0, 1]])

# index, name, R, G, B, A (FreeSurfer colour-table format)
SEG4_LABELS = [
    (0, "Unknown", 0, 0, 0, 0),
    (1, "Cortex", 220, 20, 10, 0),
    (2, "Subcortical-Gray-Matter", 230, 148, 34, 0),
    (3, "White-Matter", 245, 245, 245, 0),
    (4, "CSF", 120, 18, 134, 0),
]
NUM_CLASSES = len(SEG4_LABELS)

_TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _template_dir() -> Path:
    """Directory of the MNI152 2009a files inside the installed nilearn package (no download, no import of nilearn)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nilearn is required for the demo data (it ships the MNI152 template used to generate it)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    missing = [f for f in _TEMPLATE_FILES.values() if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"MNI152 template files not found in the nilearn package at {path}: {missing}")
    return path


def _ellipsoid(xyz: tuple[np.ndarray, ...], centre: tuple, radii: tuple, mirror: bool = True) -> np.ndarray:
    """Boolean mask of an axis-aligned ellipsoid in mm (mirrored to both hemispheres if ``mirror``)."""
    x, y, z = xyz
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), dtype=bool)
    for sign in (1, -1) if mirror else (1,):
        cx = sign * centre[0]
        out |= ((x - cx) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1
    return out


def _largest_components(mask: np.ndarray, seeds_vox: list[tuple[int, int, int]]) -> np.ndarray:
    """Union of the connected components of ``mask`` that contain any of the seed voxels."""
    lab, _ = ndimage.label(mask)
    ids = {int(lab[s]) for s in seeds_vox if lab[s] > 0}
    return np.isin(lab, list(ids)) if ids else np.zeros_like(mask)


def _snap_seeds(mask: np.ndarray, seeds_vox: list[tuple[int, ...]], radius: int = 5) -> list[tuple[int, ...]]:
    """Each seed moved to the nearest voxel of ``mask`` within a box of ``radius`` voxels (dropped if none)."""
    snapped = []
    for v in seeds_vox:
        box = tuple(slice(max(c - radius, 0), c + radius + 1) for c in v)
        cand = np.argwhere(mask[box])
        if len(cand):
            d2 = ((cand - radius) ** 2).sum(1)
            snapped.append(tuple(int(c + b.start) for c, b in zip(cand[np.argmin(d2)], box)))
    return snapped


@functools.lru_cache(maxsize=1)
def template() -> dict:
    """Load the MNI152 template and derive the seg4 label volume (computed once per process)."""
    path = _template_dir()
    imgs = {k: nib.load(str(path / f)) for k, f in _TEMPLATE_FILES.items()}
    affine = imgs["t1"].affine
    t1 = np.asarray(imgs["t1"].dataobj, dtype=np.float32)
    gm = np.asarray(imgs["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(imgs["wm"].dataobj, dtype=np.float32) / 255.0
    head = t1 > 0  # the nilearn T1 is already skull-stripped (keeps a thin rim of extracerebral CSF)
    # crop to the head bounding box (+ margin) to save memory and time
    nz = np.nonzero(head)
    lo = [max(int(a.min()) - 6, 0) for a in nz]
    hi = [min(int(a.max()) + 7, s) for a, s in zip(nz, head.shape)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1, gm, wm, head = t1[sl], gm[sl], wm[sl], head[sl]
    affine = affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array(lo, dtype=float)
    t1 /= float(np.median(t1[wm > 0.95]))  # white matter ~ 1
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)

    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in t1.shape], indexing="ij")
    xyz = tuple(affine[i, i] * grid[i] + affine[i, 3] for i in range(3))  # axis-aligned template, mm
    del grid
    x, y, z = xyz

    def vox(p: tuple[float, float, float]) -> tuple[int, int, int]:
        return tuple(int(round((p[i] - affine[i, 3]) / affine[i, i])) for i in range(3))

    # brain envelope (pial-ish surface): closed + filled high-probability tissue mask
    tissue = (gm + wm) > 0.5
    envelope = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=2))
    depth = ndimage.distance_transform_edt(ndimage.binary_fill_holes(head))

    # ventricular CSF: dark, CSF-dominant voxels deep inside the brain, connected to ventricle seeds
    dark = (csf > 0.5) & (t1 < 0.55) & (depth > 6)
    seeds = [(s * 14, -16, 20) for s in (1, -1)] + [(s * 22, -40, 14) for s in (1, -1)]  # lateral ventricles
    seeds += [(0, -14, 4), (0, -45, -32)]  # 3rd, 4th ventricle
    seeds += [(s * 30, -20, -14) for s in (1, -1)] + [(s * 28, -28, -8) for s in (1, -1)]  # temporal horns
    seeds_vox = _snap_seeds(dark, [vox(p) for p in seeds])
    ventricle_roi = (np.abs(x) < 36) & (y > -90) & (y < 40) & (z > -50) & (z < 40)
    ventricle_roi &= ~((np.abs(x) > 24) & (z > 26))
    ventricle_roi &= ~((np.abs(x) > 5) & (np.abs(x) < 20) & (z < -4))  # ambient / crural cisterns
    ventricle_roi &= ~_ellipsoid(xyz, (0, -18, -28), (14, 16, 15), mirror=False)  # interpeduncular cistern
    ventricles = _largest_components(dark & ventricle_roi, seeds_vox)
    ventricles = ndimage.binary_dilation(ventricles, mask=(csf > 0.35) & ventricle_roi & (depth > 6), iterations=1)

    # tissue classes by dominant probability
    labels = np.zeros(t1.shape, dtype=np.uint8)
    is_wm = (wm >= gm) & (wm > csf)
    is_gm = (gm > wm) & (gm > csf)
    labels[is_gm] = 1
    labels[is_wm] = 3

    # subcortical grey matter: deep GM (basal ganglia), thalamus, hippocampus, amygdala, pallidum, cerebellar cortex
    deep = (depth > 24) & (np.abs(x) < 33) & (z > -22) & (z < 30) & (y > -40) & (y < 32)
    # striatum (caudate, putamen, accumbens): the deep grey-matter pieces holding a striatal seed; this drops the
    # cingulate gyrus and medial frontal cortex, which the depth box also reaches in front of the thalamus
    striatal = [vox((s * dx, dy, dz)) for s in (1, -1) for dx, dy, dz in ((13, 12, 10), (24, 6, 2), (10, 10, -8))]
    subcort = _largest_components(is_gm & deep, _snap_seeds(is_gm & deep, striatal)) | (is_gm & deep & (y <= 4))
    thalamus = _ellipsoid(xyz, (11.5, -18, 6), (9.5, 15, 11))
    subcort |= thalamus & (gm > 0.3) & (csf < np.maximum(gm, wm))
    pallidum = _ellipsoid(xyz, (19, -3, -1), (5, 9, 5.5))
    subcort |= pallidum & ((gm + wm) > 0.5)
    hippocampus = (
        _ellipsoid(xyz, (26, -10, -20), (8, 8, 8))  # head
        | _ellipsoid(xyz, (27, -19, -19), (8, 8, 7.5))  # body
        | _ellipsoid(xyz, (29, -27, -14), (7, 8, 6))  # body
        | _ellipsoid(xyz, (28, -36, -4), (6, 7, 6))  # tail
    )
    amygdala = _ellipsoid(xyz, (23, -4, -18), (7, 7, 7))
    subcort |= (hippocampus | amygdala) & (is_gm | ((gm > 0.35) & (csf < np.maximum(gm, wm))))
    cerebellum = _ellipsoid(xyz, (0, -62, -36), (52, 30, 26), mirror=False) & (z < -12)
    subcort |= cerebellum & is_gm
    labels[subcort] = 2

    # brainstem and ventral diencephalon are white matter in FreeSurfer tissue types
    brainstem = (
        _ellipsoid(xyz, (0, -22, -12), (16, 16, 9), mirror=False)  # ventral DC / midbrain
        | (((x / 14) ** 2 + ((y + 30) / 17) ** 2 <= 1) & (z < -12) & (z > -75))  # pons / medulla column
    ) & ~hippocampus
    labels[brainstem & (is_gm | is_wm) & ~thalamus] = 3
    # midline between the thalami / below the ventricles: 3rd ventricle (CSF) or fornix / hypothalamus (WM)
    midline = (np.abs(x) <= 3) & (y > -32) & (y < 6) & (z > -10) & (z < 22)
    labels[midline & (labels == 1)] = 3
    ventricles |= midline & (csf > 0.3) & (t1 < 0.75)
    labels[~envelope] = 0  # sulcal / extracerebral CSF stays background
    labels[(labels > 0) & ~(is_gm | is_wm | subcort)] = 0
    labels[ventricles] = 4
    # 3D corrections away from the 2D coronal band (MNI y -36..4 mm keeps version 1.0's labels, so the 2D data is
    # unchanged): cisternal CSF that the dark-voxel rule joined to the ventricles is background
    cisterns = ((np.abs(x) < 3) & (z > 22)) | ((np.abs(x) < 9) & (y < -30) & (z > -4) & (z < 16))
    labels[cisterns & (labels == 4) & ((y < -36) | (y > 4))] = 0

    onehot = np.stack([(labels == c).astype(np.float32) for c in range(NUM_CLASSES)])
    # gradient of the smoothed ventricle mask: used to enlarge / shrink ventricles per subject (atrophy)
    vsmooth = ndimage.gaussian_filter(ventricles.astype(np.float32), 3.0)
    vgrad = np.stack(np.gradient(vsmooth)).astype(np.float32)
    vgrad /= max(float(np.abs(vgrad).max()), 1e-6)
    return {
        "t1": np.clip(t1, 0, None).astype(np.float32),
        "labels": labels,
        "onehot": onehot,
        "vgrad": vgrad,
        "affine": affine,
        "inv_affine": np.linalg.inv(affine),
    }
