"""Any-resolution decoding and the optional inference outputs: unit tests (no bundle runs)."""

from __future__ import annotations

import math

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, SpatialPadd

from scripts.fitting import coordinate_grid
from scripts.inferer import MetaSegInferer
from scripts.network import MetaSegINR
from scripts.postprocess import UncertaintyMapd, softmax_entropy
from scripts.resolution import (
    ScaledInvertd,
    check_scale,
    fold_scale,
    scale_affine,
    scaled_coordinate_grid,
    unfold_scale,
)


def test_scaled_grid_is_the_input_grid_at_scale_1_and_halves_the_spacing_at_scale_2():
    assert torch.equal(scaled_coordinate_grid((5, 7), 1), coordinate_grid((5, 7)))
    fine = scaled_coordinate_grid((3,), 2)[:, 0]
    # input centres -1, 0, 1 (spacing 1): fine centres at +-1/4 input pixel around them
    torch.testing.assert_close(fine, torch.tensor([-1.25, -0.75, -0.25, 0.25, 0.75, 1.25]))
    grid = scaled_coordinate_grid((4, 6), 3)
    assert grid.shape == (12 * 18, 2)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_output_scale_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="output_scale"):
        check_scale(bad)
    if bad == "2":  # the inferer reads options as the command line gives them: "2" is the number 2
        assert MetaSegInferer(output_scale=bad).output_scale == 2
        return
    with pytest.raises(ValueError, match="output_scale"):
        MetaSegInferer(output_scale=bad)


def test_fold_unfold_round_trip():
    x = torch.randn(3, 8, 6)
    assert torch.equal(unfold_scale(fold_scale(x, 2), 2), x)
    y = torch.randn(2, 6, 9, 3)
    assert torch.equal(unfold_scale(fold_scale(y, 3), 3), y)
    # each coarse pixel carries its s x s block of fine pixels
    f = fold_scale(torch.arange(16.0).reshape(1, 4, 4), 2)
    assert f[:, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0] and f[:, 1, 1].tolist() == [10.0, 11.0, 14.0, 15.0]


def test_scale_affine_keeps_the_field_of_view():
    a = torch.tensor([[-1.0, 0, 0, 80], [0, 0, 1, 0], [0, -1, 0, 96], [0, 0, 0, 1]], dtype=torch.float64)
    fine = scale_affine(a, 2, spatial_dims=2)
    world = lambda m, i, j: (m @ torch.tensor([i, j, 0.0, 1.0], dtype=torch.float64))[:3]  # noqa: E731
    torch.testing.assert_close(world(fine, 0, 0), world(a, -0.25, -0.25))
    torch.testing.assert_close(world(fine, -0.5, -0.5), world(a, -0.5, -0.5))  # first pixel edges
    torch.testing.assert_close(world(fine, 2 * 160 - 0.5, 2 * 192 - 0.5), world(a, 160 - 0.5, 192 - 0.5))
    torch.testing.assert_close(fine[:3, 2], a[:3, 2])  # the third (slice) axis is untouched


def test_scaled_invertd_crops_the_padding_at_the_fine_scale():
    pad = Compose([SpatialPadd("image", spatial_size=(8, 8))])
    affine = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64))
    image = pad({"image": MetaTensor(torch.rand(1, 6, 4), affine=affine)})["image"]  # padded by (1, 1) and (2, 2)
    fine = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 16, 16)  # a 2x finer output of the padded grid
    out = ScaledInvertd("pred", transform=pad, orig_keys="image", scale=2)({"pred": fine, "image": image})["pred"]
    assert out.shape == (2, 12, 8)
    torch.testing.assert_close(out.as_tensor(), fine[:, 2:14, 4:12])
    torch.testing.assert_close(out.affine, scale_affine(affine, 2, 2))
    # scale 1 is plain Invertd
    coarse = MetaTensor(torch.rand(2, 8, 8))
    out1 = ScaledInvertd("pred", transform=pad, orig_keys="image", scale=1)({"pred": coarse, "image": image})["pred"]
    torch.testing.assert_close(out1.as_tensor(), coarse[:, 1:7, 2:6])


def test_inferer_decodes_the_same_function_on_a_finer_grid():
    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=16, num_sine_layers=2, head_channels=16)
    inferer = MetaSegInferer(fit_steps=2, fit_points=None)
    image = MetaTensor(torch.rand(1, 1, 10, 12), affine=torch.eye(4))
    fit = inferer.fit(image, net)
    logits, recon = inferer.decode(fit, net)
    same = inferer.decode_on_grid(fit, net, coordinate_grid((10, 12)), (10, 12))
    torch.testing.assert_close(same[0], logits) and torch.testing.assert_close(same[1], recon)
    fine = MetaSegInferer(fit_steps=2, fit_points=None, output_scale=2)(image, net)
    assert fine.shape == (1, 5, 20, 24)
    torch.testing.assert_close(
        fine.affine[0] if fine.affine.dim() == 3 else fine.affine, scale_affine(torch.eye(4), 2, 2), check_dtype=False
    )
    assert MetaSegInferer(fit_steps=2, fit_points=None)(image, net).shape == (1, 5, 10, 12)


def test_entropy_of_the_softmax():
    uniform = torch.full((5, 3, 4), 0.2)
    torch.testing.assert_close(softmax_entropy(uniform), torch.full((1, 3, 4), math.log(5)))
    onehot = torch.zeros(5, 3, 4)
    onehot[2] = 1
    assert float(softmax_entropy(onehot).abs().max()) < 1e-6
    assert float(softmax_entropy(uniform, normalize=True).mean()) == pytest.approx(1.0)
    probs = MetaTensor(torch.softmax(torch.randn(5, 3, 4), 0), affine=torch.eye(4) * 2)
    out = UncertaintyMapd("pred")({"pred": probs})
    assert out["uncertainty"].shape == (1, 3, 4) and torch.equal(out["uncertainty"].affine, probs.affine)
    assert "uncertainty" not in UncertaintyMapd("pred", enabled=False)({"pred": probs})
