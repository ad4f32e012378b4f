"""One demo subject: a random affine + elastic deformation, atrophy and intensity model applied to the template."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .anatomy import NUM_CLASSES, SLICE_INDEX, SLICE_SHAPE, SLICE_Y_MM, VOLUME_SHAPE, template

__all__ = ["SHIFT_PARTS", "WM_NORM", "generate_subject", "warm_up"]


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


_SPLINE_PAD = 12  # map_coordinates(mode="nearest", order > 1) pads the input by 12 edge values before its spline filter


def _cubic_weights(coord: np.ndarray, n: int) -> tuple[np.ndarray, slice]:
    """Cubic B-spline weights of spline coefficients ``0..n-1`` at coordinates ``coord`` (1D, in coefficient units).

    Returns the (len(coord), taps) weight matrix of the coefficients that any coordinate reads, and their slice.
    """
    start = np.floor(coord).astype(np.intp) - 1
    t = coord - (start + 1)
    w = np.stack([(1 - t) ** 3, ((3 * t - 6) * t) * t + 4, ((-3 * t + 3) * t + 3) * t + 1, t**3], axis=1) / 6.0
    lo, hi = int(start.min()), int(start.max()) + 4
    if lo < 0 or hi > n:
        raise ValueError(f"coordinates {coord.min()}..{coord.max()} outside the spline's support 0..{n - 1}")
    out = np.zeros((len(coord), hi - lo))
    out[np.arange(len(coord))[:, None], start[:, None] - lo + np.arange(4)] = w
    return out, slice(lo, hi)


def _eval_coarse_grid(field: np.ndarray, grid: tuple[np.ndarray, ...], spacing: float) -> np.ndarray:
    """``_eval_coarse`` at all points of the output grid ``grid`` (see ``_reference_grid``) -> (channels, N).

    The same cubic spline (``map_coordinates``' edge padding and spline filter, mode "nearest"), evaluated separably
    (three small matrix products instead of 64 coefficients read per point): tens of times faster on a 3D volume,
    equal to ``_eval_coarse`` up to rounding (~1e-15 relative), not bit for bit.
    """
    x, z, y = grid  # mm along the output axes i, j, k; the field's axes are x, y, z
    n = np.array(field.shape[1:]) + 2 * _SPLINE_PAD
    (wx, sx), (wy, sy), (wz, sz) = (
        _cubic_weights((a - lo) / spacing + _SPLINE_PAD, m) for a, lo, m in zip((x, y, z), _DOMAIN_LO, n)
    )
    out = np.empty((len(field), len(x) * len(z) * len(y)))
    for c, f in enumerate(field):
        coef = ndimage.spline_filter(np.pad(f, _SPLINE_PAD, mode="edge"), order=3, output=np.float64, mode="nearest")
        v = np.tensordot(wx, coef[sx, sy, sz], axes=(1, 0))  # (i, y, z)
        v = np.tensordot(v, wz, axes=(2, 1))  # (i, y, j)
        out[c] = np.matmul(v.transpose(0, 2, 1), wy.T).ravel()  # (i, j, k)
    return out


@functools.lru_cache(maxsize=1)
def _support_distance() -> np.ndarray:
    """Distance (template voxels) to the nearest template voxel with tissue or a foreground label (computed once)."""
    tpl = template()
    support = (tpl["t1"] > 0) | (tpl["labels"] > 0)
    return ndimage.distance_transform_edt(~support).astype(np.float32)


_MIXED = 255  # cell code: not one label (or subcortical grey matter, whose probability is read too)


@functools.lru_cache(maxsize=1)
def _template_cells() -> dict:
    """Per template cell (the 2x2x2 voxels from (i, j, k) to (i+1, j+1, k+1), which linear interpolation at a point
    in it reads; computed once): ``label``, the label of all 8 voxels where they share one other than 2, else
    ``_MIXED``; ``still``, whether the ventricle gradient (all 3 channels) is exactly 0 on all 8 voxels."""
    tpl = template()
    labels, still = tpl["labels"], np.all(tpl["vgrad"] == 0, axis=0)
    n = labels.shape
    corners = [tuple(slice(o, o + s - 1) for o, s in zip(offset, n)) for offset in np.ndindex(2, 2, 2)]
    first = labels[corners[0]]
    same = np.logical_and.reduce([labels[c] == first for c in corners[1:]]) & (first != 2)
    return {
        "label": np.where(same, first, _MIXED).astype(np.uint8),
        "still": np.logical_and.reduce([still[c] for c in corners]),
    }


def _cell_values(table: np.ndarray, vox: np.ndarray, fill) -> np.ndarray:
    """``table`` (see ``_template_cells``) at the cell of each point ``vox`` (3, M); ``fill`` where a point is not in
    a cell (it reads voxels beyond the template's edge)."""
    cell = np.floor(vox)
    inside = np.all((cell >= 0) & (cell <= np.array(table.shape)[:, None] - 1), axis=0)
    flat = np.ravel_multi_index(np.where(inside, cell, 0).astype(np.intp), table.shape)
    return np.where(inside, table.ravel()[flat], fill)


def _ventricle_shift(vox: np.ndarray, vent: float) -> np.ndarray:
    """Template voxel coordinates ``vox`` (3, M) moved by ``vent`` times the linearly interpolated ventricle gradient.

    The gradient reads exactly 0 in the cells where it is 0 (most of the template): those points keep their
    coordinates, the same as moving them by 0, and only the others are interpolated.
    """
    tpl = template()
    moves = ~_cell_values(_template_cells()["still"], vox, fill=False)
    g = np.stack([ndimage.map_coordinates(c, vox[:, moves], order=1, mode="constant") for c in tpl["vgrad"]])
    vox = vox.copy()
    vox[:, moves] += vent * g
    return vox


def _sample_labels(vox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """seg4 labels (uint8) and subcortical grey-matter probability at template voxel coordinates ``vox`` (3, M).

    Linear interpolation of the one-hot label maps (outside the template is background), then argmax. In a cell of
    one label that is its one-hot vector (times a weight sum ~1): the label, probability 0 unless it is 2 (those
    cells are left out), so only the points in the other cells are interpolated.
    """
    tpl = template()
    label = _cell_values(_template_cells()["label"], vox, fill=_MIXED)
    mixed = label == _MIXED
    prob = np.stack([ndimage.map_coordinates(c, vox[:, mixed], order=1, mode="constant") for c in tpl["onehot"]])
    prob[0] += prob.sum(0) < 0.5
    label[mixed] = np.argmax(prob, axis=0)
    sgm = np.zeros(vox.shape[1], dtype=prob.dtype)
    sgm[mixed] = prob[2]
    return label, sgm


def warm_up() -> None:
    """Derive the template and its distance map now (once per process), e.g. in a worker before its first subject."""
    template()
    _support_distance()
    _template_cells()


def _may_hit_template(vox0: np.ndarray, radius: float) -> np.ndarray:
    """Boolean (N,): whether template voxel coordinates ``vox0`` (3, N), moved by at most ``radius`` voxels, can be
    where linear interpolation of the template (t1, one-hot labels) reads a non-zero value.

    The other points read exactly zero there (t1 0, background label), so they need not be sampled. The distance map
    is read at the nearest voxel of the point clamped into the template box (rounding: < 1 voxel; the clamp only
    shortens distances to voxels inside the box); linear interpolation reads voxels within sqrt(3) of a point.
    """
    dist = _support_distance()
    idx = tuple(np.clip(np.rint(v), 0, n - 1).astype(np.intp) for v, n in zip(vox0, dist.shape))
    return dist[idx] <= radius + np.sqrt(3.0) + 1.0 + 2.0  # + 2 voxels to spare


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


# the parts of the ``test_shifted`` population's shift, by the subject parameters each one replaces ("anatomy": every
# parameter the other two do not name: age, atrophy, ventricles, cortical thinning)
_SHIFT_KEYS = {"contrast": ("csf_ratio", "gm_ratio"), "scanner": ("bias_amp", "wm_level", "offset", "dtype", "noise")}
SHIFT_PARTS = ("anatomy", "contrast", "scanner")


def _partly_shifted_params(seed: int, index: int, parts: tuple[str, ...]) -> dict:
    """Subject ``index``'s parameters with only ``parts`` (of ``SHIFT_PARTS``) drawn as a ``test_shifted`` subject's.

    Both draws share the generator's stream, so the other parameters (pose, deformation, noise seed, ...) are the
    subject's own: the same subject seen with, e.g., the shifted contrast alone.
    """
    unknown = sorted(set(parts) - set(SHIFT_PARTS))
    if unknown:
        raise ValueError(f"unknown shift parts {unknown}; choose from {list(SHIFT_PARTS)}")
    regular, shifted = _draw_params(seed, index, False), _draw_params(seed, index, True)
    intensity = {k for keys in _SHIFT_KEYS.values() for k in keys}
    keys = {k for part in parts if part != "anatomy" for k in _SHIFT_KEYS[part]}
    if "anatomy" in parts:
        keys |= set(shifted) - intensity
    return {**regular, **{k: shifted[k] for k in keys}}


def _contrast(t1: np.ndarray, params: dict) -> np.ndarray:
    """Template intensities (white matter = 1) mapped to the subject's tissue contrast (white matter = 1)."""
    knots = [0.0, _TEMPLATE_CSF, _TEMPLATE_GM, _TEMPLATE_WM, 1.2]
    values = [0.0, params["csf_ratio"], params["gm_ratio"], 1.0, 1.1]
    return np.interp(t1, knots, values).astype(np.float32)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the non-zero voxels of ``mask`` (not empty), grown by ``margin`` voxels within the array."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(box)


def _squared_distance_within(mask: np.ndarray, radius: int) -> np.ndarray:
    """Squared distance (uint8) of each voxel of ``mask`` to the nearest voxel outside it (0 outside; voxels beyond
    the array are not outside), exact where it is at most ``radius`` ** 2, ``radius`` ** 2 + 1 where larger
    (``radius`` <= 11: the sums stay within uint8).

    Three passes of a minimum over the offsets -radius..radius along one axis, each adding the offset squared: the
    nearest outside voxel of a point at most ``radius`` away is at most ``radius`` away along each axis.
    """
    if not 0 < radius <= 11:
        raise ValueError(f"radius must be in 1..11, got {radius}")
    cap = radius * radius + 1
    dist = np.where(mask, np.uint8(cap), np.uint8(0))
    for axis in range(mask.ndim):
        src, dist = dist, dist.copy()
        for d in range(1, min(radius, mask.shape[axis] - 1) + 1):
            hi = tuple(slice(d, None) if a == axis else slice(None) for a in range(mask.ndim))
            lo = tuple(slice(None, -d) if a == axis else slice(None) for a in range(mask.ndim))
            np.minimum(dist[hi], src[lo] + np.uint8(d * d), out=dist[hi])
            np.minimum(dist[lo], src[hi] + np.uint8(d * d), out=dist[lo])
        np.minimum(dist, np.uint8(cap), out=dist)  # keeps 2 * cap - 1 <= 255 in the next pass
    return dist


def _distance_inside(mask: np.ndarray, up_to: float | None = None) -> np.ndarray:
    """Distance (voxels) of each voxel of ``mask`` to the nearest voxel outside it (0 outside).

    Exact where it is at most ``up_to`` (if given; larger than ``up_to``, possibly inf, where larger). The distances
    are computed only in the box around ``mask`` (grown by 1: the nearest outside voxel is at least as close inside
    it) and, with ``up_to``, around the voxels outside ``mask`` grown by ``up_to`` + 1: the same distances as over
    the whole array, in less time. With ``up_to`` < 10 they come from ``_squared_distance_within`` (several times
    faster than a distance transform), otherwise from ``ndimage.distance_transform_edt``; both are exact.
    """
    if not mask.any() or mask.all():
        return ndimage.distance_transform_edt(mask).astype(np.float32)
    box = _bbox(mask, 1)
    out = np.zeros(mask.shape, dtype=np.float32)
    if up_to is not None:
        outer = _bbox(~mask, int(np.ceil(up_to)) + 1)
        box = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(box, outer))
        out[mask] = np.inf
        if up_to < 10:
            radius = int(np.floor(up_to)) + 1
            dist2 = _squared_distance_within(mask[box], radius)
            out[box] = np.where(dist2 <= radius * radius, np.sqrt(dist2.astype(np.float64)), np.inf)
            return out
    out[box] = ndimage.distance_transform_edt(mask[box])
    return out


def _synthesise(params: dict, grid: tuple[np.ndarray, ...], shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Image and seg4 labels (uint8) of one subject on the output grid ``grid`` (``_reference_grid``), of ``shape``.

    The image follows the subject's intensity convention (neurite-oasis: float32, white matter ~110/255). In 3D the
    deformation and bias fields are evaluated separably on the grid (``_eval_coarse_grid``); 2D evaluates them point
    by point, as generator version 2.0 did, so that 2D subjects stay the same bit for bit.
    """
    tpl = template()
    pts = _reference_points(grid)
    separable = len(shape) == 3
    centre = np.array([0.0, SLICE_Y_MM, 10.0])[:, None]
    mat = _rotation(params["angles"]) @ np.diag(params["scale"])
    q = mat @ (pts - centre) + centre + params["shift"][:, None]
    q[0] *= 1.0 + params["asymmetry"] * np.tanh(pts[0] / 8.0)  # one hemisphere wider than the other
    if separable:
        disp = _eval_coarse_grid(params["def_field"], grid, 24.0)
    else:
        disp = _eval_coarse(params["def_field"], pts, 24.0)
    q = q + disp * (params["def_amp"] / 0.6)  # spline-smoothed unit noise has std ~0.6
    vox = tpl["inv_affine"][:3, :3] @ q + tpl["inv_affine"][:3, 3:]
    # only the points that can land on the template are sampled (the others read exactly 0 there): every point is
    # computed on its own, so this is the same as sampling the whole grid, only faster
    near = _may_hit_template(vox, abs(params["vent"]) * np.sqrt(3.0))  # the ventricle shift: |vgrad| <= 1 per axis
    vox = vox[:, near]
    if params["vent"] != 0:
        vox = _ventricle_shift(vox, params["vent"])  # sample closer to (vent > 0) / further from the ventricles
    t1 = np.zeros(pts.shape[1], dtype=np.float32)
    t1[near] = ndimage.map_coordinates(tpl["t1"], vox, order=1, mode="constant", cval=0.0)
    t1 = t1.reshape(shape)
    label, sgm_near = _sample_labels(vox)
    seg = np.zeros(pts.shape[1], dtype=np.uint8)
    seg[near] = label
    seg = seg.reshape(shape)
    sgm = np.zeros(pts.shape[1], dtype=sgm_near.dtype)
    sgm[near] = sgm_near
    sgm = sgm.reshape(shape)
    del q, vox, disp
    head = t1 > 1e-3

    img = _contrast(t1, params)
    img *= 1.0 + (params["sgm_boost"] - 1.0) * sgm  # deep grey matter is brighter than cortex in T1
    csf_level = params["csf_ratio"]

    # atrophy: cortex next to the outside of the brain turns into sulcal CSF (label 0 in FreeSurfer's aseg)
    # (the thinning and rim fields are evaluated only where they can matter; each point is computed on its own)
    if params["thinning"] > 0:
        depth = _distance_inside(seg > 0, up_to=params["thinning"] * 1.5 + 1.0)
        near = (seg == 1) & (depth <= params["thinning"] * 1.5 + 1.0)  # vary < 1.5
        vary = 1.0 + 0.5 * np.tanh(_eval_coarse(params["thinning_field"], pts[:, near.ravel()], 16.0)[0])
        lost = np.zeros(shape, dtype=bool)
        lost[near] = depth[near] <= params["thinning"] * vary
        seg[lost] = 0
        img[lost] = csf_level * (0.8 + 0.4 * sgm[lost])

    # non-brain rim left by skull stripping: patchy tissue and fluid just outside the brain, labelled background
    outside = _distance_inside(~head, up_to=params["rim_width"] * 1.6 + 1.0)
    near = (outside > 0) & (outside <= params["rim_width"] * 1.6 + 1.0)  # 1 + 0.6 tanh < 1.6
    rim_noise = _eval_coarse(params["rim_field"], pts[:, near.ravel()], 8.0)
    in_rim = (outside[near] <= params["rim_width"] * (1.0 + 0.6 * np.tanh(rim_noise[0]))) & (rim_noise[1] > -0.3)
    rim = np.zeros(shape, dtype=bool)
    rim[near] = in_rim
    img[rim] = np.clip(0.6 + 0.9 * rim_noise[1][in_rim], 0.1, 2.3)  # dura / vessels brighter than white matter
    inside = head | rim

    if separable:
        bias_noise = _eval_coarse_grid(params["bias_field"], grid, 48.0)[0].reshape(shape)[inside]
    else:
        bias_noise = _eval_coarse(params["bias_field"], pts[:, inside.ravel()], 48.0)[0]
    bias = np.zeros(shape)  # read only inside
    bias[inside] = params["bias_amp"] * np.tanh(bias_noise)
    noise = np.random.default_rng(params["noise_seed"]).standard_normal(shape)
    img = np.where(inside, img * np.exp(bias) + params["noise"] * noise, 0.0)
    img = np.clip(img, 0.0, None) * params["wm_level"] + params["offset"]
    if params["dtype"] == "int16":
        img = np.round(np.clip(img, 0, 32767)).astype(np.int16)
    else:
        img = np.clip(img, 0.0, 1.0).astype(np.float32)  # neurite-oasis: norm/255 stays in [0, 1]
    return img, seg


def _reference_grid(y_mm: float, spatial_dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference (MNI mm) coordinates along the output grid's axes: x (first axis), z (second) and y (third; 2D is
    the coronal plane at ``y_mm``)."""
    ii = np.arange(SLICE_SHAPE[0], dtype=np.float64)
    jj = np.arange(SLICE_SHAPE[1], dtype=np.float64)
    kk = np.array([SLICE_INDEX], dtype=np.float64) if spatial_dims == 2 else np.arange(VOLUME_SHAPE[2], dtype=float)
    return 79.5 - ii, 96.0 - jj, y_mm + (kk - SLICE_INDEX)


def _reference_points(grid: tuple[np.ndarray, ...]) -> np.ndarray:
    """Reference (MNI mm) coordinates (3, N) of the points of ``grid`` (``_reference_grid``), in C order."""
    x, z, y = np.meshgrid(*grid, indexing="ij")
    return np.stack([x, y, z]).reshape(3, -1)


def generate_subject(
    seed: int, index: int, spatial_dims: int = 2, shifted: bool | Sequence[str] = False
) -> tuple[np.ndarray, np.ndarray]:
    """Image and seg4 label array of demo subject ``index`` (1-based): (160, 192) for 2D, (160, 192, 224) for 3D.

    ``shifted`` draws the subject from the out-of-distribution ``test_shifted`` population (see ``_draw_params``);
    a sequence of ``SHIFT_PARTS`` names shifts only those parts (e.g. ``["contrast"]``: the subject's anatomy and
    scanner with the shifted tissue contrast; a diagnostic, not used by the demo splits).
    Redraws (deterministically) in the rare case that a foreground class is missing from the slice.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    shape = SLICE_SHAPE if spatial_dims == 2 else VOLUME_SHAPE
    for attempt in range(10):
        drawn = index if attempt == 0 else index + 100003 * attempt
        if isinstance(shifted, bool):
            params = _draw_params(seed, drawn, shifted)
        else:
            parts = (shifted,) if isinstance(shifted, str) else tuple(shifted)
            params = _partly_shifted_params(seed, drawn, parts)
        img, seg = _synthesise(params, _reference_grid(SLICE_Y_MM + params["y_jitter"], spatial_dims), shape)
        if np.all(np.bincount(seg.ravel(), minlength=NUM_CLASSES)[1:] > 0):
            break
    return img, seg
