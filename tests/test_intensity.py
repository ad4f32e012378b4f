"""Intensity normalization (scripts/intensity.py): scale- and offset-invariant; a clear error when no brain is found."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from scripts.demo_data import generate_subject
from scripts.intensity import (
    NormalizeBrainIntensity,
    NormalizeBrainIntensityd,
    brain_bias_field,
    brain_contrast_landmarks,
    brain_intensity_range,
    correct_bias_field,
    otsu_threshold,
)
from tests.utils import REPO_ROOT, run_inference_on_files, save_tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes

CONFIGS = ["configs/train.json", "configs/inference.json"]  # configs/train_unet.json layers on train.json
# the power law through the whole brain's 25th percentile: the configs' map up to release 0.16 (the paper preset's)
WHOLE_BRAIN_MAP = {"contrast_percentile": 25.0, "contrast_value": 0.595}
BIAS_SIGMA = 8.0  # the configs' bias-field correction sigma (pixels), chosen in release 0.16.4


@pytest.fixture(scope="module")
def slice_and_labels() -> tuple[torch.Tensor, np.ndarray]:
    img, seg = generate_subject(0, 1)
    return torch.as_tensor(img)[None], seg


def test_otsu_splits_two_levels():
    x = torch.cat([torch.zeros(1000), torch.full((500,), 3.0)]) + 0.01 * torch.randn(1500)
    assert 0.2 < otsu_threshold(x) < 2.8


@pytest.mark.parametrize(
    "scale, offset",
    [(0.5, 0.0), (2.0, 0.0), (1.0, 0.1), (255.0 * 9.3, 64.0), (1e-3, 0.0), (1.0, -0.2), (1.0, 10.0), (1.0, -50.0)],
)
def test_invariant_to_scale_and_offset(slice_and_labels, scale, offset):
    img, _ = slice_and_labels
    norm = NormalizeBrainIntensity()
    np.testing.assert_allclose(norm(img * scale + offset), norm(img), atol=1e-4)


def test_white_matter_lands_near_one(slice_and_labels):
    img, seg = slice_and_labels
    out = NormalizeBrainIntensity()(img)[0].numpy()
    assert 0.9 < float(np.median(out[seg == 3])) < 1.1
    assert float(np.median(out[seg == 0])) == pytest.approx(0.0, abs=1e-6)
    assert out.min() >= 0.0 and out.max() <= 2.0
    background, reference = brain_intensity_range(img)
    assert background == pytest.approx(0.0, abs=1e-6) and 0.38 < reference < 0.5  # norm/255: white matter ~0.43


def _contrast_map(config: str = "configs/inference.json") -> NormalizeBrainIntensity:
    """The shipped configs' normalization (bias field divided out, then a power law through the brain's 75th
    percentile and its 35th above a CSF cut)."""
    args = json.loads((REPO_ROOT / config).read_text())["normalize_intensity"]
    return NormalizeBrainIntensity(**{k: v for k, v in args.items() if k not in ("_target_", "keys")})


@pytest.mark.parametrize("gamma", [0.6, 0.8, 1.3, 1.6])
def test_contrast_standardization_undoes_a_gamma(slice_and_labels, gamma):
    """A gamma on the image (MONAI's ``AdjustContrast``, as another scanner's contrast) leaves every tissue where it
    was; the linear map alone moves cortex and CSF by far more."""
    from monai.transforms import AdjustContrast

    img, seg = slice_and_labels
    changed = AdjustContrast(gamma)(img)
    maps = (
        (_contrast_map(), 0.03),
        (NormalizeBrainIntensity(**WHOLE_BRAIN_MAP), 0.03),
        (NormalizeBrainIntensity(), None),
    )
    for norm, tolerance in maps:
        clean, out = norm(img)[0].numpy(), norm(changed)[0].numpy()
        moved = [abs(float(np.median(out[seg == c]) - np.median(clean[seg == c]))) for c in (1, 2, 3, 4)]
        if tolerance is not None:
            assert max(moved) < tolerance, moved
        else:
            assert max(moved) > 0.05, moved  # the test image is sensitive: the linear map does move


@pytest.mark.parametrize("scale, offset", [(0.5, 0.0), (255.0 * 9.3, 64.0), (1.0, 0.1), (1.0, 4.0)])
def test_contrast_standardization_invariant_to_scale_and_offset(slice_and_labels, scale, offset):
    img, _ = slice_and_labels
    norm = _contrast_map()
    np.testing.assert_allclose(norm(img * scale + offset), norm(img), atol=1e-3)


def test_contrast_value_is_the_training_subjects_mean():
    """``contrast_value`` in every config is the mean landmark of the demo training subjects (here: the first 20 of
    them, which agree within the subjects' spread; bias field divided out as the configs do), so the shipped map
    leaves typical training images unchanged."""
    args = json.loads((REPO_ROOT / CONFIGS[0]).read_text())["normalize_intensity"]
    ratios = []
    for index in range(1, 21):
        img = torch.as_tensor(generate_subject(0, index)[0])[None]
        if args.get("bias_sigma", 0.0) > 0:
            img = correct_bias_field(img, args["bias_sigma"])
        background, low, reference = brain_contrast_landmarks(
            img, args["percentile"], args["contrast_percentile"], tissue_floor=args.get("tissue_floor", 0.0)
        )
        ratios.append((low - background) / (reference - background))
    for name in CONFIGS:
        value = json.loads((REPO_ROOT / name).read_text())["normalize_intensity"]["contrast_value"]
        assert abs(value - float(np.mean(ratios))) < 0.015, (name, value, float(np.mean(ratios)))


def test_csf_cut_keeps_atrophy_from_reading_as_contrast():
    """An atrophied brain (the demo generator's older anatomy: more CSF, thinner cortex, the same tissue contrast):
    a map whose lower landmark is the whole brain's 25th percentile lifts its cortex towards white matter; the
    configs' map, whose lower landmark lies above a CSF cut (``tissue_floor``), keeps the cortex near where a young
    brain has it."""
    maps = {"whole brain": NormalizeBrainIntensity(**WHOLE_BRAIN_MAP), "CSF cut": _contrast_map()}
    moves: dict[str, list[float]] = {name: [] for name in maps}
    for index in range(81, 89):  # validation subjects
        pairs = [generate_subject(0, index), generate_subject(0, index, shifted=["anatomy"])]
        for name, norm in maps.items():
            young, old = (float(np.median(norm(torch.as_tensor(x)[None])[0].numpy()[s == 1])) for x, s in pairs)
            moves[name].append(old - young)
    with_cut, whole = float(np.mean(moves["CSF cut"])), float(np.mean(moves["whole brain"]))
    assert abs(with_cut) < 0.035 and whole > 2 * abs(with_cut), moves


def _smooth_field(shape: tuple[int, ...], amplitude: float) -> torch.Tensor:
    """A smooth log-field over a 2D slice: a tilt plus one slow bump, spanning about +-``amplitude``."""
    i, j = torch.meshgrid(*(torch.linspace(-1.0, 1.0, n) for n in shape), indexing="ij")
    return amplitude * (0.6 * i - 0.4 * j + 0.5 * torch.cos(2.0 * i) * torch.sin(1.5 * j))


def test_bias_field_is_recovered_on_white_matter(slice_and_labels):
    """A known smooth multiplicative field on a demo slice is what :func:`brain_bias_field` estimates (up to its
    mean) on the white matter it is measured on: the error is a fraction of the field's own variation there."""
    img, seg = slice_and_labels
    applied = _smooth_field(img.shape[1:], 0.25)
    clean_field, _ = brain_bias_field(img, BIAS_SIGMA)
    field, background = brain_bias_field(img * torch.exp(applied)[None], BIAS_SIGMA)
    assert background == pytest.approx(0.0, abs=1e-6)
    wm = torch.as_tensor(seg == 3)
    estimated = (field - clean_field)[0][wm]
    truth = applied[wm] - applied[wm].mean()
    error = float((estimated - estimated.mean() - truth).abs().mean())
    assert error < 0.4 * float(truth.abs().mean()), (error, float(truth.abs().mean()))


def test_bias_correction_undoes_a_bias_field(slice_and_labels):
    """With ``bias_sigma`` the normalized slice under a strong bias field stays close to the clean one; without it,
    the normalized intensities move more than twice as far."""
    img, seg = slice_and_labels
    biased = img * torch.exp(_smooth_field(img.shape[1:], 0.25))[None]
    gaps = {}
    for sigma in (0.0, BIAS_SIGMA):
        norm = NormalizeBrainIntensity(**WHOLE_BRAIN_MAP, bias_sigma=sigma)
        clean, out = norm(img)[0].numpy(), norm(biased)[0].numpy()
        brain = seg > 0
        gaps[sigma] = float(np.abs(out - clean)[brain].mean())
    assert gaps[BIAS_SIGMA] < 0.5 * gaps[0.0], gaps


@pytest.mark.parametrize("scale, offset, gamma", [(0.5, 0.0, 1.0), (255.0 * 9.3, 64.0, 1.0), (1.0, 0.0, 1.6)])
def test_bias_correction_keeps_the_invariances(slice_and_labels, scale, offset, gamma):
    """With the correction, scale and offset still change nothing and gamma 1.6 moves no tissue's median by 0.03."""
    from monai.transforms import AdjustContrast

    img, seg = slice_and_labels
    norm = _contrast_map()
    changed = AdjustContrast(gamma)(img) * scale + offset
    clean, out = norm(img)[0].numpy(), norm(changed)[0].numpy()
    if gamma == 1.0:
        np.testing.assert_allclose(out, clean, atol=1e-3)
    else:
        moved = [abs(float(np.median(out[seg == c]) - np.median(clean[seg == c]))) for c in (1, 2, 3, 4)]
        assert max(moved) < 0.03, moved


def test_bias_correction_leaves_a_one_level_brain_alone():
    """A brain of one intensity (a mask, say) has no white matter to read a field from: no correction, no NaN."""
    x = torch.zeros(1, 64, 64)
    x[0, 16:48, 12:52] = 3.0
    field, background = brain_bias_field(x, BIAS_SIGMA)
    assert background == 0.0 and torch.count_nonzero(field) == 0
    np.testing.assert_allclose(NormalizeBrainIntensity(bias_sigma=BIAS_SIGMA)(x), NormalizeBrainIntensity()(x))


def test_bias_correction_on_an_image_without_brain_names_the_file():
    x = torch.zeros(1, 64, 64)
    x[0, 10, 10] = 1.0
    with pytest.raises(ValueError, match="no brain found") as err:
        NormalizeBrainIntensity(bias_sigma=BIAS_SIGMA)(MetaTensor(x, meta={"filename_or_obj": "/data/empty.nii.gz"}))
    assert "/data/empty.nii.gz" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"contrast_percentile": 25.0}, "contrast_value"),
        ({"contrast_percentile": 25.0, "contrast_value": 1.2}, "contrast_value"),
        ({"contrast_percentile": 80.0, "contrast_value": 0.5}, "contrast_percentile"),
        ({"contrast_percentile": 25.0, "contrast_value": 0.5, "max_exponent": 0.5}, "max_exponent"),
        ({"contrast_percentile": 25.0, "contrast_value": 0.5, "tissue_floor": 0.5}, "tissue_floor"),
        ({"bias_sigma": -1.0}, "bias_sigma"),
    ],
)
def test_contrast_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NormalizeBrainIntensity(**kwargs)


def test_contrast_map_on_an_image_without_brain_names_the_file():
    x = torch.zeros(1, 64, 64)
    x[0, 10, 10] = 1.0
    with pytest.raises(ValueError, match="no brain found") as err:
        _contrast_map()(MetaTensor(x, meta={"filename_or_obj": "/data/empty.nii.gz"}))
    assert "/data/empty.nii.gz" in str(err.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        WHOLE_BRAIN_MAP,
        {"contrast_percentile": 35.0, "contrast_value": 0.76, "tissue_floor": 2.1, "bias_sigma": BIAS_SIGMA},
    ],
)
def test_dict_version_keeps_metadata_and_dtype(slice_and_labels, kwargs):
    """The file name and affine survive every option: the head stage caches fits by file name, writers need both."""
    img, _ = slice_and_labels
    affine = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    mt = MetaTensor((img * 1000).to(torch.int16), affine=affine, meta={"filename_or_obj": "a.nii.gz"})
    out = NormalizeBrainIntensityd("image", **kwargs)({"image": mt, "label": 1})
    assert isinstance(out["image"], MetaTensor) and out["image"].dtype == torch.float32
    assert out["image"].meta["filename_or_obj"] == "a.nii.gz" and out["label"] == 1
    assert torch.equal(out["image"].affine, affine.to(out["image"].affine.dtype))


@pytest.mark.parametrize(
    "case, message", [("zeros", "no brain found"), ("one_voxel", "no brain found"), ("few_voxels", "no brain found")]
)
def test_no_brain_is_a_clear_error(case, message):
    x = torch.zeros(1, 64, 64)
    if case == "one_voxel":
        x[0, 10, 10] = 1.0
    elif case == "few_voxels":
        x[0, :2, :2] = 5.0
    with pytest.raises(ValueError, match=message) as err:
        NormalizeBrainIntensity()(MetaTensor(x, meta={"filename_or_obj": "/data/empty.nii.gz"}))
    assert "/data/empty.nii.gz" in str(err.value)


def test_every_config_normalizes_before_padding():
    """Training, validation, inference and the U-Net baseline all read the same named normalization step."""
    first = json.loads((REPO_ROOT / CONFIGS[0]).read_text())["normalize_intensity"]
    for name in CONFIGS:
        config = json.loads((REPO_ROOT / name).read_text())
        assert config["normalize_intensity"] == first, name
        pipeline = config["preprocessing"]["transforms"]
        assert pipeline == "$@load_transforms + [@normalize_intensity] + @spatial_transforms", name
        if "augmented_preprocessing" in config:
            pipeline = config["augmented_preprocessing"]["transforms"]
            assert pipeline.index("@normalize_intensity") < pipeline.index("@intensity_augmentations"), name
            assert config["train"]["preprocessing"] == "@augmented_preprocessing", name
    baseline = json.loads((REPO_ROOT / "configs" / "train_unet.json").read_text())
    data_ids = {"load_transforms", "normalize_intensity", "preprocessing", "augmented_preprocessing", "train#dataset"}
    assert not {key for key in baseline if key.split("#")[0] in data_ids or key.startswith("train#dataset")}


def test_no_override_indexes_a_list_by_position():
    """Override files set ids by name (``a#b``), never by list position (``a#3``)."""
    for path in sorted((REPO_ROOT / "configs").glob("*.json")):
        config = json.loads(path.read_text())
        if not isinstance(config, dict):
            continue
        positional = [k for k in config if any(part.isdigit() for part in k.split("#"))]
        assert not positional, f"{path.name}: {positional}"


def _write(path, array, dtype):
    img = nib.Nifti1Image(array.astype(dtype), np.diag([-1.0, 1.0, 1.0, 1.0]))
    img.header.set_data_dtype(dtype)
    nib.save(img, str(path))


def test_inference_labels_do_not_depend_on_intensity_scale(tmp_path, slice_and_labels):
    """End to end through ``run inference``: a neurite-oasis slice and a rescaled, offset copy give the same labels."""
    img, _ = slice_and_labels
    arr = img[0].numpy()
    # "offset": ten times the image's range added (the smoothing's zero padding once made it a different image)
    variants = {
        "norm": arr,
        "scanner": arr * 2378.0 + 41.0,
        "half": arr * 0.5 + 0.1,
        "offset": arr + 10.0 * np.ptp(arr),
    }
    for name, values in variants.items():
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "slice_norm.nii.gz", values, np.float32)
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    datalist = [tmp_path / n / "slice_norm.nii.gz" for n in variants]
    out = tmp_path / "out"
    run_inference_on_files(datalist, out, ckpt, "--fit_steps", "3")
    segs = {n: np.asarray(nib.load(str(out / n / "slice_norm_seg.nii.gz")).dataobj) for n in variants}
    for name in ("scanner", "half", "offset"):
        assert np.mean(segs[name] == segs["norm"]) > 0.999, name


def test_inference_on_an_image_without_brain_names_the_file(tmp_path):
    (tmp_path / "s").mkdir()
    x = np.zeros((160, 192), np.float32)
    x[80, 96] = 1.0
    _write(tmp_path / "s" / "slice_norm.nii.gz", x, np.float32)
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    proc = run_inference_on_files([tmp_path / "s" / "slice_norm.nii.gz"], out, ckpt, check=False)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    # two intensities: refused as not an MR image before normalization looks for a brain (tested on its own above)
    assert "only 2 distinct intensities" in log and str(tmp_path / "s" / "slice_norm.nii.gz") in log
    assert not out.exists() or not list(out.rglob("*.nii.gz"))


def test_the_error_line_carries_the_real_reason(tmp_path):
    """The log's ERROR line names the file and the problem, not ``applying transform <... object at 0x...>``."""
    (tmp_path / "s").mkdir()
    _write(tmp_path / "s" / "slice_norm.nii.gz", np.zeros((160, 192), np.float32), np.float32)
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    proc = run_inference_on_files([tmp_path / "s" / "slice_norm.nii.gz"], tmp_path / "out", ckpt, check=False)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if " ERROR " in line or "ERROR -" in line]
    assert errors, proc.stdout + proc.stderr
    assert any("image is constant" in line and "s/slice_norm.nii.gz" in line for line in errors), errors
    assert not any("object at 0x" in line for line in errors), errors
