"""Vendor SynthSeg's 20 training label maps onto the demo volume grid (run once, offline; re-runnable).

Usage, from the bundle root (the maps come from the SynthSeg repository, Apache-2.0, ``BBillot/SynthSeg``)::

    python tools/vendor_label_maps.py --git-dir <SynthSeg .git dir>      # reads HEAD:data/training_label_maps/
    python tools/vendor_label_maps.py --src <folder with training_seg_01..20.nii.gz> --commit <sha>

For each map ``training_seg_XX.nii.gz`` (256^3, 1 mm, FreeSurfer labels) an affine (12 parameters) from the map's
world space to the demo volume grid (``scripts.demo_data.anatomy``: 160x192x224, LIA, coronal slice 109 at MNI
y = -16 mm, the same placement of the MNI152 template as ``synthesis._reference_grid``) is fitted by registering the
map's brain mask (every label except 0, 24 and the 5xx non-brain classes) to the brain mask of the MNI152 template
the generator already uses (``anatomy.template()``: labels > 0, holes filled): initialisation by moments (centroids,
per-axis spread), then soft-Dice maximisation (L-BFGS, analytic gradient) on a 4 mm and then a 2 mm grid. The map is
then resampled (nearest neighbour) to the demo grid and its FreeSurfer labels recoded to uint8 codes
(``scripts.demo_data.label_maps.CODE_TABLE``). Output: ``scripts/demo_data/label_maps.npz`` (ZIP with LZMA: ``map_01``
.. ``map_20`` uint8 160x192x224, ``codes`` (the FreeSurfer value of each code), ``names``, ``world_to_grid`` (20, 4, 4),
``dice`` and provenance strings) and ``tools/label_maps_placement.json`` (per-map Dice of the placed brain mask with
the MNI152 brain mask, on the 1 mm demo grid).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, optimize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.demo_data import anatomy  # noqa: E402
from scripts.demo_data.label_maps import CODE_TABLE, FILE_NAMES, NON_BRAIN, VENDORED_FILE  # noqa: E402

MAP_DIR = "data/training_label_maps"
REPOSITORY = "https://github.com/BBillot/SynthSeg"
METHOD = (
    "12-parameter affine from each map's world space to the demo grid, fitted by registering the map's brain mask "
    "(labels except 0, 24, 5xx) to the MNI152 brain mask of scripts.demo_data.anatomy.template() (labels > 0, holes "
    "filled) placed as synthesis._reference_grid places it: moments initialisation, then soft-Dice maximisation "
    "(L-BFGS) on 4 mm and 2 mm grids; nearest-neighbour resampling to 160x192x224. Dice: placed brain mask vs MNI152 "
    "brain mask on the 1 mm demo grid."
)


def grid_to_mni(step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """MNI mm coordinates (3, N) of the demo grid's voxel centres (every ``step``-th voxel) and the grid's shape.

    Same placement as ``synthesis._reference_grid`` without jitter: x = 79.5 - i, z = 96 - j, y = -16 + (k - 109).
    """
    ii, jj, kk = (np.arange(0, n, step, dtype=np.float64) for n in anatomy.VOLUME_SHAPE)
    x, z, y = np.meshgrid(79.5 - ii, 96.0 - jj, anatomy.SLICE_Y_MM + (kk - anatomy.SLICE_INDEX), indexing="ij")
    return np.stack([x, y, z]).reshape(3, -1), x.shape


def grid_vox_to_mni() -> np.ndarray:
    """4x4 affine from demo grid voxel indices (i, j, k) to MNI mm (``grid_to_mni``)."""
    return np.array(
        [[-1.0, 0, 0, 79.5], [0, 0, 1, anatomy.SLICE_Y_MM - anatomy.SLICE_INDEX], [0, -1.0, 0, 96.0], [0, 0, 0, 1]]
    )


def mni_brain_mask() -> tuple[np.ndarray, np.ndarray]:
    """The generator's MNI152 brain mask (template labels > 0, holes filled) and its voxel-to-MNI affine."""
    tpl = anatomy.template()
    return ndimage.binary_fill_holes(tpl["labels"] > 0), tpl["affine"]


def brain_mask(labels: np.ndarray) -> np.ndarray:
    """Brain of a SynthSeg map: every label except 0, extra-cerebral CSF (24) and the 5xx non-brain classes."""
    return (labels > 0) & (labels != 24) & ~np.isin(labels, NON_BRAIN)


def sample_mask(mask: np.ndarray, inv_affine: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sample of a boolean volume at mm points (3, N) through ``inv_affine`` (mm -> voxel)."""
    vox = inv_affine[:3, :3] @ pts + inv_affine[:3, 3:]
    return ndimage.map_coordinates(mask.astype(np.uint8), vox, order=0, mode="constant", cval=0).astype(bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))


def _soft_dice_fit(
    moving: np.ndarray, fixed: np.ndarray, pts: np.ndarray, centre: np.ndarray, mat: np.ndarray, sigma: float
) -> np.ndarray:
    """Refine ``mat`` (3x4: MNI mm - centre -> map voxel) by maximising the soft Dice of the blurred moving mask
    sampled at ``pts`` with the fixed mask there (L-BFGS on 12 parameters, analytic gradient)."""
    blurred = ndimage.gaussian_filter(moving.astype(np.float32), sigma)
    grads = np.gradient(blurred)
    rel = np.vstack([pts - centre[:, None], np.ones((1, pts.shape[1]))])  # (4, N)
    fixed_f = fixed.astype(np.float64)
    n_fixed = fixed_f.sum()
    scale = np.array([0.01] * 9 + [1.0] * 3)  # linear part per 0.01 (~1 voxel at 100 mm), shift per voxel

    def unpack(x: np.ndarray) -> np.ndarray:
        m = mat.copy()
        m[:, :3] += (x[:9] * scale[:9]).reshape(3, 3)
        m[:, 3] += x[9:]
        return m

    def loss(x: np.ndarray) -> tuple[float, np.ndarray]:
        q = unpack(x) @ rel
        w = ndimage.map_coordinates(blurred, q, order=1, mode="constant", cval=0.0)
        inter, total = float(fixed_f @ w), n_fixed + float(w.sum())
        d = 2.0 * inter / total
        dd_dw = (2.0 * fixed_f - d) / total  # d Dice / d w_n
        gq = np.stack([ndimage.map_coordinates(g, q, order=1, mode="constant", cval=0.0) for g in grads])
        gm = (gq * dd_dw) @ rel.T  # (3, 4): d Dice / d mat
        grad = np.concatenate([gm[:, :3].ravel() * scale[:9], gm[:, 3]])
        return -d, -grad

    res = optimize.minimize(loss, np.zeros(12), jac=True, method="L-BFGS-B", options={"maxiter": 150})
    return unpack(res.x)


def place(labels: np.ndarray, affine: np.ndarray, fixed_mask: np.ndarray, fixed_affine: np.ndarray) -> dict:
    """Fit the map's placement; returns ``world_to_grid`` (4x4) and the Dice before / after the fit (1 mm grid)."""
    moving = brain_mask(labels)
    if not moving.any():
        raise ValueError("no brain labels")
    inv_fixed = np.linalg.inv(fixed_affine)
    # moments: centroids and per-axis spread (in world mm) of the two brain masks
    pts_f, _ = grid_to_mni(2)
    f2 = sample_mask(fixed_mask, inv_fixed, pts_f)
    cf, sf = pts_f[:, f2].mean(1), pts_f[:, f2].std(1)
    nz = np.argwhere(moving[::2, ::2, ::2]).T * 2.0
    wm = affine[:3, :3] @ nz + affine[:3, 3:]
    cm, sm = wm.mean(1), wm.std(1)
    inv_map = np.linalg.inv(affine)
    # mat: (MNI mm - cf) -> map voxel; initial world map: x -> cm + diag(sm / sf) (x - cf)
    mat = np.hstack([inv_map[:3, :3] @ np.diag(sm / sf), (inv_map[:3, :3] @ cm + inv_map[:3, 3])[:, None]])
    init = mat.copy()
    for step, sigma in ((4, 2.0), (2, 1.0)):
        pts, _ = grid_to_mni(step)
        fixed = sample_mask(fixed_mask, inv_fixed, pts)
        mat = _soft_dice_fit(moving, fixed, pts, cf, mat, sigma)
    mni_to_vox = np.vstack([np.hstack([mat[:, :3], (mat[:, 3] - mat[:, :3] @ cf)[:, None]]), [0, 0, 0, 1]])
    grid_to_vox = mni_to_vox @ grid_vox_to_mni()
    init_to_vox = np.vstack([np.hstack([init[:, :3], (init[:, 3] - init[:, :3] @ cf)[:, None]]), [0, 0, 0, 1]])
    return {
        "grid_to_vox": grid_to_vox,
        "world_to_grid": np.linalg.inv(affine @ grid_to_vox),
        "init_to_vox": init_to_vox @ grid_vox_to_mni(),
    }


def resample(labels: np.ndarray, grid_to_vox: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a label volume to the demo grid (160x192x224)."""
    ijk = np.indices(anatomy.VOLUME_SHAPE, dtype=np.float32).reshape(3, -1)
    vox = grid_to_vox[:3, :3].astype(np.float32) @ ijk + grid_to_vox[:3, 3:].astype(np.float32)
    del ijk
    out = ndimage.map_coordinates(labels, vox, order=0, mode="constant", cval=0)
    return out.reshape(anatomy.VOLUME_SHAPE)


def recode(labels: np.ndarray, name: str) -> np.ndarray:
    """FreeSurfer labels -> uint8 codes of ``CODE_TABLE``; an unknown label is an error naming the map."""
    values = np.unique(labels)
    known = np.array([v for v, _ in CODE_TABLE])
    unknown = sorted(set(values.tolist()) - set(known.tolist()))
    if unknown:
        raise ValueError(f"{name}: labels not in the code table: {unknown}")
    lut = np.zeros(int(known.max()) + 1, dtype=np.uint8)
    lut[known] = np.arange(len(known), dtype=np.uint8)
    return lut[labels]


def read_maps(args: argparse.Namespace) -> tuple[dict[str, bytes], str]:
    """The 20 map files' bytes and the source commit (from ``--git-dir`` HEAD or ``--src`` + ``--commit``)."""
    files: dict[str, bytes] = {}
    commit = args.commit or "unknown"
    if args.git_dir:
        git = ["git", f"--git-dir={args.git_dir}"]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        for name in FILE_NAMES:
            proc = subprocess.run([*git, "show", f"HEAD:{MAP_DIR}/{name}"], capture_output=True)
            if proc.returncode != 0:
                raise FileNotFoundError(f"{name}: not in {args.git_dir} at HEAD ({proc.stderr.decode().strip()})")
            files[name] = proc.stdout
    else:
        for name in FILE_NAMES:
            files[name] = (Path(args.src) / name).read_bytes()
    for name, data in files.items():
        if data[:2] != b"\x1f\x8b":  # e.g. a Git LFS pointer instead of the gzip file
            raise ValueError(f"{name}: not a gzip-compressed NIfTI file ({len(data)} bytes: {data[:40]!r})")
    return files, commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--git-dir", help="SynthSeg repository's git directory (reads HEAD)")
    source.add_argument("--src", help="folder holding training_seg_01..20.nii.gz")
    parser.add_argument("--commit", default="", help="SynthSeg commit the --src files come from")
    parser.add_argument("--out", default=str(VENDORED_FILE))
    parser.add_argument("--report", default=str(ROOT / "tools" / "label_maps_placement.json"))
    args = parser.parse_args()

    files, commit = read_maps(args)
    fixed_mask, fixed_affine = mni_brain_mask()
    pts1, _ = grid_to_mni(1)
    fixed1 = sample_mask(fixed_mask, np.linalg.inv(fixed_affine), pts1).reshape(anatomy.VOLUME_SHAPE)
    del pts1
    maps, placements, report = [], [], []
    for name in FILE_NAMES:
        t0 = time.time()
        try:
            img = nib.Nifti1Image.from_bytes(gzip.decompress(files[name]))
            labels = np.rint(np.asarray(img.dataobj)).astype(np.int32)
        except Exception as err:  # any decoding failure: name the file
            raise ValueError(f"{name}: unreadable label map ({type(err).__name__}: {err})") from err
        if labels.ndim != 3:
            raise ValueError(f"{name}: expected a 3D label map, got shape {labels.shape}")
        recode(labels, name)  # a label outside the code table stops here, before the fit
        try:
            fit = place(labels, img.affine, fixed_mask, fixed_affine)
        except ValueError as err:
            raise ValueError(f"{name}: cannot place the map: {err}") from err
        placed = resample(labels, fit["grid_to_vox"])
        initial = resample(labels, fit["init_to_vox"])
        entry = {
            "file": name,
            "sha256": hashlib.sha256(files[name]).hexdigest(),
            "dice_moments": round(dice(brain_mask(initial), fixed1), 4),
            "dice": round(dice(brain_mask(placed), fixed1), 4),
            "scales": np.round(np.linalg.svd(fit["world_to_grid"][:3, :3])[1], 3).tolist(),
            "world_to_grid": np.round(fit["world_to_grid"], 6).tolist(),
        }
        report.append(entry)
        print(f"{name}: Dice {entry['dice_moments']:.3f} (moments) -> {entry['dice']:.3f} ({time.time() - t0:.0f} s)")
        maps.append(recode(placed, name))
        placements.append(fit["world_to_grid"])
    arrays = {
        **{f"map_{i + 1:02d}": m for i, m in enumerate(maps)},  # one member per map: np.load reads them lazily
        "codes": np.array([v for v, _ in CODE_TABLE], dtype=np.int16),
        "names": np.array([n for _, n in CODE_TABLE]),
        "files": np.array(list(FILE_NAMES)),
        "world_to_grid": np.stack(placements),
        "dice": np.array([e["dice"] for e in report]),
        "source": np.array(f"{REPOSITORY} @ {commit}, {MAP_DIR}/ (Apache-2.0); see docs/data_license.txt"),
    }
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_LZMA) as zf:  # np.load reads it like any .npz
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(2020, 1, 1, 0, 0, 0))  # fixed: reproducible bytes
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_LZMA)
    tmp.replace(out)
    dices = [e["dice"] for e in report]
    summary = {
        "source": f"{REPOSITORY} @ {commit}",
        "method": METHOD,
        "vendored_file": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
        "vendored_bytes": out.stat().st_size,
        "dice_min": min(dices),
        "dice_mean": round(float(np.mean(dices)), 4),
        "maps": report,
    }
    Path(args.report).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB); Dice min {min(dices):.3f}, mean {np.mean(dices):.3f}")


if __name__ == "__main__":
    main()
