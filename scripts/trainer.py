"""MAML meta-trainer: learns MetaSeg's initialisation with a differentiable inner Adam loop (second order)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.nn import functional as F

from .fitting import adam_fit, batch_params, coordinate_grid, flatten_image
from .network import TRUNK_PREFIXES, MetaSegINR

__all__ = ["MetaSegTrainer", "sample_points"]


def sample_points(num_total: int, num_points: int | None, batch_size: int, device: torch.device) -> torch.Tensor | None:
    """Per-sample random subsets of point indices ``[B, num_points]``, or ``None`` to use every point."""
    if num_points is None or num_points <= 0 or num_points >= num_total:
        return None
    return torch.rand(batch_size, num_total, device=device).argsort(dim=1)[:, :num_points]


def _gather(points: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Select ``index`` ``[B, n]`` along dim 1 of ``points`` ``[B, N, ...]``."""
    if index is None:
        return points
    return torch.gather(
        points, 1, index.view(*index.shape, *([1] * (points.dim() - 2))).expand(-1, -1, *points.shape[2:])
    )


class MetaSegTrainer(SupervisedTrainer):
    """Second-order MAML over images and label maps, as a MONAI ``SupervisedTrainer``.

    Each iteration takes a batch of images and labels, copies the current initialisation once per image, runs
    ``inner_steps`` functional Adam steps (lr ``inner_lr``) on ``MSE + inner_seg_weight * seg_loss`` with the graph
    kept, then evaluates ``MSE + seg_weight * seg_loss`` of the adapted weights and back-propagates it through the
    inner loop into the initialisation, which ``optimizer`` updates. ``loss_function`` is any MONAI segmentation loss
    taking logits ``[B, C, N]`` and labels ``[B, 1, N]`` (e.g. ``FocalLoss(use_softmax=True, to_onehot_y=True)``).
    ``num_points`` random pixels per image (``None``: all) are used in each iteration to cut cost.

    ``inner_seg_weight=0`` makes the inner loop see pixels only, exactly like the test-time fit of
    :class:`scripts.inferer.MetaSegInferer`; the reference implementation uses 1.

    All other arguments are those of ``monai.engines.SupervisedTrainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        inner_steps: int = 2,
        inner_lr: float = 1e-4,
        inner_seg_weight: float = 1.0,
        seg_weight: float = 1.0,
        num_points: int | None = None,
        betas: Sequence[float] = (0.9, 0.999),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        if not isinstance(getattr(network, "module", network), MetaSegINR):
            raise TypeError(f"MetaSegTrainer needs a MetaSegINR network, got {type(network).__name__}.")
        self.inner_steps = int(inner_steps)
        self.inner_lr = float(inner_lr)
        self.inner_seg_weight = float(inner_seg_weight)
        self.seg_weight = float(seg_weight)
        self.num_points = num_points
        self.betas = (float(betas[0]), float(betas[1]))

    def _iteration(self, engine: MetaSegTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[
            :2
        ]
        net: MetaSegINR = getattr(engine.network, "module", engine.network)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        spatial_shape = inputs.shape[2:]
        batch = inputs.shape[0]
        image = flatten_image(torch.as_tensor(inputs).float())
        label = flatten_image(torch.as_tensor(targets).long())
        coords = coordinate_grid(spatial_shape, device=image.device).expand(batch, -1, -1)
        index = sample_points(coords.shape[1], engine.num_points, batch, image.device)
        coords, image, label = (_gather(t, index) for t in (coords, image, label))

        def losses(p: dict[str, torch.Tensor], with_seg: bool) -> tuple[torch.Tensor, torch.Tensor]:
            intensity, _, logits = net.functional_forward(coords, p, with_logits=with_seg)
            mse = F.mse_loss(intensity, image)
            seg = engine.loss_function(logits.transpose(1, 2), label.transpose(1, 2)) if with_seg else mse.new_zeros(())
            return mse, seg

        def inner_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            mse, seg = losses(p, with_seg=engine.inner_seg_weight != 0)
            return mse + engine.inner_seg_weight * seg

        params = batch_params(net.param_dict(), batch, detach=False)
        trainable = (
            list(params) if engine.inner_seg_weight != 0 else [k for k in params if k.startswith(TRUNK_PREFIXES)]
        )
        adapted = adam_fit(
            inner_loss, params, trainable, engine.inner_steps, engine.inner_lr, engine.betas, create_graph=True
        )
        mse, seg = losses(adapted, with_seg=True)
        loss = mse + engine.seg_weight * seg
        engine.state.output.update({Keys.LOSS: loss.detach(), "mse": mse.detach(), "seg_loss": seg.detach()})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
