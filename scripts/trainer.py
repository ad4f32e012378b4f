"""MAML meta-trainer: learns MetaSeg's initialisation with a differentiable inner Adam loop (second order)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from monai.utils import convert_to_tensor
from torch.nn import functional as F

from .fitting import adam_fit, batch_coordinate_grid, batch_params, flatten_image, gather_points, sample_points
from .network import TRUNK_PREFIXES, MetaSegINR

__all__ = ["PointLossTrainer", "MetaSegTrainer"]


class PointLossTrainer(SupervisedTrainer):
    """A ``SupervisedTrainer`` whose iteration minimises a loss computed by :meth:`compute_loss` on per-point outputs.

    Subclasses implement ``compute_loss(inputs, targets, net) -> (loss, extra outputs)``; this class prepares the
    batch, runs backward and the optimizer step, fills ``engine.state.output`` (``image``, ``label``, ``loss`` and the
    extras) and fires MONAI's iteration events, like ``SupervisedTrainer`` does.

    Args:
        grad_clip_norm: clip the gradient norm of the optimised parameters to this value before each step
            (``None``: no clipping). Second-order MAML through Adam has rare, very large meta-gradients.
        args, kwargs: those of ``monai.engines.SupervisedTrainer``.
    """

    def __init__(self, *args: Any, grad_clip_norm: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.grad_clip_norm = grad_clip_norm

    def compute_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise for one batch, and extra (detached) values to report."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss.")

    def _iteration(self, engine: PointLossTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[:2]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        loss, extras = engine.compute_loss(inputs, targets, getattr(engine.network, "module", engine.network))
        engine.state.output.update({Keys.LOSS: loss.detach(), **extras})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if engine.grad_clip_norm is not None:
            params = [p for group in engine.optimizer.param_groups for p in group["params"]]
            engine.state.output["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, engine.grad_clip_norm)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


class MetaSegTrainer(PointLossTrainer):
    """Second-order MAML over images and label maps, as a MONAI ``SupervisedTrainer``.

    Each iteration takes a batch of images and labels, copies the current initialisation once per image, runs
    ``inner_steps`` functional Adam steps (lr ``inner_lr``) on ``MSE + inner_seg_weight * seg_loss`` with the graph
    kept, then evaluates ``MSE + seg_weight * seg_loss`` of the adapted weights and back-propagates it through the
    inner loop into the initialisation, which ``optimizer`` updates. ``loss_function`` is any MONAI segmentation loss
    taking logits ``[B, C, N]`` and labels ``[B, 1, N]`` (e.g. ``FocalLoss(use_softmax=True, to_onehot_y=True)``).
    ``num_points`` random pixels per image (``None``: all) are used in each iteration to cut cost. With
    ``inner_points`` set, every inner step instead draws its own ``inner_points`` random pixels (voxels) of the whole
    image, as the reference 3D setting does (a new coordinate subsample per inner step); the outer loss keeps the
    iteration's ``num_points`` subset. ``seg_points`` limits the segmentation loss to that many of those points (the
    MSE keeps all): a head with neighbourhood context (``MetaSegINR(context_radius>0)``) evaluates the trunk at every
    neighbour of each point it classifies, so this bounds its cost.

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
        inner_points: int | None = None,
        seg_points: int | None = None,
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
        if inner_points is not None and inner_points <= 0:
            raise ValueError(f"inner_points must be a positive number of points or None, got {inner_points}.")
        self.inner_points = inner_points
        if seg_points is not None and seg_points <= 0:
            raise ValueError(f"seg_points must be a positive number of points or None, got {seg_points}.")
        self.seg_points = seg_points
        self.betas = (float(betas[0]), float(betas[1]))

    def compute_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Outer loss (MSE + ``seg_weight`` * segmentation loss) after the differentiable inner loop."""
        batch = inputs.shape[0]
        image = flatten_image(convert_to_tensor(inputs, track_meta=False).float())
        label = flatten_image(convert_to_tensor(targets, track_meta=False).long())
        full = (batch_coordinate_grid(inputs), image, label)
        index = sample_points(full[0].shape[1], self.num_points, batch, image.device)
        outer = tuple(gather_points(t, index) for t in full)
        # the segmentation loss uses the first seg_points of a random subset, or a random pick when all pixels are used
        seg_pick = None
        if self.seg_points is not None and index is None:
            seg_pick = sample_points(full[0].shape[1], self.seg_points, batch, image.device)

        def seg_subset(t: torch.Tensor, points: tuple[torch.Tensor, ...]) -> torch.Tensor:
            if self.seg_points is None:
                return t
            return gather_points(t, seg_pick) if points is outer and index is None else t[:, : self.seg_points]

        def losses(
            p: dict[str, torch.Tensor], with_seg: bool, points: tuple[torch.Tensor, ...]
        ) -> tuple[torch.Tensor, torch.Tensor]:
            coords, img, lab = points
            intensity, features, _ = net.functional_forward(coords, p, with_logits=False)
            mse = F.mse_loss(intensity, img)
            if not with_seg:
                return mse, mse.new_zeros(())
            seg_coords, seg_features = seg_subset(coords, points), seg_subset(features, points)
            head_input = net.head_input(seg_coords, p, seg_features if net.context_radius == 0 else None)
            logits = net.decode(head_input, p)
            return mse, self.loss_function(logits.transpose(1, 2), seg_subset(lab, points).transpose(1, 2))

        def inner_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            points = outer
            if self.inner_points is not None:  # a fresh coordinate subsample for this inner step
                step_index = sample_points(full[0].shape[1], self.inner_points, batch, image.device)
                points = tuple(gather_points(t, step_index) for t in full)
            mse, seg = losses(p, self.inner_seg_weight != 0, points)
            return mse + self.inner_seg_weight * seg

        params = batch_params(net.param_dict(), batch, detach=False)
        trainable = list(params) if self.inner_seg_weight != 0 else [k for k in params if k.startswith(TRUNK_PREFIXES)]
        lr = net.fit_lr(self.inner_lr)
        if isinstance(lr, dict):  # learned rates cover the trunk; a head adapted in the inner loop uses inner_lr
            lr = {k: lr.get(k, self.inner_lr) for k in trainable}
        adapted = adam_fit(inner_loss, params, trainable, self.inner_steps, lr, self.betas, create_graph=True)
        mse, seg = losses(adapted, True, outer)
        return mse + self.seg_weight * seg, {"mse": mse.detach(), "seg_loss": seg.detach()}
