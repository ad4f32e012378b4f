"""HeadFineTuneTrainer: cached fits stay paired with the label maps they were fitted with (augmented data)."""

from __future__ import annotations

import torch
from monai.data import MetaTensor
from monai.losses import DiceFocalLoss

from scripts.head_trainer import HeadFineTuneTrainer
from scripts.inferer import MetaSegInferer
from tests.utils import tiny_metaseg


def test_cached_fit_is_used_with_its_own_labels():
    net = tiny_metaseg(context_grid=(16, 16))
    trainer = HeadFineTuneTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[],
        network=net,
        optimizer=torch.optim.Adam(net.head.parameters()),
        loss_function=DiceFocalLoss(softmax=True, to_onehot_y=True),
        inferer=MetaSegInferer(fit_steps=1, fit_points=None, fit_bf16=False),
    )
    image = MetaTensor(torch.rand(1, 1, 16, 16), meta={"filename_or_obj": ["a.nii.gz"]})
    first = torch.randint(0, 5, (1, 1, 16, 16))
    flipped = first.flip(-2)  # the same file, augmented differently in a later epoch
    fit, labels = trainer._fitted_params(image, first, net)
    assert torch.equal(labels, first)
    cached, labels = trainer._fitted_params(image.flip(-2), flipped, net)
    assert torch.equal(labels.long(), first)  # the labels of the cached fit, not the new augmentation's
    assert all(torch.equal(cached.params[k], fit.params[k]) for k in fit.params)
