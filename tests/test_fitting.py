"""The inner loop and the test-time fit: second-order gradients, convergence, and weight safety."""

import pytest
import torch
from ignite.engine import Events
from monai.losses import FocalLoss
from torch.nn import functional as F

from scripts.fitting import (
    adam_fit,
    batch_coordinate_grid,
    batch_params,
    coordinate_grid,
    flatten_image,
    unflatten_points,
)
from scripts.inferer import MetaSegInferer
from scripts.network import TRUNK_PREFIXES, MetaSegINR
from scripts.resolution import scaled_coordinate_grid
from scripts.trainer import MetaSegTrainer


def _tiny_net(dtype=torch.float32) -> MetaSegINR:
    torch.manual_seed(0)
    return MetaSegINR(hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, omega0=5.0).to(dtype)


def test_grid_and_flatten_roundtrip():
    grid = coordinate_grid((3, 4))
    assert grid.shape == (12, 2) and grid.min() == -1 and grid.max() == 1
    torch.testing.assert_close(grid[1], torch.tensor([-1.0, -1.0 / 3]))  # ij order: last axis fastest
    img = torch.arange(24.0).reshape(2, 1, 3, 4)
    assert torch.equal(unflatten_points(flatten_image(img), (3, 4)), img)


def _joint_loss(net: MetaSegINR, coords, image, label):
    """MSE + cross-entropy of ``net`` evaluated with a parameter dict, as a closure over one tiny sample."""

    def loss(p):
        intensity, _, logits = net.functional_forward(coords, p)
        return F.mse_loss(intensity, image) + F.cross_entropy(logits.transpose(1, 2), label)

    return loss


def _tiny_sample():
    coords = coordinate_grid((6, 6)).double()[None]
    return coords, torch.rand(1, 36, 1, dtype=torch.float64), torch.randint(0, 3, (1, 36))


def _meta_loss(net: MetaSegINR, params: dict, coords, image, label, steps=2, lr=1e-2):
    """Outer loss after an inner Adam loop on MSE + cross-entropy, differentiable w.r.t. ``params``."""
    loss = _joint_loss(net, coords, image, label)
    adapted = adam_fit(loss, batch_params(params, 1, detach=False), list(params), steps, lr, create_graph=True)
    return loss(adapted)


def test_second_order_gradient_matches_finite_differences():
    net = _tiny_net(torch.float64)
    coords, image, label = _tiny_sample()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.param_dict().items()}
    outer = _meta_loss(net, params, coords, image, label)
    grads = dict(zip(params, torch.autograd.grad(outer, list(params.values()))))
    eps = 1e-6
    for name in ["trunk.0.weight", "trunk.1.bias", "head.2.weight"]:
        flat = params[name].detach().reshape(-1)
        for idx in [0, flat.numel() - 1]:
            shifted = []
            for sign in (1, -1):
                p2 = {k: v.detach().clone() for k, v in params.items()}
                p2[name].view(-1)[idx] += sign * eps
                p2 = {k: v.requires_grad_(True) for k, v in p2.items()}
                shifted.append(_meta_loss(net, p2, coords, image, label).item())
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            analytic = grads[name].reshape(-1)[idx].item()
            assert abs(numeric - analytic) <= 1e-5 + 1e-3 * abs(numeric), (name, idx, numeric, analytic)


def test_second_order_differs_from_first_order():
    """Gradients through the inner loop are not what a first-order (detached) inner loop would give."""
    net = _tiny_net(torch.float64)
    coords, image, label = _tiny_sample()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.param_dict().items()}
    second = torch.autograd.grad(_meta_loss(net, params, coords, image, label), params["trunk.0.weight"])[0]
    loss = _joint_loss(net, coords, image, label)
    adapted = adam_fit(loss, batch_params(params, 1, detach=True), list(params), 2, 1e-2)
    first = torch.autograd.grad(loss(adapted), adapted["trunk.0.weight"])[0][0]
    assert not torch.allclose(first, second, rtol=1e-3, atol=1e-8)


def test_test_time_fit_lowers_mse_and_keeps_weights():
    net = _tiny_net()
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    image = torch.rand(2, 1, 12, 10)
    inferer = MetaSegInferer(fit_steps=30, fit_lr=1e-2)
    with torch.no_grad():  # as MONAI evaluators and MONAI Label call it
        logits, recon = inferer.fit_decode(image, net)
        _, recon0 = MetaSegInferer(fit_steps=0).fit_decode(image, net)
    assert logits.shape == (2, 3, 12, 10) and recon.shape == (2, 1, 12, 10)
    assert F.mse_loss(recon, image) < 0.5 * F.mse_loss(recon0, image)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("fit_points", [None, 20])
def test_batched_fit_equals_single_fits(fit_points):
    """A batch gives every image the fit it gets alone: image by image on a CPU (what ``fit`` does there), and
    vectorized (one loss, per-image weights; what ``fit`` does on a GPU)."""
    net = _tiny_net()
    images = torch.rand(3, 1, 8, 8)
    inferer = MetaSegInferer(fit_steps=5, fit_lr=1e-2, fit_points=fit_points)
    batched, _ = inferer.fit_decode(images, net)
    vectorized = inferer._fit_batch(batch_coordinate_grid(images), flatten_image(images), net, inferer.fit_steps)
    for i in range(3):
        single, _ = inferer.fit_decode(images[i : i + 1], net)
        torch.testing.assert_close(batched[i : i + 1], single, rtol=1e-4, atol=1e-5)
        fit = inferer.fit(images[i : i + 1], net)
        for k, v in fit.params.items():
            torch.testing.assert_close(vectorized[k][i : i + 1], v, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fit_points", [None, 20])
@pytest.mark.parametrize("end_factor", [1.0, 0.1])
def test_fit_snapshots_equal_separate_fits(fit_points, end_factor):
    """The fit-steps sweep gives exactly the fits of those lengths: one fit kept at several step counts with a
    constant learning rate, a fit per step count with a decaying one (its steps depend on the fit's length)."""
    net = _tiny_net()
    image = torch.rand(1, 1, 8, 8)
    inferer = MetaSegInferer(fit_steps=1, fit_lr=1e-2, fit_points=fit_points, fit_lr_end_factor=end_factor)
    snapshots = inferer.fit_snapshots(image, net, [7, 0, 3, 3])
    assert [s for s, _, _ in snapshots] == [0, 3, 7]
    seconds = [s for _, s, _ in snapshots]
    if end_factor == 1.0:  # one fit: its snapshots' clocks run on; fits of their own are timed apart (any order)
        assert seconds == sorted(seconds), seconds
    assert min(seconds) >= 0.0, seconds
    for steps, _, fit in snapshots:
        inferer.fit_steps = steps
        alone = inferer.fit(image, net)
        for k, v in alone.params.items():
            assert torch.equal(fit.params[k], v), (steps, k)
    assert not torch.equal(snapshots[1][2].params["trunk.0.weight"], snapshots[2][2].params["trunk.0.weight"])
    with pytest.raises(ValueError, match="non-negative"):
        inferer.fit_snapshots(image, net, [-1, 2])


def test_skip_background_classifies_only_nonzero_pixels():
    """``skip_background``: zero pixels are background without the head; every other logit is unchanged, and a batch
    gives every image what it gets alone (the head runs on the union of the batch's pixels)."""
    torch.manual_seed(0)
    net = MetaSegINR(
        hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, omega0=5.0,
        context_radius=1, context_step=2, context_grid=(8, 10),
    )  # fmt: skip
    images = torch.rand(2, 1, 8, 10)
    images[0, :, :3] = 0.0
    images[1, :, :, :4] = 0.0
    full, recon = MetaSegInferer(fit_steps=3, fit_lr=1e-2).fit_decode(images, net)
    skip = MetaSegInferer(fit_steps=3, fit_lr=1e-2, skip_background=True)
    skipped, recon_skip = skip.fit_decode(images, net)
    zero = images[:, 0] == 0
    assert torch.equal(recon_skip, recon)
    torch.testing.assert_close(skipped.movedim(1, -1)[~zero], full.movedim(1, -1)[~zero], rtol=1e-5, atol=1e-5)
    assert (skipped.argmax(1)[zero] == 0).all() and (skipped[:, 1:].movedim(1, -1)[zero] == -30).all()
    for i in range(2):
        torch.testing.assert_close(skip.fit_decode(images[i : i + 1], net)[0], skipped[i : i + 1])


def test_subsampled_fit_is_reproducible_and_fits():
    """``fit_points``: each step sees a random subset of pixels, drawn from a seeded generator (same result twice)."""
    net = _tiny_net()
    image = torch.rand(1, 1, 12, 12)
    inferer = MetaSegInferer(fit_steps=30, fit_lr=1e-2, fit_points=40)
    (logits_a, recon_a), (logits_b, _) = inferer.fit_decode(image, net), inferer.fit_decode(image, net)
    assert torch.equal(logits_a, logits_b)
    _, recon0 = MetaSegInferer(fit_steps=0).fit_decode(image, net)
    assert F.mse_loss(recon_a, image) < 0.5 * F.mse_loss(recon0, image)
    other, _ = MetaSegInferer(fit_steps=30, fit_lr=1e-2, fit_points=40, seed=1).fit_decode(image, net)
    assert not torch.equal(logits_a, other)


def test_learned_fit_lr_is_meta_learned_and_used_at_test_time():
    """With ``learned_fit_lr`` the meta-gradient reaches the learning-rate factors, and the inferer applies them."""
    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, learned_fit_lr="element")
    coords, image, label = _tiny_sample()
    coords, image = coords.float(), image.float()
    loss = _joint_loss(net, coords, image, label)
    params = batch_params(net.param_dict(), 1, detach=False)
    trunk = [k for k in params if k.startswith(TRUNK_PREFIXES)]
    outer = loss(adam_fit(loss, params, trunk, 2, net.fit_lr(1e-3), create_graph=True))
    outer.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in net.fit_lr_scale.values())
    image2 = torch.rand(1, 1, 8, 8)
    base, _ = MetaSegInferer(fit_steps=2, fit_lr=1e-2).fit_decode(image2, net)
    with torch.no_grad():
        for s in net.fit_lr_scale.values():
            s.fill_(-30.0)  # factors ~0: the fit no longer moves the weights
    frozen, _ = MetaSegInferer(fit_steps=2, fit_lr=1e-2).fit_decode(image2, net)
    unfitted, _ = MetaSegInferer(fit_steps=0).fit_decode(image2, net)
    assert not torch.allclose(base, frozen)
    torch.testing.assert_close(frozen, unfitted)


def test_chunked_decode_matches_whole_decode():
    net = _tiny_net()
    image = torch.rand(2, 1, 9, 7)
    whole, recon = MetaSegInferer(fit_steps=2, fit_lr=1e-2, decode_chunk=None).fit_decode(image, net)
    chunked, recon_c = MetaSegInferer(fit_steps=2, fit_lr=1e-2, decode_chunk=10).fit_decode(image, net)
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(recon_c, recon)


def test_only_trunk_is_fitted():
    net = _tiny_net()
    fit = MetaSegInferer(fit_steps=3, fit_lr=1e-2).fit(torch.rand(1, 1, 8, 8), net)
    for k, v in fit.params.items():
        changed = not torch.equal(v[0], net.param_dict()[k].detach())
        assert changed == k.startswith(TRUNK_PREFIXES), k


def test_meta_training_step_lowers_outer_loss():
    net = _tiny_net()
    image = torch.rand(1, 1, 8, 8)
    label = (image > 0.5).long() + (image > 0.8).long()
    data = [{"image": image, "label": label}] * 40
    trainer = MetaSegTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2),
        loss_function=FocalLoss(gamma=1.0, use_softmax=True, to_onehot_y=True),
        inner_steps=2,
        inner_lr=1e-2,
        num_points=32,
        grad_clip_norm=10.0,
    )
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    trainer.run()
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    assert float(trainer.state.output[0]["grad_norm"]) > 0


def test_context_decode_on_own_grid_matches_pointwise_decode():
    """On ``context_grid`` the inferer gathers neighbour features from one trunk pass: same logits as evaluating
    the trunk at every neighbour (``decode_on_grid``), also in chunks and for a batch."""
    torch.manual_seed(0)
    net = MetaSegINR(
        hidden_channels=8,
        num_sine_layers=2,
        head_channels=8,
        num_classes=3,
        context_radius=1,
        context_step=2,
        context_grid=(9, 7),
    )
    inferer = MetaSegInferer(fit_steps=2, fit_lr=1e-2, decode_chunk=10)
    fit = inferer.fit(torch.rand(2, 1, 9, 7), net)
    gathered, recon = inferer.decode(fit, net)
    pointwise, recon_p = inferer.decode_on_grid(fit, net, fit.coords, fit.spatial_shape)
    torch.testing.assert_close(gathered, pointwise, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(recon, recon_p)
    # another image size: no grid to gather from, the pointwise path is used
    other, _ = inferer.fit_decode(torch.rand(1, 1, 6, 5), net)
    assert other.shape == (1, 3, 6, 5)


def test_grid_head_decodes_the_fitted_grid_and_finer_ones():
    """With a grid head the inferer decodes one trunk pass over the grid with it (masked by ``skip_background``), a
    finer grid with scaled dilations, and :meth:`with_point_head` decodes with the point-wise head instead."""
    torch.manual_seed(0)
    kw = dict(hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, context_radius=1)
    net = MetaSegINR(**kw, context_grid=(9, 7), grid_head_channels=4, grid_head_dilations=(1, 2))
    images = torch.rand(2, 1, 9, 7)
    images[0, 0, :2] = 0.0
    inferer = MetaSegInferer(fit_steps=2, fit_lr=1e-2, decode_chunk=10, head_bf16=False)
    fit = inferer.fit(images, net)
    logits, recon = inferer.decode(fit, net)
    with torch.no_grad():
        expected = net.decode_grid(net.trunk_features(fit.coords, fit.params), (9, 7))
    torch.testing.assert_close(logits, expected.transpose(1, 2).reshape(2, 3, 9, 7))
    point = inferer.with_point_head()
    assert inferer.grid_head and not point.grid_head
    plain = MetaSegInferer(fit_steps=2, head_bf16=False)
    torch.testing.assert_close(point.decode(fit, net)[0], plain.decode(fit, _no_grid(net))[0])
    skip = MetaSegInferer(fit_steps=2, fit_lr=1e-2, head_bf16=False, skip_background=True)
    masked = skip.decode(skip.fit(images, net), net)[0]
    assert (masked[0, 1:, :2] == -30).all() and (masked[0, 0, :2] == 0).all()
    torch.testing.assert_close(masked[1], logits[1])
    fine = inferer.decode_on_grid(fit, net, scaled_coordinate_grid((9, 7), 2), (18, 14))[0]
    assert fine.shape == (2, 3, 18, 14)
    with pytest.raises(ValueError, match="integer multiple"):
        inferer.decode_on_grid(fit, net, coordinate_grid((10, 7)), (10, 7))


def _no_grid(net: MetaSegINR) -> MetaSegINR:
    """``net`` without its grid head (same trunk and point-wise head)."""
    kw = dict(hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, context_radius=1)
    other = MetaSegINR(**kw, context_grid=net.context_grid)
    other.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("grid_head.")})
    return other


def test_seg_points_limit_the_meta_segmentation_loss():
    """``seg_points``: the outer segmentation loss uses that many of the iteration's points (MSE keeps all)."""
    from monai.losses import FocalLoss

    from scripts.trainer import MetaSegTrainer

    torch.manual_seed(0)
    net = MetaSegINR(
        hidden_channels=8, num_sine_layers=2, head_channels=8, num_classes=3, context_radius=1, context_grid=(8, 8)
    )
    seen = []

    def loss(logits, labels):
        seen.append(logits.shape[-1])
        return FocalLoss(use_softmax=True, to_onehot_y=True)(logits, labels)

    def trainer(**kwargs):
        return MetaSegTrainer(
            device="cpu",
            max_epochs=1,
            train_data_loader=[],
            network=net,
            optimizer=torch.optim.Adam(net.parameters()),
            loss_function=loss,
            **kwargs,
        )

    meta = trainer(inner_steps=1, inner_seg_weight=0.0, num_points=40, seg_points=10)
    total, _ = meta.compute_loss(torch.rand(1, 1, 8, 8), torch.randint(0, 3, (1, 1, 8, 8)), net)
    total.backward()
    assert seen == [10] and net.head[0].weight.grad.abs().sum() > 0 and net.trunk[0].weight.grad.abs().sum() > 0
    # all pixels (num_points None): the segmentation loss takes a random pick of them, not the first rows
    seen.clear()
    meta = trainer(inner_steps=1, inner_seg_weight=0.0, num_points=None, seg_points=10)
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[..., 4:, :] = 2  # the first 32 pixels are class 0
    labels_seen = []
    meta.loss_function = lambda logits, labels: labels_seen.append(labels) or logits.sum() * 0
    meta.compute_loss(torch.rand(1, 1, 8, 8), label, net)
    assert labels_seen[0].shape[-1] == 10 and labels_seen[0].max() == 2
    with pytest.raises(ValueError, match="seg_points"):
        trainer(seg_points=0)


def test_head_bf16_changes_only_the_head_rounding():
    """``head_bf16``: the head's products in bfloat16; the fit and reconstruction are float32 and unchanged."""
    torch.manual_seed(0)
    net = _tiny_net()
    image = torch.rand(1, 1, 12, 10)
    logits16, recon16 = MetaSegInferer(fit_steps=3, fit_lr=1e-2, head_bf16=True).fit_decode(image, net)
    logits32, recon32 = MetaSegInferer(fit_steps=3, fit_lr=1e-2, head_bf16=False).fit_decode(image, net)
    assert logits16.dtype == torch.float32 and not torch.equal(logits16, logits32)
    torch.testing.assert_close(logits16, logits32, rtol=0.05, atol=0.02)
    torch.testing.assert_close(recon16, recon32, rtol=0, atol=0)


def test_cosine_lr_factor_and_the_decayed_fit():
    """The factor runs from 1 at the first step to ``end_factor`` at the last along a half cosine; a decayed fit takes
    the same first step as a constant one and smaller ones after; values outside [0, 1] are refused by name."""
    from scripts.fitting import cosine_lr_factor

    factors = [cosine_lr_factor(t, 5, 0.1) for t in range(1, 6)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.1) and factors[2] == pytest.approx(0.55)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert cosine_lr_factor(1, 1, 0.1) == 1.0 and cosine_lr_factor(3, 5, 1.0) == 1.0
    net, image = _tiny_net(), torch.rand(1, 1, 8, 8)
    one = [MetaSegInferer(fit_steps=1, fit_lr=1e-2, fit_lr_end_factor=f).fit(image, net) for f in (1.0, 0.1)]
    torch.testing.assert_close(one[0].params, one[1].params, rtol=0, atol=0)
    start = net.param_dict()["trunk.0.weight"]
    moved = [
        (
            MetaSegInferer(fit_steps=6, fit_lr=1e-2, fit_lr_end_factor=f).fit(image, net).params["trunk.0.weight"][0]
            - start
        )
        .norm()
        .item()
        for f in (1.0, 0.1)
    ]
    assert 0 < moved[1] < moved[0]
    with pytest.raises(ValueError, match="fit_lr_end_factor must be a finite number >= 0.0 and <= 1.0"):
        MetaSegInferer(fit_lr_end_factor=1.5)
    with pytest.raises(ValueError, match="lr_end_factor must be in"):
        adam_fit(lambda p: p["a"].sum(), {"a": torch.zeros(1, requires_grad=True)}, ["a"], 2, 0.1, lr_end_factor=-0.1)


@pytest.mark.parametrize("native", [False, True])
def test_bf16_auto_follows_the_device(monkeypatch, native):
    """``"auto"`` (the default of both switches) is bfloat16 exactly where the device has bfloat16 kernels: elsewhere
    emulated bfloat16 is many times slower (the grid head 85x on an AVX2-only CPU), so it means float32 there."""
    import scripts.inferer as inferer_module

    monkeypatch.setattr(inferer_module, "native_bf16", lambda device: native)
    torch.manual_seed(0)
    net = _tiny_net()
    image = torch.rand(1, 1, 12, 10)
    auto = MetaSegInferer(fit_steps=2, fit_lr=1e-2)
    assert (auto.head_bf16, auto.fit_bf16) == ("auto", "auto")
    assert auto.uses_bf16(image.device) is native and auto.uses_bf16(image.device, "fit") is native
    forced = MetaSegInferer(fit_steps=2, fit_lr=1e-2, head_bf16=native, fit_bf16=native)
    torch.testing.assert_close(auto.fit_decode(image, net), forced.fit_decode(image, net), rtol=0, atol=0)
    assert MetaSegInferer(head_bf16=not native).uses_bf16(image.device) is (not native)  # explicit values win


def test_native_bf16_reads_the_device():
    from scripts.inferer import native_bf16

    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert native_bf16(torch.device("cpu")) is bool(torch.backends.mkldnn.is_available() and check())
    assert native_bf16(torch.device("meta")) is False


@pytest.mark.parametrize("value", ["yes", 1, None, "True"])
def test_bf16_switches_refuse_other_values(value):
    with pytest.raises(ValueError, match="head_bf16 must be true, false or 'auto'"):
        MetaSegInferer(head_bf16=value)
    with pytest.raises(ValueError, match="fit_bf16 must be true, false or 'auto'"):
        MetaSegInferer(fit_bf16=value)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN (mkldnn) is not available")
def test_fit_bf16_rounds_the_fit_matmuls_only_while_fitting():
    """``fit_bf16``: oneDNN's bfloat16 matmul rounding for the fit only; the caller's setting is restored after."""
    torch.manual_seed(0)
    net = _tiny_net()
    image = torch.rand(1, 1, 24, 20)
    matmul = torch.backends.mkldnn.matmul
    assert matmul.fp32_precision == "none"
    seen = []
    original = net.trunk_features

    def spy(*args, **kwargs):
        seen.append(matmul.fp32_precision)
        return original(*args, **kwargs)

    net.trunk_features = spy
    fit16 = MetaSegInferer(fit_steps=3, fit_lr=1e-3, fit_bf16=True).fit(image, net)
    assert seen and set(seen) == {"bf16"} and matmul.fp32_precision == "none"
    seen.clear()
    fit32 = MetaSegInferer(fit_steps=3, fit_lr=1e-3, fit_bf16=False).fit(image, net)
    assert set(seen) == {"none"}
    for name, value in fit32.params.items():
        torch.testing.assert_close(fit16.params[name], value, rtol=0, atol=1e-2)

    # restored when the fit fails half-way too
    def failing(*args, **kwargs):
        raise RuntimeError("interrupted")

    net.trunk_features = failing
    with pytest.raises(RuntimeError, match="interrupted"):
        MetaSegInferer(fit_steps=3, fit_bf16=True).fit(image, net)
    assert matmul.fp32_precision == "none"


@pytest.mark.parametrize("end_factor", [1.0, 0.1])
@pytest.mark.parametrize("per_tensor_lr", [False, True])
def test_detached_adam_equals_differentiable_adam(per_tensor_lr, end_factor):
    """The test-time fit's multi-tensor Adam takes exactly the steps of the meta-training (graph) Adam, per-tensor
    learning rates and the cosine decay included, and leaves the caller's tensors untouched."""
    torch.manual_seed(0)
    x, y = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 1, dtype=torch.float64)
    start = {k: torch.randn(*s, dtype=torch.float64) for k, s in {"a": (3, 4), "b": (4, 1), "c": (1,)}.items()}

    def loss(p):
        return ((torch.sin(x @ p["a"]) @ p["b"] + p["c"] - y) ** 2).mean()

    lr = {"a": torch.tensor(1e-2, dtype=torch.float64), "b": torch.full((4, 1), 3e-3, dtype=torch.float64)}
    lr = lr if per_tensor_lr else 1e-2
    fresh = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    graph = adam_fit(loss, fresh, ["a", "b"], 7, lr, create_graph=True, lr_end_factor=end_factor)
    given = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    detached = adam_fit(loss, given, ["a", "b"], 7, lr, lr_end_factor=end_factor)
    for k in start:
        torch.testing.assert_close(detached[k], graph[k].detach(), rtol=1e-12, atol=1e-12)
        assert torch.equal(given[k].detach(), start[k]), k
    assert not torch.equal(detached["a"], start["a"]) and detached["a"].requires_grad and detached["a"].is_leaf
