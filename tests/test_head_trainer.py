"""HeadFineTuneTrainer: cached fits stay paired with the label maps they were fitted with (augmented data)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.losses import DiceFocalLoss

from scripts.head_trainer import HeadFineTuneTrainer
from scripts.inferer import MetaSegInferer
from tests.utils import tiny_metaseg


def _trainer(net) -> HeadFineTuneTrainer:
    """A head fine-tune trainer of ``net`` with a one-step fit on all pixels (no data loader: tests call it)."""
    return _trainer_with(net, torch.optim.Adam(net.decoder_parameters()))


def _trainer_with(
    net, optimizer: torch.optim.Optimizer, data: list | None = None, max_epochs: int = 1, **kwargs
) -> HeadFineTuneTrainer:
    return HeadFineTuneTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=data or [],
        network=net,
        optimizer=optimizer,
        loss_function=DiceFocalLoss(softmax=True, to_onehot_y=True),
        inferer=MetaSegInferer(fit_steps=1, fit_points=None, fit_bf16=False),
        **kwargs,
    )


def test_cached_fit_is_used_with_its_own_labels():
    net = tiny_metaseg(context_grid=(16, 16))
    trainer = _trainer(net)
    image = MetaTensor(torch.rand(1, 1, 16, 16), meta={"filename_or_obj": ["a.nii.gz"]})
    first = torch.randint(0, 5, (1, 1, 16, 16))
    flipped = first.flip(-2)  # the same file, augmented differently in a later epoch
    fit, labels = trainer._fitted_params(image, first, net)
    assert torch.equal(labels, first)
    cached, labels = trainer._fitted_params(image.flip(-2), flipped, net)
    assert torch.equal(labels.long(), first)  # the labels of the cached fit, not the new augmentation's
    assert all(torch.equal(cached.params[k], fit.params[k]) for k in cached.params)  # the fitted trunk
    assert all(k.startswith(("trunk.", "intensity.")) for k in cached.params)


def test_neighbour_features_come_from_one_cached_trunk_pass():
    """On the fitted grid the head's input gathered from cached grid features equals the trunk at every neighbour."""
    net = tiny_metaseg(context_grid=(16, 16), context_step=2, context_radius=2, grid_head_channels=None)
    trainer = _trainer(net)
    images = MetaTensor(torch.rand(2, 1, 16, 16), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    fit, _ = trainer._fitted_params(images, torch.zeros(2, 1, 16, 16), net)
    index = torch.stack([torch.randperm(256)[:40] for _ in range(2)])
    expected = net.head_input(torch.stack([fit.coords[i, index[i]] for i in range(2)]), fit.params)
    names = ["a.nii.gz", "b.nii.gz"]
    torch.testing.assert_close(trainer._head_input(fit, net, index, names), expected, rtol=1e-5, atol=1e-5)
    assert set(trainer.fit_cache.features) == set(names)
    torch.testing.assert_close(trainer._head_input(fit, net, index, names), expected, rtol=1e-5, atol=1e-5)
    full = net.head_input(fit.coords, fit.params)
    torch.testing.assert_close(trainer._head_input(fit, net, None, None), full, rtol=1e-5, atol=1e-5)


def test_grid_head_is_trained_on_the_whole_fitted_grid():
    """With a grid head, the loss decodes every pixel of the fitted grid, and only the grid head learns."""
    net = tiny_metaseg(context_grid=(16, 16))
    trainer = _trainer(net)
    with pytest.raises(ValueError, match="grid_head"):
        _trainer_with(net, torch.optim.Adam(net.head.parameters()))
    images = MetaTensor(torch.rand(2, 1, 16, 16), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    labels = torch.randint(0, 5, (2, 1, 16, 16))
    loss, _ = trainer.compute_loss(images, labels, net)
    fit, _ = trainer._fitted_params(images, labels, net)
    logits = net.decode_grid(net.trunk_features(fit.coords, fit.params), (16, 16)).transpose(1, 2)
    expected = trainer.loss_function(logits, labels.flatten(2))
    torch.testing.assert_close(loss, expected)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss.backward()
    trainer.optimizer.step()
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("grid_head.") for k in changed)


def test_grid_crop_takes_one_aligned_random_window_per_image():
    """With ``grid_crop`` each image's loss reads one random window, its features and labels from the same pixels."""
    net = tiny_metaseg(context_grid=(16, 16))
    trainer = _trainer_with(net, torch.optim.Adam(net.decoder_parameters()), grid_crop=8)
    with pytest.raises(ValueError, match="grid_crop"):
        _trainer_with(net, torch.optim.Adam(net.decoder_parameters()), grid_crop=0)
    pixel = torch.arange(256.0).reshape(1, 256, 1).expand(2, -1, -1)
    features = torch.cat([pixel, torch.rand(2, 256, 3)], dim=-1)
    label = (pixel.long() % 5) + torch.tensor([0, 5]).reshape(2, 1, 1)  # which image: +5 on the second
    corners = set()
    for _ in range(20):
        window, window_label, shape = trainer._grid_window(features, label, (16, 16))
        assert shape == (8, 8) and window.shape == (2, 64, 4) and window_label.shape == (2, 64, 1)
        index = window[..., 0].long()
        rows = index.reshape(2, 8, 8)
        assert torch.all(rows.diff(dim=1) == 16) and torch.all(rows.diff(dim=2) == 1)  # a contiguous 8x8 window
        assert torch.equal(window_label.squeeze(-1), index % 5 + torch.tensor([[0], [5]]))
        corners.update(int(i) for i in index[:, 0])
    assert len(corners) > 5  # new windows at every call
    whole = _trainer_with(net, torch.optim.Adam(net.decoder_parameters()), grid_crop=(32, 32))
    full, full_label, shape = whole._grid_window(features, label, (16, 16))
    assert shape == (16, 16) and torch.equal(full, features) and torch.equal(full_label, label)


@pytest.mark.parametrize("shape", [(16, 16), (8, 10, 12)])
def test_grid_crop_loss_trains_the_grid_head(shape):
    """The window's loss decodes the window of the whole fitted grid's features (evaluated there, not kept)."""
    net = tiny_metaseg(spatial_dims=len(shape), context_grid=shape)
    trainer = _trainer_with(net, torch.optim.Adam(net.decoder_parameters()), grid_crop=6)
    images = MetaTensor(torch.rand(2, 1, *shape), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})
    labels = torch.randint(0, 5, (2, 1, *shape))
    trainer._fitted_params(images, labels, net)  # fit and cache first, so that both losses draw the same windows
    torch.manual_seed(3)
    loss, _ = trainer.compute_loss(images, labels, net)
    assert torch.isfinite(loss) and not trainer.fit_cache.features
    fit, _ = trainer._fitted_params(images, labels, net)
    torch.manual_seed(3)
    features, window_label, window = trainer._grid_window(
        net.trunk_features(fit.coords, fit.params), labels.flatten(2).transpose(1, 2), shape
    )
    assert window == (6,) * len(shape)
    expected = trainer.loss_function(net.decode_grid(features, window).transpose(1, 2), window_label.transpose(1, 2))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in net.grid_head.parameters())


def test_refit_interval_fits_the_images_again_every_n_epochs():
    """``refit_interval`` 2: the images are fitted in epochs 1, 3 and 5 and decoded from the cache in between."""
    net = tiny_metaseg(context_grid=(16, 16))
    with pytest.raises(ValueError, match="refit_interval"):
        _trainer_with(net, torch.optim.Adam(net.decoder_parameters()), refit_interval=0)
    batches = [
        {"image": MetaTensor(torch.rand(1, 1, 16, 16), meta={"filename_or_obj": [f"{n}.nii.gz"]}), "label": label}
        for n, label in (("a", torch.randint(0, 5, (1, 1, 16, 16))), ("b", torch.randint(0, 5, (1, 1, 16, 16))))
    ]
    optimizer = torch.optim.Adam(net.decoder_parameters())
    trainer = _trainer_with(net, optimizer, batches, max_epochs=5, refit_interval=2, grid_crop=8)
    fitted_in: list[int] = []
    fit = trainer.inferer.fit
    trainer.inferer.fit = lambda *args: fitted_in.append(trainer.state.epoch) or fit(*args)
    trainer.run()
    assert fitted_in == [1, 1, 3, 3, 5, 5]
    assert set(trainer.fit_cache.params) == {"a.nii.gz", "b.nii.gz"}
