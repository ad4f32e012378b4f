"""Head fine-tuning: train the segmentation head on features of images fitted from the meta-learned start."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.utils import convert_to_tensor

from .fitting import batch_coordinate_grid, flatten_image, gather_points, sample_points
from .inferer import FitResult, MetaSegInferer
from .network import HEAD_PREFIX, MetaSegINR
from .trainer import PointLossTrainer

__all__ = ["HeadFineTuneTrainer"]


class HeadFineTuneTrainer(PointLossTrainer):
    """Fine-tunes MetaSeg's head on penultimate features of training images fitted exactly as at inference.

    Every image is fitted by ``inferer`` (the same :class:`MetaSegInferer` used for inference) from the current
    network weights; its features are then decoded by the head and ``loss_function`` (logits ``[B, C, N]``, labels
    ``[B, 1, N]``) is minimised w.r.t. the head only, so ``optimizer`` must hold only head parameters. The trunk is
    frozen in this stage, so each image's fit is computed once and cached by file name (``cache_fits=True``),
    together with the label map it was fitted with: with random augmentation in the data pipeline, an image is seen
    under the (rotation, flip, contrast, ...) drawn for it the first time, and features and labels always match.
    ``num_points`` random pixels per image (``None``: all) enter each loss.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        inferer: MetaSegInferer,
        num_points: int | None = None,
        cache_fits: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            inferer=inferer,
            **kwargs,
        )
        if not isinstance(inferer, MetaSegInferer):
            raise TypeError(f"HeadFineTuneTrainer needs a MetaSegInferer, got {type(inferer).__name__}.")
        net = getattr(network, "module", network)
        head_ids = {id(p) for n, p in net.named_parameters() if n.startswith(HEAD_PREFIX)}
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in head_ids]
        if foreign:
            raise ValueError("HeadFineTuneTrainer's optimizer must hold only the head's parameters (network.head).")
        self.num_points = num_points
        self.cache_fits = cache_fits
        self._fit_cache: dict[str, dict[str, torch.Tensor]] = {}
        self._label_cache: dict[str, torch.Tensor] = {}

    def _fitted_params(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[FitResult, torch.Tensor]:
        """Fit the batch with the inference-time fit, or reuse cached fits of the same files with their labels."""
        names = getattr(inputs, "meta", {}).get("filename_or_obj") if self.cache_fits else None
        if names is None or any(n not in self._fit_cache for n in names):
            fit = self.inferer.fit(inputs, net)
            if names is not None:
                for i, n in enumerate(names):
                    self._fit_cache[n] = {k: v[i] for k, v in fit.params.items()}
                    self._label_cache[n] = targets[i].detach().to(torch.uint8)
            return fit, targets
        params = {k: torch.stack([self._fit_cache[n][k] for n in names]) for k in self._fit_cache[names[0]]}
        spatial_shape = tuple(int(s) for s in inputs.shape[2:])
        coords = batch_coordinate_grid(inputs)
        labels = torch.stack([self._label_cache[n] for n in names]).to(targets.device)
        return FitResult(params=params, coords=coords, spatial_shape=spatial_shape), labels

    def compute_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Segmentation loss of the head on the (cached) fitted features of a random subset of points."""
        fit, targets = self._fitted_params(inputs, targets, net)
        label = flatten_image(convert_to_tensor(targets, track_meta=False).long())
        index = sample_points(fit.coords.shape[1], self.num_points, inputs.shape[0], inputs.device)
        with torch.no_grad():
            head_input = net.head_input(gather_points(fit.coords, index), fit.params)
        logits = net.decode(head_input)
        return self.loss_function(logits.transpose(1, 2), gather_points(label, index).transpose(1, 2)), {}
