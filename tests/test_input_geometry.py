"""Output geometry equals the input's, including the trailing singleton axis of neurite-oasis 2D slices."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from scripts.demo_data import AFFINE, generate_subject
from tests.utils import run_inference_on_files, save_tiny_metaseg

pytestmark = pytest.mark.usefixtures("bundle_unchanged")  # nothing of the bundle changes


@pytest.mark.parametrize("scale", [1, 2])
def test_singleton_axis_slice_keeps_its_shape_and_affine(tmp_path, scale):
    img, _ = generate_subject(0, 1)
    (tmp_path / "s1").mkdir()
    nib.save(nib.Nifti1Image(img[..., None], AFFINE), str(tmp_path / "s1" / "slice_norm.nii.gz"))  # 160x192x1
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    run_inference_on_files(
        [tmp_path / "s1" / "slice_norm.nii.gz"], out, ckpt, "--fit_steps", "2", "--output_scale", str(scale)
    )
    seg = nib.load(str(out / "s1" / "slice_norm_seg.nii.gz"))
    assert seg.shape == (160 * scale, 192 * scale, 1)
    expected = AFFINE.copy()
    expected[:3, :2] /= scale  # in-plane spacing only
    expected[:3, 3] += AFFINE[:3, :2] @ np.full(2, (1 - scale) / (2 * scale))  # fine pixel centres
    np.testing.assert_allclose(seg.affine, expected, atol=1e-5)


def test_freesurfer_mgz_is_read_and_named_without_its_extension(tmp_path):
    img, _ = generate_subject(0, 1)
    (tmp_path / "s1").mkdir()
    nib.save(nib.MGHImage(img[..., None], AFFINE), str(tmp_path / "s1" / "norm.mgz"))
    ckpt = tmp_path / "models"
    save_tiny_metaseg(ckpt)
    out = tmp_path / "out"
    run_inference_on_files([tmp_path / "s1" / "norm.mgz"], out, ckpt, "--fit_steps", "2")
    assert sorted(p.name for p in (out / "s1").iterdir()) == ["norm_seg.nii.gz"]
    seg = nib.load(str(out / "s1" / "norm_seg.nii.gz"))
    assert seg.shape == (160, 192, 1)
    np.testing.assert_allclose(seg.affine, AFFINE, atol=1e-5)
