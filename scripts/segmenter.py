"""The image -> class logits callable: MetaSeg's coordinate network wrapped with its fit-then-decode inferer."""

from __future__ import annotations

import torch
from torch import nn

from .inferer import MetaSegInferer
from .network import MetaSegINR

__all__ = ["MetaSegSegmenter"]


class MetaSegSegmenter(nn.Module):
    """``segmenter(image)`` -> class logits: what ``network_data_format`` in ``configs/metadata.json`` describes.

    :class:`scripts.network.MetaSegINR` maps coordinates to values; an image is segmented by fitting its trunk to the
    image's pixels and decoding with its head (:class:`scripts.inferer.MetaSegInferer`). This module joins the two
    for callers that expect an image-level network, such as ``python -m monai.bundle verify_net_in_out segmenter``.
    The bundle's workflows (and MONAI Label) call the ``inferer`` with ``network_def`` instead, which is the same
    computation. The network's own weights are never modified. Eager mode only: fitting needs autograd.

    Args:
        network: the coordinate network (the configs' ``network_def``).
        inferer: the fit-then-decode inferer (the configs' ``inferer``); ``None``: ``MetaSegInferer()``, whose
            defaults are the configs' fit settings.
    """

    def __init__(self, network: MetaSegINR, inferer: MetaSegInferer | None = None) -> None:
        super().__init__()
        self.network = network
        self.inferer = MetaSegInferer() if inferer is None else inferer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits ``[B, num_classes, *spatial]`` of an image batch ``[B, out_channels, *spatial]``."""
        net = self.network
        if image.dim() != net.spatial_dims + 2:
            raise ValueError(
                f"MetaSegSegmenter takes images [B, {net.out_channels}, *spatial] with {net.spatial_dims} spatial "
                f"dims, got a tensor of shape {tuple(image.shape)}."
            )
        return self.inferer(image, net)
