"""MetaSegINR: shapes, parameter count, and the functional (batched) forward matching the module forward."""

import math

import pytest
import torch

from scripts.network import TRUNK_PREFIXES, MetaSegINR, widen_head_context
from tests.utils import REPO_ROOT


def test_reference_size_and_shapes():
    net = MetaSegINR()
    # 2->128, 4x 128->128 sine layers, 128->1 intensity, head 128->128->5
    assert sum(p.numel() for p in net.parameters()) == 83718
    out = net(torch.rand(2, 100, 2) * 2 - 1)
    assert out.shape == (2, 100, 1 + 5)


@pytest.mark.parametrize("spatial_dims,num_classes", [(2, 25), (3, 5)])
def test_configurable(spatial_dims, num_classes):
    net = MetaSegINR(spatial_dims=spatial_dims, hidden_channels=32, num_sine_layers=3, num_classes=num_classes)
    assert net(torch.zeros(1, 7, spatial_dims)).shape == (1, 7, 1 + num_classes)
    assert len(net.trunk) == 3


def test_functional_forward_batched_matches_module():
    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=32, num_sine_layers=3, head_channels=16)
    coords = torch.rand(3, 50, 2) * 2 - 1
    expected = net(coords)
    batched = {k: v.unsqueeze(0).expand(3, *v.shape) for k, v in net.param_dict().items()}
    intensity, features, logits = net.functional_forward(coords, batched)
    assert features.shape == (3, 50, 32)
    torch.testing.assert_close(torch.cat([intensity, logits], -1), expected, rtol=1e-5, atol=1e-5)


def test_batched_parameters_cpu_loop_matches_baddbmm():
    """On a CPU, per-sample weights run sample by sample; the result equals the batched-matmul path."""
    from scripts.network import _linear

    x, w, b = torch.randn(3, 7, 4), torch.randn(3, 5, 4), torch.randn(3, 5)
    per_sample = torch.stack([torch.nn.functional.linear(x[i], w[i], b[i]) for i in range(3)])
    torch.testing.assert_close(_linear(x, w, b), per_sample)  # the batched-matmul path (used on GPUs)
    torch.testing.assert_close(_linear(x[:1], w[:1], b[:1]), torch.baddbmm(b[:1].unsqueeze(1), x[:1], w[:1].mT))
    net = MetaSegINR(hidden_channels=8, num_sine_layers=2, head_channels=8)
    params = {
        k: v.detach().unsqueeze(0).repeat(3, *[1] * v.dim()) + 0.01 * torch.randn(3, *v.shape)
        for k, v in net.param_dict().items()
    }
    coords = torch.rand(3, 11, 2)
    looped = net.functional_forward(coords, params)
    for i in range(3):
        single = net.functional_forward(coords[i : i + 1], {k: v[i] for k, v in params.items()})
        for a, b_ in zip(looped, single):
            torch.testing.assert_close(a[i : i + 1], b_)


def test_siren_initialisation_bounds():
    net = MetaSegINR(omega0=30.0)
    assert net.trunk[0].weight.abs().max() <= 1.0 / 2
    assert net.trunk[1].weight.abs().max() <= (6.0 / 128) ** 0.5 / 30.0


@pytest.mark.parametrize("mode,extra", [(None, 0), ("layer", 12), ("element", 66_561)])
def test_learned_fit_lr_parameters(mode, extra):
    """Meta-SGD-style learning-rate factors: stored in the state dict, excluded from the fitted weights."""
    net = MetaSegINR(learned_fit_lr=mode)
    assert sum(p.numel() for p in net.parameters()) == 83_718 + extra
    assert set(net.param_dict()) == set(MetaSegINR().state_dict())
    lr = net.fit_lr(1e-4)
    if mode is None:
        assert lr == 1e-4
    else:
        assert set(lr) == {k for k in net.param_dict() if k.startswith(TRUNK_PREFIXES)}
        assert all(torch.allclose(v, torch.full_like(v, 1e-4)) for v in lr.values())  # factors start at 1
        assert all(v.shape == (net.param_dict()[k].shape if mode == "element" else ()) for k, v in lr.items())


@pytest.mark.parametrize(
    "kwargs", [{"spatial_dims": 4}, {"num_classes": 1}, {"num_sine_layers": 0}, {"learned_fit_lr": "global"}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MetaSegINR(**kwargs)


def test_torchscript_matches_eager_on_coordinates():
    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=32, num_sine_layers=3, head_channels=16)
    scripted = torch.jit.script(net)
    coords = torch.rand(2, 40, 2) * 2 - 1
    torch.testing.assert_close(scripted(coords), net(coords), rtol=0, atol=0)
    with pytest.raises(Exception, match="coordinates"):
        scripted(torch.rand(1, 40, 3))


def test_inferer_defaults_are_the_configs_fit_settings():
    """``MetaSegSegmenter(network)(image)`` (MetaSegInferer's defaults), ``run inference`` and training (validation,
    the head's features) fit images the same way."""
    import json
    from inspect import signature

    from scripts.inferer import MetaSegInferer

    defaults = signature(MetaSegInferer).parameters
    for config in ("configs/train.json", "configs/inference.json"):
        cfg = json.loads((REPO_ROOT / config).read_text())
        for key in ("fit_steps", "fit_lr", "fit_lr_end_factor", "fit_points", "fit_bf16"):
            assert cfg[key] == defaults[key].default, (config, key)


def test_segmenter_is_the_fit_then_decode_contract():
    from scripts.inferer import MetaSegInferer
    from scripts.segmenter import MetaSegSegmenter

    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=32, num_sine_layers=2, head_channels=16)
    image = torch.rand(1, 1, 12, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        logits = MetaSegSegmenter(net)(image)
    assert logits.shape == (1, 5, 12, 10)
    torch.testing.assert_close(logits, MetaSegInferer()(image, net))
    torch.testing.assert_close(net.state_dict(), before)  # the fit works on copies
    fewer = MetaSegSegmenter(net, MetaSegInferer(fit_steps=3))(image)
    torch.testing.assert_close(fewer, MetaSegInferer(fit_steps=3)(image, net))
    with pytest.raises(ValueError, match="images"):
        MetaSegSegmenter(net)(torch.rand(1, 1, 12, 10, 4))


def test_network_takes_coordinates_only():
    net = MetaSegINR(hidden_channels=8, num_sine_layers=2, head_channels=8)
    with pytest.raises(ValueError, match=r"takes coordinates .*segmenter\.MetaSegSegmenter"):
        net(torch.rand(1, 1, 12, 10))


def test_context_head_reads_neighbour_features():
    """``context_radius``: the head's input is the trunk features at the (2r+1)^D neighbours, clamped to [-1, 1]."""
    torch.manual_seed(0)
    net = MetaSegINR(hidden_channels=8, num_sine_layers=2, head_channels=4, context_radius=1, context_grid=(9, 9))
    assert net.head[0].in_features == 9 * 8 and net.context_offsets.shape == (9, 2)
    # step 4 pixels of a 9-pixel grid = 1.0 in coordinates; neighbours outside [-1, 1] are clamped
    assert torch.allclose(net.context_offsets.abs().max(), torch.tensor(1.0))
    coords = torch.tensor([[[0.0, 0.0], [1.0, -1.0]]])
    params = net.param_dict()
    head_input = net.head_input(coords, params)
    expected = []
    for point in coords[0]:
        neighbours = (point + net.context_offsets).clamp(-1, 1)[None]
        expected.append(net.trunk_features(neighbours, params).reshape(-1))
    torch.testing.assert_close(head_input[0], torch.stack(expected))
    # module forward (the TorchScript path) and functional forward agree
    intensity, _, logits = net.functional_forward(coords, params)
    torch.testing.assert_close(net(coords), torch.cat([intensity, logits], -1))
    torch.testing.assert_close(torch.jit.script(net)(coords), net(coords))


def test_context_head_arguments_are_checked():
    with pytest.raises(ValueError, match="context_grid"):
        MetaSegINR(context_radius=1)
    with pytest.raises(ValueError, match="context_radius"):
        MetaSegINR(context_radius=-1)
    assert MetaSegINR(context_radius=0).head[0].in_features == 128  # the paper's head: the point's own features


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_widened_head_context_keeps_the_logits(spatial_dims):
    grid = (32,) * spatial_dims
    kw = dict(hidden_channels=16, num_sine_layers=2, head_channels=8, context_step=2, context_grid=grid)
    torch.manual_seed(0)
    small = MetaSegINR(spatial_dims, context_radius=1, **kw)
    big = MetaSegINR(spatial_dims, context_radius=2, **kw)
    state = widen_head_context(small.state_dict(), big)
    big.load_state_dict(state)
    coords = torch.rand(1, 64, spatial_dims) * 1.2 - 0.6  # inside, so no neighbour is clamped differently
    torch.testing.assert_close(big(coords), small(coords), rtol=1e-4, atol=1e-5)
    assert state["head.0.weight"].count_nonzero() == small.state_dict()["head.0.weight"].count_nonzero()
    # a state that already fits, or one for a larger neighbourhood, is left as it is
    fitting = big.state_dict()
    assert widen_head_context(fitting, big) is fitting
    assert widen_head_context(fitting, small) is fitting


def test_head_fine_tuning_starts_from_a_smaller_context(tmp_path):
    from scripts.checkpoint import load_network_checked

    kw = dict(hidden_channels=16, num_sine_layers=2, head_channels=8, context_step=2, context_grid=(32, 32))
    small = MetaSegINR(2, context_radius=0, **kw)
    torch.save(small.state_dict(), tmp_path / "meta_model.pt")
    big = MetaSegINR(2, context_radius=1, **kw)
    with pytest.raises(ValueError, match="meta_model.pt"):
        load_network_checked(big, str(tmp_path / "meta_model.pt"))
    load_network_checked(big, str(tmp_path / "meta_model.pt"), widen_head=True)
    coords = torch.rand(1, 16, 2) * 1.2 - 0.6
    torch.testing.assert_close(big(coords), small(coords), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_grid_head_is_dilated_convolutions_with_replicate_padding(spatial_dims):
    """``decode_grid`` equals the grid head's convolutions run by PyTorch's modules at the configured dilations."""
    torch.manual_seed(0)
    net = MetaSegINR(
        spatial_dims, hidden_channels=8, num_sine_layers=2, grid_head_channels=4, grid_head_dilations=(1, 3)
    )
    shape = (9, 11) if spatial_dims == 2 else (5, 6, 7)
    features = torch.randn(2, math.prod(shape), 8)
    grid = features.transpose(1, 2).reshape(2, 8, *shape)

    def reference(scale: int) -> torch.Tensor:
        x = grid
        convs = [m for m in net.grid_head if isinstance(m, torch.nn.modules.conv._ConvNd)]
        for i, conv in enumerate(convs):
            if 0 < i < len(convs) - 1:
                d = net.grid_head_dilations[i - 1] * scale
                module = type(conv)(4, 4, 3, padding=d, dilation=d, padding_mode="replicate")
                module.load_state_dict(conv.state_dict())
                x = module(x)
            else:
                x = conv(x)
            x = torch.nn.functional.leaky_relu(x) if i < len(convs) - 1 else x
        return x.flatten(2).transpose(1, 2)

    with torch.no_grad():
        torch.testing.assert_close(net.decode_grid(features, shape), reference(1))
        torch.testing.assert_close(net.decode_grid(features, shape, scale=2), reference(2))
    assert net.decoder_parameters() == list(net.grid_head.parameters())
    point_only = MetaSegINR(spatial_dims, hidden_channels=8, num_sine_layers=2)
    assert point_only.grid_head is None and point_only.decoder_parameters() == list(point_only.head.parameters())


def test_grid_head_arguments_are_checked():
    with pytest.raises(ValueError, match="grid_head"):
        MetaSegINR(grid_head_channels=0)
    with pytest.raises(ValueError, match="grid_head"):
        MetaSegINR(grid_head_channels=8, grid_head_dilations=())
    with pytest.raises(RuntimeError, match="no grid head"):
        MetaSegINR().decode_grid(torch.zeros(1, 4, 128), (2, 2))


def test_meta_trained_state_gets_the_networks_initial_grid_head(tmp_path):
    """A meta-trained state has no grid head: the fine-tune's load adds the network's own, a plain load refuses it."""
    from scripts.checkpoint import load_network_checked

    kw = dict(hidden_channels=16, num_sine_layers=2, head_channels=8, context_radius=1, context_grid=(32, 32))
    meta = MetaSegINR(2, **kw)
    torch.save(meta.state_dict(), tmp_path / "meta_model.pt")
    net = MetaSegINR(2, **kw, grid_head_channels=4)
    initial = {k: v.clone() for k, v in net.state_dict().items() if k.startswith("grid_head.")}
    with pytest.raises(ValueError, match="grid_head_channels=None but the config has grid_head_channels=4"):
        load_network_checked(net, str(tmp_path / "meta_model.pt"))
    load_network_checked(net, str(tmp_path / "meta_model.pt"), widen_head=True)
    state = net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial.items())
    assert all(torch.equal(state[k], v) for k, v in meta.state_dict().items())
