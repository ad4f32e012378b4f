"""Embedded, offline, deterministic demo data that mimics the neurite-oasis layout.

The demo subjects are synthesised from the MNI ICBM 152 non-linear symmetric 2009a template (T1 and grey/white
matter probability maps) that ships inside the nilearn wheel, so nothing is downloaded. A tissue-type label volume
following FreeSurfer's seg4 convention (0 background, 1 cortex, 2 subcortical grey matter, 3 white matter,
4 ventricular CSF) is derived once in template space; each subject is then a randomly (affinely + elastically)
deformed, intensity-perturbed resampling of it. See docs/data_license.txt for provenance and licence.

The labels are checked over the whole volume (3D, ``spatial_dims=3``; about 10 s per subject on one CPU core): the
striatum is the deep grey matter connected to striatal seeds (not the cingulate gyrus), and cisternal CSF next to the
ventricles is background. Inside the coronal band used by the 2D slices (MNI y -36..4 mm) the labels are those of
version 1.0, so 2D subjects are identical to it. Known simplification: the cerebellar cortex (subcortical GM here) is
cut at MNI z = -12 mm, so the top of the vermis is labelled cortex.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["DEMO_SUBJECT_FMT", "GENERATOR_VERSION", "SEG4_LABELS", "prepare_demo_data", "dataset_folder"]

DEMO_SUBJECT_FMT = "OASIS_OAS1_{:04d}_MR1"
GENERATOR_NAME = "metaseg-demo-data"
# 1.1: 3D labels corrected outside the 2D band; 2.0: neurite-oasis intensity convention (FreeSurfer norm/255), non-brain
# rim, age-dependent atrophy, asymmetry, and a ``test_shifted`` split
GENERATOR_VERSION = "2.0"
MANIFEST_NAME = "demo_manifest.json"
SPLITS_NAME = {2: "demo_splits.json", 3: "demo_splits_3d.json"}

SLICE_SHAPE = (160, 192)  # left-right x superior-inferior
VOLUME_SHAPE = (160, 192, 224)  # L-R, S-I, A-P (FreeSurfer LIA, cropped like neurite-oasis' aligned volumes)
SLICE_INDEX = 109  # coronal slice of the aligned volume that neurite-oasis' 2D data uses
SLICE_Y_MM = -16.0  # MNI y of the nominal slice (behind the anterior commissure, through thalamus + hippocampus)
# affine of the written images: 1 mm, first axis right->left, second superior->inferior, third posterior->anterior
AFFINE = np.array([[-1.0, 0, 0, 80], [0, 0, 1, 0], [0, -1.0, 0, 96], [0, 0, 0, 1]])
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
def _template() -> dict:
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


def _rotation(angles: np.ndarray) -> np.ndarray:
    """Rotation matrix from three angles (radians) about x, y and z."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


# output domain in reference (MNI) mm, for the coarse random fields
_DOMAIN_LO = np.array([-80.0, SLICE_Y_MM - SLICE_INDEX - 8, -96.0])
_DOMAIN_HI = np.array([80.0, SLICE_Y_MM + VOLUME_SHAPE[2] - SLICE_INDEX + 8, 96.0])


def _coarse_field(rng: np.random.Generator, spacing: float, channels: int) -> np.ndarray:
    """Random control-point grid (channels, nx, ny, nz) over the output domain, unit variance."""
    n = np.ceil((_DOMAIN_HI - _DOMAIN_LO) / spacing).astype(int) + 1
    return rng.standard_normal((channels, *n))


def _eval_coarse(field: np.ndarray, pts: np.ndarray, spacing: float) -> np.ndarray:
    """Cubic-spline interpolation of a coarse field at points ``pts`` (3, N) in mm -> (channels, N)."""
    idx = (pts - _DOMAIN_LO[:, None]) / spacing
    return np.stack([ndimage.map_coordinates(f, idx, order=3, mode="nearest") for f in field])


# template intensities (white matter = 1) of ventricular CSF, cortex and white matter: the knots of the contrast map
_TEMPLATE_CSF, _TEMPLATE_GM, _TEMPLATE_WM = 0.41, 0.75, 0.96
WM_NORM = 110.0 / 255.0  # FreeSurfer's mri_normalize puts white matter at 110; neurite-oasis divides by 255


def _draw_params(seed: int, index: int, shifted: bool = False) -> dict:
    """Per-subject random parameters from a generator seeded by (seed, subject index).

    Ages follow OASIS-1 (18-96); atrophy grows with age (thinner cortex, wider sulci, larger ventricles). Intensities
    follow neurite-oasis (white matter near 110/255, cortex ~0.6-0.7 of it, ventricles ~0.15-0.3 of it).
    ``shifted`` subjects (the ``test_shifted`` split) lie outside that distribution on purpose: old brains with more
    atrophy than any training subject, and a scanner-like intensity convention (integer values in the thousands, an
    offset, weaker grey/white contrast, stronger bias field and noise).
    """
    rng = np.random.default_rng([int(seed), int(index), 20240917])
    age = rng.uniform(80.0, 96.0) if shifted else rng.uniform(18.0, 96.0)
    atrophy = np.clip((age - 30.0) / 66.0, 0.0, 1.0) ** 1.5 * rng.uniform(0.6, 1.1) + (0.35 if shifted else 0.0)
    params = {
        "age": age,
        "atrophy": atrophy,
        "y_jitter": rng.uniform(-5.0, 5.0),
        "angles": np.deg2rad(rng.uniform(-6.0, 6.0, 3)),
        "scale": rng.uniform(0.88, 1.12) * rng.uniform(0.95, 1.05, 3),
        "asymmetry": rng.uniform(-0.05, 0.05),
        "shift": rng.uniform(-4.0, 4.0, 3),
        "def_amp": rng.uniform(1.0, 2.5),
        "def_field": _coarse_field(rng, 24.0, 3),
        "vent": rng.uniform(-1.0, 0.5) + 4.0 * atrophy,
        "thinning": 1.6 * atrophy,  # cortex lost to sulcal CSF, in voxels
        "thinning_field": _coarse_field(rng, 16.0, 1),
        "rim_width": rng.uniform(1.0, 4.0),
        "rim_field": _coarse_field(rng, 8.0, 2),
        "bias_amp": rng.uniform(0.08, 0.15),
        "bias_field": _coarse_field(rng, 48.0, 1),
        "csf_ratio": rng.uniform(0.15, 0.32),
        "gm_ratio": rng.uniform(0.58, 0.72),
        "sgm_boost": rng.uniform(1.03, 1.12),
        "wm_level": WM_NORM * rng.uniform(0.97, 1.03),
        "offset": 0.0,
        "dtype": "float32",
        "noise": rng.uniform(0.01, 0.03),
        "noise_seed": int(rng.integers(2**31)),
    }
    if shifted:
        params.update(
            vent=params["vent"] + 1.0,
            csf_ratio=rng.uniform(0.3, 0.42),
            gm_ratio=rng.uniform(0.74, 0.82),
            bias_amp=rng.uniform(0.2, 0.3),
            wm_level=rng.uniform(1500.0, 3000.0),
            offset=rng.uniform(20.0, 120.0),
            dtype="int16",
            noise=rng.uniform(0.03, 0.05),
        )
    return params


def _contrast(t1: np.ndarray, params: dict) -> np.ndarray:
    """Template intensities (white matter = 1) mapped to the subject's tissue contrast (white matter = 1)."""
    knots = [0.0, _TEMPLATE_CSF, _TEMPLATE_GM, _TEMPLATE_WM, 1.2]
    values = [0.0, params["csf_ratio"], params["gm_ratio"], 1.0, 1.1]
    return np.interp(t1, knots, values).astype(np.float32)


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Distance (voxels) of each voxel of ``mask`` to the nearest voxel outside it (0 outside)."""
    return ndimage.distance_transform_edt(mask).astype(np.float32)


def _synthesise(params: dict, pts: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Image and seg4 labels (uint8) of one subject at reference points ``pts`` (3, N) in mm, as arrays of ``shape``.

    The image follows the subject's intensity convention (neurite-oasis: float32, white matter ~110/255).
    """
    tpl = _template()
    centre = np.array([0.0, SLICE_Y_MM, 10.0])[:, None]
    mat = _rotation(params["angles"]) @ np.diag(params["scale"])
    q = mat @ (pts - centre) + centre + params["shift"][:, None]
    q[0] *= 1.0 + params["asymmetry"] * np.tanh(pts[0] / 8.0)  # one hemisphere wider than the other
    disp = _eval_coarse(params["def_field"], pts, 24.0)
    q = q + disp * (params["def_amp"] / 0.6)  # spline-smoothed unit noise has std ~0.6
    vox = tpl["inv_affine"][:3, :3] @ q + tpl["inv_affine"][:3, 3:]
    if params["vent"] != 0:
        g = np.stack([ndimage.map_coordinates(c, vox, order=1, mode="constant") for c in tpl["vgrad"]])
        vox = vox + params["vent"] * g  # sample closer to (vent > 0) / further from the ventricles
    t1 = ndimage.map_coordinates(tpl["t1"], vox, order=1, mode="constant", cval=0.0).reshape(shape)
    # labels: linear interpolation of the one-hot maps (outside the template is background), then argmax
    prob = np.stack([ndimage.map_coordinates(c, vox, order=1, mode="constant") for c in tpl["onehot"]])
    prob[0] += prob.sum(0) < 0.5
    seg = np.argmax(prob, axis=0).astype(np.uint8).reshape(shape)
    head = t1 > 1e-3

    img = _contrast(t1, params)
    sgm = prob[2].reshape(shape)
    img *= 1.0 + (params["sgm_boost"] - 1.0) * sgm  # deep grey matter is brighter than cortex in T1
    csf_level = params["csf_ratio"]

    # atrophy: cortex next to the outside of the brain turns into sulcal CSF (label 0 in FreeSurfer's aseg)
    if params["thinning"] > 0:
        depth = _distance_inside(seg > 0)
        vary = 1.0 + 0.5 * np.tanh(_eval_coarse(params["thinning_field"], pts, 16.0)[0].reshape(shape))
        lost = (seg == 1) & (depth <= params["thinning"] * vary)
        seg[lost] = 0
        img[lost] = csf_level * (0.8 + 0.4 * sgm[lost])

    # non-brain rim left by skull stripping: patchy tissue and fluid just outside the brain, labelled background
    outside = _distance_inside(~head)
    rim_noise = _eval_coarse(params["rim_field"], pts, 8.0).reshape(2, *shape)
    rim = (outside > 0) & (outside <= params["rim_width"] * (1.0 + 0.6 * np.tanh(rim_noise[0])))
    rim &= rim_noise[1] > -0.3
    img[rim] = np.clip(0.6 + 0.9 * rim_noise[1][rim], 0.1, 2.3)  # dura / vessels brighter than white matter
    inside = head | rim

    bias = params["bias_amp"] * np.tanh(_eval_coarse(params["bias_field"], pts, 48.0)[0].reshape(shape))
    noise = np.random.default_rng(params["noise_seed"]).standard_normal(shape)
    img = np.where(inside, img * np.exp(bias) + params["noise"] * noise, 0.0)
    img = np.clip(img, 0.0, None) * params["wm_level"] + params["offset"]
    if params["dtype"] == "int16":
        img = np.round(np.clip(img, 0, 32767)).astype(np.int16)
    else:
        img = np.clip(img, 0.0, 1.0).astype(np.float32)  # neurite-oasis: norm/255 stays in [0, 1]
    return img, seg


def _reference_points(y_mm: float, spatial_dims: int) -> np.ndarray:
    """Reference (MNI mm) coordinates (3, N) of the output grid; 2D is the coronal plane at ``y_mm``."""
    ii = np.arange(SLICE_SHAPE[0], dtype=np.float64)
    jj = np.arange(SLICE_SHAPE[1], dtype=np.float64)
    kk = np.array([SLICE_INDEX], dtype=np.float64) if spatial_dims == 2 else np.arange(VOLUME_SHAPE[2], dtype=float)
    i, j, k = np.meshgrid(ii, jj, kk, indexing="ij")
    return np.stack([79.5 - i, y_mm + (k - SLICE_INDEX), 96.0 - j]).reshape(3, -1)


def generate_subject(
    seed: int, index: int, spatial_dims: int = 2, shifted: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Image and seg4 label array of demo subject ``index`` (1-based): (160, 192) for 2D, (160, 192, 224) for 3D.

    ``shifted`` draws the subject from the out-of-distribution ``test_shifted`` population (see ``_draw_params``).
    Redraws (deterministically) in the rare case that a foreground class is missing from the slice.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    shape = SLICE_SHAPE if spatial_dims == 2 else VOLUME_SHAPE
    for attempt in range(10):
        params = _draw_params(seed, index if attempt == 0 else index + 100003 * attempt, shifted)
        img, seg = _synthesise(params, _reference_points(SLICE_Y_MM + params["y_jitter"], spatial_dims), shape)
        if np.all(np.bincount(seg.ravel(), minlength=NUM_CLASSES)[1:] > 0):
            break
    return img, seg


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(arr.dtype)
    nib.save(img, str(path))


def _manifest_params(
    num_train: int, num_val: int, num_test: int, num_test_shifted: int, seed: int, spatial_dims: int
) -> dict:
    return {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_test_shifted": num_test_shifted,
        "seed": seed,
        "spatial_dims": spatial_dims,
    }


def _read_manifest(dataset_dir: Path) -> dict | None:
    try:
        with open(dataset_dir / MANIFEST_NAME) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME else None


def _is_complete(dataset_dir: Path, manifest: dict | None, params: dict) -> bool:
    """Whether ``manifest`` describes a complete dataset generated with ``params`` (or a 3D superset of it)."""
    if manifest is None or manifest.get("version") != GENERATOR_VERSION:
        return False
    old = manifest.get("params", {})
    same = all(old.get(k) == v for k, v in params.items() if k != "spatial_dims")
    if not same or old.get("spatial_dims", 0) < params["spatial_dims"]:
        return False
    return all((dataset_dir / f).is_file() for f in manifest.get("files", []))


def _foreign_entries(dataset_dir: Path, manifest: dict) -> list[str]:
    """Top-level entries of ``dataset_dir`` that the generator run described by ``manifest`` did not write."""
    ours = {MANIFEST_NAME} | {Path(f).parts[0] for f in manifest.get("files", [])}
    return sorted(set(os.listdir(dataset_dir)) - ours)


def _foreign_hint(dataset_dir: Path, foreign: list[str]) -> str:
    """How to get rid of ``foreign`` entries of ``dataset_dir`` (and where MONAI Label's come from)."""
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    hint = f"dataset_dir {dataset_dir} holds files the demo-data generator did not write ({shown})"
    if {".lock", "labels", "datastore_v2.json"} & set(foreign):
        hint += (
            "; .lock, labels/ and datastore_v2.json are what MONAI Label writes into its studies folder: serve the "
            f"demo images with tools/serve_monailabel.sh --studies {dataset_dir}, which only reads it"
        )
    return hint + f". Move them out of {dataset_dir} or delete them."


def _check_not_foreign(dataset_dir: Path, manifest: dict | None) -> None:
    """Refuse to (re)generate into a non-empty directory whose content was not all written by this generator."""
    if not dataset_dir.exists():
        return
    if not dataset_dir.is_dir():
        raise ValueError(f"demo dataset_dir {dataset_dir} exists and is not a directory")
    if not os.listdir(dataset_dir):
        return
    if manifest is None:
        raise ValueError(
            f"dataset_dir {dataset_dir} is not empty and was not created by the demo-data generator (no valid "
            f"{MANIFEST_NAME}); refusing to overwrite it. Point dataset_dir at an empty or new folder, or use the "
            "real neurite-oasis data there with the demo data disabled."
        )
    foreign = _foreign_entries(dataset_dir, manifest)
    if foreign:
        raise ValueError(
            _foreign_hint(dataset_dir, foreign)
            + " The demo data must be regenerated there; refusing until they are gone."
        )


def prepare_demo_data(
    dataset_dir: str,
    num_train: int = 80,
    num_val: int = 20,
    num_test: int = 20,
    seed: int = 0,
    spatial_dims: int = 2,
    overwrite: bool = False,
    num_test_shifted: int | None = None,
) -> str:
    """Generate (or reuse, if already generated with the same parameters) the demo dataset.

    Returns the path of its splits JSON.
    Writes the neurite-oasis layout (``OASIS_OAS1_0001_MR1/slice_norm.nii.gz``, ``slice_seg4.nii.gz``, for 3D also
    ``aligned_norm.nii.gz`` / ``aligned_seg4.nii.gz``, plus ``subjects.txt``, ``seg4_labels.txt``) and a splits
    JSON (``demo_splits.json`` / ``demo_splits_3d.json``) with ``img``/``seg4`` paths relative to ``dataset_dir``:
    ``train``, ``val``, ``test`` and ``test_shifted`` (``num_test_shifted`` out-of-distribution subjects, as many as
    ``num_test`` by default; see ``_draw_params``). Generation happens in a temporary sibling directory that replaces
    ``dataset_dir`` only when complete; a non-empty ``dataset_dir`` not created by this generator is refused with
    ``ValueError``. Files another program left in a complete demo folder (e.g. MONAI Label's ``.lock`` and
    ``labels/``) are named in a warning and otherwise ignored; they are refused, named, only when the folder has to be
    regenerated.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    num_test_shifted = num_test if num_test_shifted is None else num_test_shifted
    counts = (int(num_train), int(num_val), int(num_test), int(num_test_shifted))
    if min(counts) < 0 or sum(counts) < 1:
        raise ValueError(f"subject counts must be >= 0 with at least one subject, got {counts}")
    params = _manifest_params(*counts, int(seed), int(spatial_dims))
    out = Path(dataset_dir).expanduser().absolute()
    splits_path = out / SPLITS_NAME[spatial_dims]
    manifest = _read_manifest(out)
    if not overwrite and _is_complete(out, manifest, params) and splits_path.is_file():
        foreign = _foreign_entries(out, manifest)
        if foreign:  # the demo data are intact and read by name: say so, and go on
            logging.getLogger(__name__).warning(_foreign_hint(out, foreign) + " They are not used.")
        return str(splits_path)
    _check_not_foreign(out, manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        files = _write_dataset(tmp, params)
        with open(tmp / MANIFEST_NAME, "w") as f:  # manifest last: its presence marks a complete dataset
            manifest = {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params, "files": files}
            json.dump(manifest, f, indent=1)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(splits_path)


def dataset_folder(dataset_dir: str, demo_dir: str, seed: int = 0, spatial_dims: int = 2) -> str:
    """``dataset_dir``, after generating the demo dataset into it when it is the demo folder (``demo_dir``).

    The configs' ``dataset_root`` calls this, and only the expressions that read the dataset's splits refer to it, so
    the demo data are made when a workflow reads them and never when it segments the user's own ``--datalist``.
    """
    if os.path.abspath(str(dataset_dir)) == os.path.abspath(str(demo_dir)):
        prepare_demo_data(str(demo_dir), seed=seed, spatial_dims=spatial_dims)
    return str(dataset_dir)


def _write_dataset(root: Path, params: dict) -> list[str]:
    """Write all subjects, text files and splits into ``root``; return the written paths relative to ``root``."""
    n_train, n_val, n_test = params["num_train"], params["num_val"], params["num_test"]
    n_shifted = params["num_test_shifted"]
    n_regular = n_train + n_val + n_test
    subjects = [DEMO_SUBJECT_FMT.format(i) for i in range(1, n_regular + n_shifted + 1)]
    files: list[str] = []
    for index, name in enumerate(subjects, start=1):
        (root / name).mkdir()
        img, seg = generate_subject(params["seed"], index, params["spatial_dims"], shifted=index > n_regular)
        if params["spatial_dims"] == 3:
            _save(root / name / "aligned_norm.nii.gz", img, AFFINE_3D)
            _save(root / name / "aligned_seg4.nii.gz", seg, AFFINE_3D)
            files += [f"{name}/aligned_norm.nii.gz", f"{name}/aligned_seg4.nii.gz"]
            img, seg = np.ascontiguousarray(img[:, :, SLICE_INDEX]), np.ascontiguousarray(seg[:, :, SLICE_INDEX])
        _save(root / name / "slice_norm.nii.gz", img, AFFINE)
        _save(root / name / "slice_seg4.nii.gz", seg, AFFINE)
        files += [f"{name}/slice_norm.nii.gz", f"{name}/slice_seg4.nii.gz"]
    (root / "subjects.txt").write_text("".join(s + "\n" for s in subjects))
    lut = "".join("{:<4d}{:<30s}{:>4d}{:>4d}{:>4d}{:>4d}\n".format(*e) for e in SEG4_LABELS)
    (root / "seg4_labels.txt").write_text(lut)
    files += ["subjects.txt", "seg4_labels.txt"]
    groups = {
        "train": subjects[:n_train],
        "val": subjects[n_train : n_train + n_val],
        "test": subjects[n_train + n_val : n_regular],
        "test_shifted": subjects[n_regular:],
    }
    for dims in range(2, params["spatial_dims"] + 1):
        prefix = "slice" if dims == 2 else "aligned"
        splits = {
            k: [{"img": f"{s}/{prefix}_norm.nii.gz", "seg4": f"{s}/{prefix}_seg4.nii.gz"} for s in v]
            for k, v in groups.items()
        }
        with open(root / SPLITS_NAME[dims], "w") as f:
            json.dump(splits, f, indent=1)
        files.append(SPLITS_NAME[dims])
    return files
