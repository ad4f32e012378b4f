"""Labels lie on their image in world space, whatever the image's orientation, axis order or pixel size.

Each case stores the same brain differently (flipped, reversed, transposed arrays with matching affines; finer or
coarser pixels of the same field of view; the anatomical LIA convention instead of neurite-oasis' identity affine),
segments it with the shipped weights through ``run inference``, and compares the written label with the canonical
copy's label in world coordinates: nibabel resamples one onto the other's grid (nearest neighbour). Demo files are
also read with SimpleITK, the reader of ITK-based viewers.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nibabel.processing import resample_from_to

from scripts.demo_data import AFFINE, AFFINE_3D, generate_subject
from tests.utils import run_bundle

pytestmark = pytest.mark.usefixtures("bundle_unchanged")

SUBJECT = 90  # a validation subject of the demo data (seed 0)
CLASSES = (1, 2, 3, 4)
# the anatomical convention of a coronal slice: axis 0 right->left, axis 1 superior->inferior
LIA_SLICE = np.array([[-1.0, 0, 0, 80], [0, 0, 1, -16], [0, -1.0, 0, 96], [0, 0, 0, 1]])


def _flip(axis: int, n: int) -> np.ndarray:
    """Index transform of reversing ``axis`` (``n`` pixels): new index -> old index."""
    f = np.eye(4)
    f[axis, axis], f[axis, 3] = -1.0, n - 1
    return f


def _resize(arr: np.ndarray, factor: float, order: int) -> np.ndarray:
    """``arr`` (2D or 3D) resampled by ``factor`` over the same field of view (pixel edges kept)."""
    x = torch.as_tensor(np.ascontiguousarray(arr), dtype=torch.float32)[None, None]
    size = [int(round(n * factor)) for n in arr.shape]
    mode = ("bilinear" if arr.ndim == 2 else "trilinear") if order else "nearest-exact"
    kwargs = {"align_corners": False} if order else {}
    if order and factor < 1:
        mode, kwargs = "area", {}
    return torch.nn.functional.interpolate(x, size=size, mode=mode, **kwargs)[0, 0].numpy()


def _grid(affine: np.ndarray, factor: float, axes: int = 2) -> np.ndarray:
    """The affine of the same field of view with pixels ``1 / factor`` as large along the first ``axes`` axes."""
    t = np.eye(4)
    for a in range(axes):
        t[a, a] = 1.0 / factor
        t[a, 3] = (1.0 / factor - 1.0) / 2.0
    return affine @ t


def _cases(img: np.ndarray, seg: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """case -> (image array, label array, affine): the same brain in every case, ``img`` / ``seg`` being (160, 192)."""
    h, w = img.shape
    swap = np.eye(4)[[1, 0, 2, 3]]
    cases = {
        "canonical (160x192x1, identity)": (img[..., None], seg[..., None], AFFINE),
        "2D file (160x192)": (img, seg, AFFINE),
        "left-right flipped": (img[::-1, :, None], seg[::-1, :, None], AFFINE @ _flip(0, h)),
        "inferior-superior reversed": (img[:, ::-1, None], seg[:, ::-1, None], AFFINE @ _flip(1, w)),
        "transposed": (img.T[..., None], seg.T[..., None], AFFINE @ swap),
        "rotated 180 degrees": (img[::-1, ::-1, None], seg[::-1, ::-1, None], AFFINE @ _flip(0, h) @ _flip(1, w)),
        "anatomical LIA convention": (img, seg, LIA_SLICE),
        "LIA, reversed and transposed": (img[:, ::-1].T, seg[:, ::-1].T, LIA_SLICE @ _flip(1, w) @ swap),
    }
    for mm in (0.5, 0.67, 1.5):
        f = 1.0 / mm
        cases[f"{mm} mm pixels"] = (_resize(img, f, 1)[..., None], _resize(seg, f, 0)[..., None], _grid(AFFINE, f))
    return {
        k: (np.ascontiguousarray(i, np.float32), np.ascontiguousarray(s, np.uint8), a) for k, (i, s, a) in cases.items()
    }


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    scores = []
    for c in CLASSES:
        denom = (pred == c).sum() + (ref == c).sum()
        scores.append(2.0 * np.logical_and(pred == c, ref == c).sum() / denom if denom else 1.0)
    return float(np.mean(scores))


def _as_3d(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """A 2D NIfTI as a one-slice 3D one (same affine), for nibabel's resampler."""
    data = np.asarray(img.dataobj)
    return nib.Nifti1Image(data.reshape(data.shape + (1,) * (3 - data.ndim)), img.affine)


def _segment(
    files: list[Path], out: Path, config: str = "configs/inference.json", args: tuple[str, ...] = (), check: bool = True
) -> subprocess.CompletedProcess:
    """``run inference`` on ``files`` with the shipped weights (the demo data are not generated)."""
    return run_bundle(
        "run",
        "inference",
        "--config_file",
        config,
        "--datalist",
        json.dumps([str(f) for f in files]),
        "--output_dir",
        str(out),
        "--dataset_dir",
        str(files[0].parent),
        *args,
        check=check,
        timeout=1200,
    )


def test_labels_lie_on_reoriented_and_resampled_slices(tmp_path):
    img, seg = generate_subject(0, SUBJECT)
    cases = _cases(img, seg)
    files = {}
    for i, (case, (arr, ref, affine)) in enumerate(cases.items()):
        folder = tmp_path / "in" / f"case{i}"
        folder.mkdir(parents=True)
        nib.save(nib.Nifti1Image(arr, affine), str(folder / "T1.nii.gz"))
        nib.save(nib.Nifti1Image(ref, affine), str(folder / "ref.nii.gz"))
        files[case] = folder / "T1.nii.gz"
    out = tmp_path / "out"
    _segment(list(files.values()), out)

    labels = {}
    for case, path in files.items():
        image, label = nib.load(str(path)), nib.load(str(out / path.parent.name / "T1_seg.nii.gz"))
        assert label.shape == image.shape, case  # the input's own grid...
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-4, err_msg=case)  # ...in the same place
        labels[case] = label
    canonical = _as_3d(labels["canonical (160x192x1, identity)"])
    lia = _as_3d(labels["anatomical LIA convention"])
    reference_dice = _dice(np.asarray(canonical.dataobj), seg[..., None])
    assert reference_dice > 0.8, reference_dice
    for case, label in labels.items():
        label = _as_3d(label)
        ref = np.asarray(_as_3d(nib.load(str(files[case].parent / "ref.nii.gz"))).dataobj)
        # Dice against the case's own reference labels, on its own grid
        dice = _dice(np.asarray(label.dataobj), ref)
        assert dice > reference_dice - 0.02, (case, dice, reference_dice)
        # the canonical copy's label, resampled in world space onto this case's grid (same convention)
        same_space = lia if "LIA" in case else canonical
        moved = np.asarray(resample_from_to(same_space, label, order=0).dataobj)
        pred = np.asarray(label.dataobj)
        brain = (pred > 0) | (moved > 0)
        agreement = float(np.mean(pred[brain] == moved[brain]))
        print(f"{case}: Dice {dice:.3f} (canonical {reference_dice:.3f}), world-space agreement {agreement:.3f}")
        # a 1 mm label moved onto finer or coarser pixels differs from a label decoded there at the boundaries
        assert agreement > (0.92 if "mm" in case else 0.99), (case, agreement)
    # the two conventions are the same arrays: the same labels
    np.testing.assert_array_equal(np.asarray(lia.dataobj)[..., 0], np.asarray(canonical.dataobj)[..., 0])


def test_labels_lie_on_reoriented_and_resampled_volumes(tmp_path):
    """A demo volume stored LIA (as trained), RAS, with axes 0 and 2 swapped, and at 1.5 mm voxels."""
    img, seg = generate_subject(0, SUBJECT, 3)
    swap = np.eye(4)[[2, 1, 0, 3]]
    f = 1.0 / 1.5
    ras = [nib.as_closest_canonical(nib.Nifti1Image(a, AFFINE_3D)) for a in (img, seg)]  # the same voxels, RAS
    cases = {
        "LIA": (img, seg, AFFINE_3D),
        "RAS": (np.asarray(ras[0].dataobj), np.asarray(ras[1].dataobj), ras[0].affine),
        "transposed": (img.transpose(2, 1, 0), seg.transpose(2, 1, 0), AFFINE_3D @ swap),
        "1.5 mm voxels": (_resize(img, f, 1), _resize(seg, f, 0), _grid(AFFINE_3D, f, axes=3)),
    }
    assert nib.aff2axcodes(cases["RAS"][2]) == ("R", "A", "S") and nib.aff2axcodes(cases["transposed"][2])[0] == "A"
    files = {}
    for case, (arr, _, affine) in cases.items():
        folder = tmp_path / case.replace(" ", "_").replace(".", "")
        folder.mkdir()
        files[case] = folder / "vol.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(arr, np.float32), affine), str(files[case]))
    out = tmp_path / "out"
    _segment(
        list(files.values()), out, config="['configs/inference.json','configs/3d.json']", args=("--fit_steps", "20")
    )
    labels = {}
    for case, path in files.items():
        label, image = nib.load(str(out / path.parent.name / "vol_seg.nii.gz")), nib.load(str(path))
        assert label.shape == image.shape, case
        np.testing.assert_allclose(label.affine, image.affine, atol=1e-4, err_msg=case)
        labels[case] = label
    reference_dice = _dice(np.asarray(labels["LIA"].dataobj), seg)
    assert reference_dice > 0.6, reference_dice
    for case, label in labels.items():
        pred = np.asarray(label.dataobj)
        dice = _dice(pred, np.ascontiguousarray(cases[case][1]))
        moved = np.asarray(resample_from_to(labels["LIA"], label, order=0).dataobj)
        brain = (pred > 0) | (moved > 0)
        agreement = float(np.mean(pred[brain] == moved[brain]))
        print(f"{case}: Dice {dice:.3f} (LIA {reference_dice:.3f}), world-space agreement {agreement:.3f}")
        assert dice > reference_dice - 0.02 and agreement > (0.9 if "mm" in case else 0.97), (case, dice, agreement)


def test_demo_slices_read_by_simpleitk_as_neurite_oasis_files(tiny_dataset):
    sitk = pytest.importorskip("SimpleITK")
    dataset_dir, _ = tiny_dataset
    for name in ("slice_norm.nii.gz", "slice_seg4.nii.gz"):
        path = sorted(dataset_dir.glob(f"*/{name}"))[0]
        image = sitk.ReadImage(str(path))  # ITK refuses singular directions ("determinant is 0")
        assert image.GetSize() == (160, 192, 1)
        assert image.GetSpacing() == (1.0, 1.0, 1.0)
        nifti = nib.load(str(path))
        assert nifti.shape == (160, 192, 1) and nifti.header["sform_code"] == 2
        np.testing.assert_array_equal(nifti.affine, np.eye(4))
        # the same world position for a voxel in both readers (ITK's LPS is RAS with x and y negated)
        ras = nifti.affine @ np.array([17, 101, 0, 1.0])
        lps = image.TransformIndexToPhysicalPoint((17, 101, 0))
        np.testing.assert_allclose(lps, ras[:3] * np.array([-1, -1, 1]))


@pytest.mark.parametrize(
    "change,phrase",
    [
        ("shifted", "does not lie on the image"),  # 30 mm along x
        ("flipped", "does not lie on the image"),  # stored reversed, with its matching affine
        ("empty", "is empty"),
    ],
)
def test_evaluation_refuses_a_label_that_is_not_on_its_image(change, phrase, tmp_path, tiny_dataset):
    dataset_dir, splits = tiny_dataset
    entry = json.loads(splits.read_text())["test"][0]
    root = tmp_path / "data"
    (root / "s").mkdir(parents=True)
    image = nib.load(str(dataset_dir / entry["img"]))
    nib.save(image, str(root / "s" / "slice_norm.nii.gz"))
    label = np.asarray(nib.load(str(dataset_dir / entry["seg4"])).dataobj)
    affine = image.affine.copy()
    if change == "shifted":
        affine[0, 3] += 30.0
    elif change == "flipped":
        label, affine = label[:, ::-1], affine @ _flip(1, label.shape[1])
    else:
        label = np.zeros_like(label)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(label), affine), str(root / "s" / "slice_seg4.nii.gz"))
    (tmp_path / "splits.json").write_text(
        json.dumps({"test": [{"img": "s/slice_norm.nii.gz", "seg4": "s/slice_seg4.nii.gz"}]})
    )
    proc = run_bundle(
        "run",
        "evaluating",
        "--config_file",
        "['configs/inference.json','configs/evaluate.json']",
        "--dataset_dir",
        str(root),
        "--splits_file",
        str(tmp_path / "splits.json"),
        "--output_dir",
        str(tmp_path / "out"),
        check=False,
    )
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert phrase in message and str(root / "s" / "slice_seg4.nii.gz") in message, message[-3000:]
    assert not list((tmp_path / "out").rglob("*.nii.gz"))


def _bomb(path: Path) -> None:
    """A small .nii.gz whose header claims 1024**3 voxels (its data would decompress to 4 GB)."""
    nifti = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), AFFINE)
    nifti.header.set_data_shape((1024, 1024, 1024))
    path.write_bytes(gzip.compress(nifti.header.binaryblock + b"\0" * 4 + b"\0" * 4096))


def test_refuses_images_that_cannot_be_a_brain(tmp_path):
    """Valid files that cannot be a brain image: all refused before any work, each file named with its cause."""
    img, seg = generate_subject(0, SUBJECT)
    sagittal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    header = nib.Nifti1Image(img, AFFINE).header.copy()
    header["srow_x"] = [np.nan, 0, 0, 0]  # MONAI's reader would silently fall back to another affine
    nan_sform = nib.Nifti1Image(img, None, header=header)
    cases = {
        "sagittal": (nib.Nifti1Image(img, sagittal), "sagittal slice"),
        "2000 mm field of view": (
            nib.Nifti1Image(np.pad(img, ((920, 920), (904, 904))), AFFINE),
            "a brain image covers",
        ),
        "3x3 pixels": (nib.Nifti1Image(np.ascontiguousarray(img[80:83, 90:93]), AFFINE), "only 9 distinct intensities"),
        "1x192 pixels": (nib.Nifti1Image(np.ascontiguousarray(img[80:81]), AFFINE), "a brain image covers"),
        "binary mask": (nib.Nifti1Image((img > 0.3).astype(np.float32), AFFINE), "only 2 distinct intensities"),
        "label map as the image": (nib.Nifti1Image(seg.astype(np.float32), AFFINE), "only 5 distinct intensities"),
        "complex values": (nib.Nifti1Image(img.astype(np.complex64) * (1 + 1j), AFFINE), "complex values"),
        "NaN in the sform": (nan_sform, "NaN or infinite"),
    }
    files = {}
    for i, (case, nifti) in enumerate(cases.items()):
        (tmp_path / f"case{i}").mkdir()
        files[case] = tmp_path / f"case{i}" / "T1.nii.gz"
        nib.save(nifti[0], str(files[case]))
    (tmp_path / "bomb").mkdir()
    files["decompression bomb"] = tmp_path / "bomb" / "T1.nii.gz"
    _bomb(files["decompression bomb"])
    phrases = {**{case: phrase for case, (_, phrase) in cases.items()}, "decompression bomb": "voxels"}
    proc = _segment(list(files.values()), tmp_path / "out", check=False)
    log = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode != 0
    assert any(f"{len(files)} of {len(files)} inputs cannot be segmented" in line for line in log), log[-40:]
    for case, path in files.items():
        assert any(str(path) in line and phrases[case] in line for line in log), (case, log[-40:])
    assert not list(tmp_path.glob("out/**/*.nii.gz"))
