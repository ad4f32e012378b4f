"""Head fine-tuning: train the segmentation head on features of images fitted from the meta-learned start."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.utils import convert_to_tensor, ensure_tuple_rep

from .fitting import (
    batch_coordinate_grid,
    flatten_image,
    gather_neighbours,
    gather_points,
    grid_neighbour_index,
    sample_points,
)
from .inferer import FitResult, MetaSegInferer
from .network import TRUNK_PREFIXES, MetaSegINR
from .trainer import PointLossTrainer

__all__ = ["FitCache", "HeadFineTuneTrainer"]


class FitCache:
    """Fitted trunk weights and label maps of training images by file name, plus their grid features (derived; used by
    point-wise heads with neighbourhood context).

    Part of the head stage's checkpoint (``state_dict``), so that a resumed fine-tune decodes the very fits, and label
    maps, of the images' latest fitting epoch, as the uninterrupted run does: re-fitting after a resume would see the
    resumed epoch's augmentation instead. The grid features are recomputed from the weights and are not saved.
    """

    def __init__(self) -> None:
        self.params: dict[str, dict[str, torch.Tensor]] = {}
        self.labels: dict[str, torch.Tensor] = {}
        self.features: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, dict]:
        return {"params": self.params, "labels": self.labels}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        self.params, self.labels, self.features = dict(state["params"]), dict(state["labels"]), {}

    def clear(self) -> None:
        """Forget every fit: the next epoch fits its images again, under that epoch's augmentation."""
        self.params, self.labels, self.features = {}, {}, {}


class HeadFineTuneTrainer(PointLossTrainer):
    """Fine-tunes MetaSeg's head on penultimate features of training images fitted exactly as at inference.

    Every image is fitted by ``inferer`` (the same :class:`MetaSegInferer` used for inference) from the current
    network weights; its features are then decoded by the head and ``loss_function`` (logits ``[B, C, N]``, labels
    ``[B, 1, N]``) is minimised w.r.t. the head only, so ``optimizer`` must hold only the parameters of what decodes
    images (``network.decoder_parameters()``: the grid head when the network has one, else the head). The trunk is
    frozen in this stage, so each image's fit is computed once (per ``refit_interval``, below) and cached by file name
    (``cache_fits=True``), together with the label map it was fitted with: with random augmentation in the data
    pipeline, an image is seen under the (rotation, flip, contrast, ...) drawn for it when it was fitted, and features
    and labels always match.
    ``num_points`` random pixels per image (``None``: all) enter each loss. A head with neighbourhood context reads
    the neighbours' features from one trunk pass over the fitted grid (cached with the fit), as the inferer decodes,
    instead of evaluating the trunk again at every neighbour of every point. A grid head decodes the whole fitted grid
    and its loss takes every pixel (``num_points`` applies to point-wise heads), or, with ``grid_crop`` (an int or
    one size per spatial dim), one random window of that size of each image's fitted grid per iteration: the
    convolutions then cost a fraction of a whole grid's, and each epoch sees the images in new windows. The grid
    head's features are evaluated from the cached fitted weights at the window's coordinates every iteration (a
    trunk pass costs little beside the convolutions) rather than kept: a 3D volume's would take ~0.3 GB.

    ``refit_interval`` N (``None``: never) clears the cache at the start of epochs N+1, 2N+1, ...: the images are then
    fitted again under a new draw of the augmentation, so the head learns from several augmented fits of each
    training image instead of one, at the cost of one fit of the training set per N epochs. The clearing depends on
    the epoch number only, so a resumed run refits where the uninterrupted one does.
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
        fit_cache: FitCache | None = None,
        grid_crop: int | Sequence[int] | None = None,
        refit_interval: int | None = None,
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
        head_ids = {id(p) for p in net.decoder_parameters()}
        foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in head_ids]
        if foreign:
            head = "network.head" if net.grid_head is None else "network.grid_head"
            raise ValueError(
                f"HeadFineTuneTrainer's optimizer must hold only the decoder's parameters ({head}: "
                "network.decoder_parameters())."
            )
        self.num_points = num_points
        self.cache_fits = cache_fits
        self.fit_cache = FitCache() if fit_cache is None else fit_cache
        self.grid_crop = None if grid_crop is None else ensure_tuple_rep(grid_crop, net.spatial_dims)
        if self.grid_crop is not None and min(self.grid_crop) < 1:
            raise ValueError(f"grid_crop must be positive window sizes, got {grid_crop}.")
        if refit_interval is not None and refit_interval < 1:
            raise ValueError(f"refit_interval must be a positive number of epochs or None, got {refit_interval}.")
        self.refit_interval = refit_interval
        if refit_interval is not None:
            self.add_event_handler(Events.EPOCH_STARTED, self._refit_due)

    def _refit_due(self, engine: HeadFineTuneTrainer) -> None:
        """Clear the fit cache at the start of every ``refit_interval``-th epoch after the first."""
        epoch = engine.state.epoch  # already incremented: the epoch starting now
        if epoch > 1 and (epoch - 1) % self.refit_interval == 0:
            self.fit_cache.clear()

    def _cache_names(self, inputs: torch.Tensor) -> list[str] | None:
        """The batch's file names, under which its fits are cached (``None``: not cached)."""
        return getattr(inputs, "meta", {}).get("filename_or_obj") if self.cache_fits else None

    def _fitted_params(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[FitResult, torch.Tensor]:
        """Fit the batch with the inference-time fit, or reuse cached fits of the same files with their labels."""
        names = self._cache_names(inputs)
        cache = self.fit_cache
        if names is None or any(n not in cache.params for n in names):
            fit = self.inferer.fit(inputs, net)
            if names is not None:
                for i, n in enumerate(names):  # the trunk's fitted weights only: the head is not fitted
                    cache.params[n] = {k: v[i] for k, v in fit.params.items() if k.startswith(TRUNK_PREFIXES)}
                    cache.labels[n] = convert_to_tensor(targets[i].detach(), track_meta=False).to(torch.uint8)
            return fit, targets
        params = {k: torch.stack([cache.params[n][k] for n in names]) for k in cache.params[names[0]]}
        spatial_shape = tuple(int(s) for s in inputs.shape[2:])
        coords = batch_coordinate_grid(inputs)
        labels = torch.stack([cache.labels[n] for n in names]).to(targets.device)
        return FitResult(params=params, coords=coords, spatial_shape=spatial_shape), labels

    @torch.no_grad()
    def _grid_features(self, fit: FitResult, net: MetaSegINR, names: list[str] | None) -> torch.Tensor:
        """Trunk features ``[B, N, hidden]`` of the whole fitted grid, cached by file name."""
        cached = self.fit_cache.features
        if names is not None and all(n in cached for n in names):
            return torch.stack([cached[n] for n in names])
        features = net.trunk_features(fit.coords, fit.params)
        for i, n in enumerate(names or []):
            cached[n] = features[i]
        return features

    def _grid_window(
        self, points: torch.Tensor, label: torch.Tensor, spatial_shape: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """Per-point values ``[B, N, c]`` (coordinates or features) and labels ``[B, N, 1]`` of the whole grid, or of
        one random ``grid_crop`` window per image (at most the grid's size), with the window's spatial shape."""
        shape = tuple(int(s) for s in spatial_shape)
        if self.grid_crop is None:
            return points, label, shape
        size = tuple(min(c, s) for c, s in zip(self.grid_crop, shape))
        maps = [x.reshape(x.shape[0], *shape, x.shape[-1]) for x in (points, label)]
        windows: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        for i in range(points.shape[0]):
            corner = [int(torch.randint(0, s - c + 1, ())) for s, c in zip(shape, size)]
            window = (i, *(slice(a, a + c) for a, c in zip(corner, size)))
            for picked, x in zip(windows, maps):
                picked.append(x[window])
        points, label = (torch.stack(picked).flatten(1, -2) for picked in windows)
        return points, label, size

    @torch.no_grad()
    def _head_input(
        self, fit: FitResult, net: MetaSegINR, index: torch.Tensor | None, names: list[str] | None
    ) -> torch.Tensor:
        """The head's input ``[B, n, K * hidden]`` at the points ``index`` ``[B, n]`` (``None``: all) of the fit."""
        if net.context_radius == 0 or fit.spatial_shape != net.context_grid:
            return net.head_input(gather_points(fit.coords, index), fit.params)
        features = self._grid_features(fit, net, names)
        rows = grid_neighbour_index(fit.spatial_shape, net.context_pixels.to(features.device), index)  # [(B,) n, K]
        return gather_neighbours(features, rows)

    def compute_loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, net: MetaSegINR
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Segmentation loss of the head on the (cached) fitted features of a random subset of points."""
        fit, targets = self._fitted_params(inputs, targets, net)
        names = self._cache_names(inputs)
        label = flatten_image(convert_to_tensor(targets, track_meta=False).long())
        if net.grid_head is not None:
            coords, label, shape = self._grid_window(fit.coords, label, fit.spatial_shape)
            with torch.no_grad():
                features = net.trunk_features(coords, fit.params)
            logits = net.decode_grid(features, shape)
            return self.loss_function(logits.transpose(1, 2), label.transpose(1, 2)), {}
        index = sample_points(fit.coords.shape[1], self.num_points, inputs.shape[0], inputs.device)
        logits = net.decode(self._head_input(fit, net, index, names))
        return self.loss_function(logits.transpose(1, 2), gather_points(label, index).transpose(1, 2)), {}
