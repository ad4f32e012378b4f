"""Optional inference outputs: a per-pixel uncertainty map and an overlay PNG per image (MONAI map transforms).

Both are switched on by flags in ``configs/inference.json`` (``save_uncertainty``, ``save_overlay``) and are no-ops
when switched off, so the default postprocessing writes the label map only.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Invertd, MapTransform
from monai.utils import ImageMetaKey
from torch.nn import functional as F

from .options import as_bool
from .outputs import SubjectFolderLayout
from .plots import overlay_rgb, save_png

__all__ = ["softmax_entropy", "UncertaintyMapd", "SaveOverlayd"]


def softmax_entropy(probs: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Entropy ``-sum_c p_c log p_c`` over the channel dim 0 of probabilities ``[C, *spatial]`` -> ``[1, *spatial]``.

    In nats; with ``normalize`` divided by ``log C`` (1 = uniform over the classes).
    """
    p = probs.float().clamp_min(0)
    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0, keepdim=True)
    if normalize:
        ent = ent / torch.log(torch.tensor(float(probs.shape[0])))
    return ent


class UncertaintyMapd(MapTransform):
    """Add ``output_key``: the entropy of the class probabilities in ``keys`` (``[C, *spatial]``, after softmax).

    The map ``[1, *spatial]`` (float32, nats) keeps the probabilities' metadata, so it is saved with the same
    geometry as the label map. Place it after the inversion of the preprocessing and before ``argmax``.

    Args:
        keys: the probabilities' key (one key).
        output_key: key of the uncertainty map.
        enabled: ``False`` makes the transform a no-op (no key is added); ``"true"``/``"false"`` from the command
            line are read as booleans.
        normalize: divide by ``log C`` so that values lie in [0, 1].
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        output_key: str = "uncertainty",
        enabled: bool = True,
        normalize: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"UncertaintyMapd takes one probability key, got {self.keys}.")
        self.output_key = output_key
        self.enabled = as_bool(enabled, "save_uncertainty")
        self.normalize = normalize

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            probs = d[key]
            ent = softmax_entropy(torch.as_tensor(probs), self.normalize)
            if isinstance(probs, MetaTensor):
                ent = MetaTensor(ent.as_tensor() if isinstance(ent, MetaTensor) else ent, meta=dict(probs.meta))
            d[self.output_key] = ent
        return d


class SaveOverlayd(MapTransform):
    """Write ``<output_dir>/<subject>/<stem>_<postfix>.png``: the label map's colours over the grey input image.

    ``keys`` is the label map (after ``argmax``, on the original image grid, possibly ``output_scale`` times finer).
    The image under ``image_key`` is still the preprocessed one, so it is brought back to the original grid with the
    inverse of ``transform`` (the preprocessing) and, if the label map is finer, resized (bilinear) to it. Files are
    named like the label output (:class:`scripts.outputs.SubjectFolderLayout`) and written atomically.

    Args:
        keys: the label map key (one key).
        image_key: key of the preprocessed image.
        transform: the invertible preprocessing applied to ``image_key`` (``None``: the image is used as is).
        output_dir: output root folder.
        postfix: file name postfix.
        enabled: ``False`` makes the transform a no-op (``"true"``/``"false"`` accepted, as for the flag above).
        num_classes: number of classes, background included (colours).
        alpha: opacity of the label colours.
        transpose: show the first array axis horizontally (neurite-oasis coronal slices upright).
        parent_levels: input parent folders kept in the output path (as for the label output).
    """

    def __init__(
        self,
        keys: KeysCollection = "pred",
        image_key: str = "image",
        transform: Any = None,
        output_dir: str = "./eval",
        postfix: str = "overlay",
        enabled: bool = True,
        num_classes: int = 5,
        alpha: float = 0.5,
        transpose: bool = True,
        parent_levels: Any = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"SaveOverlayd takes one label key, got {self.keys}.")
        self.image_key = image_key
        self.inverter = Invertd(image_key, transform=transform, orig_keys=image_key) if transform is not None else None
        self.layout = SubjectFolderLayout(output_dir, postfix=postfix, extension=".png", parent_levels=parent_levels)
        self.enabled = as_bool(enabled, "save_overlay")
        self.num_classes = num_classes
        self.alpha = alpha
        self.transpose = transpose

    def _image_on_label_grid(self, d: dict, labels: torch.Tensor) -> torch.Tensor:
        image = d[self.image_key]
        if self.inverter is not None:
            image = self.inverter({self.image_key: image})[self.image_key]
        image = torch.as_tensor(image).float()
        if isinstance(image, MetaTensor):
            image = image.as_tensor()
        shape = tuple(labels.shape[1:])
        if tuple(image.shape[1:]) != shape:
            if len(shape) != 2:
                raise ValueError(f"overlays are 2D; got a label map of shape {shape}.")
            image = F.interpolate(image[None], size=shape, mode="bilinear", align_corners=False)[0]
        return image

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            labels = d[key]
            image = self._image_on_label_grid(d, labels)
            meta = getattr(labels, "meta", None) or getattr(d[self.image_key], "meta", {})
            source = meta.get(ImageMetaKey.FILENAME_OR_OBJ, "image")
            rgb = overlay_rgb(image[0], torch.as_tensor(labels)[0], self.num_classes, self.alpha, self.transpose)
            save_png(rgb, self.layout.filename(subject=os.fspath(source)))
        return d
