"""Fit-then-decode inferer: the one place where MetaSeg fits an image at test time."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.utils import ImageMetaKey, convert_to_dst_type, convert_to_tensor
from torch.nn import functional as F

from .fitting import (
    adam_fit,
    batch_coordinate_grid,
    batch_params,
    flatten_image,
    gather_neighbours,
    gather_points,
    grid_neighbour_index,
    sample_points,
    unflatten_points,
)
from .network import TRUNK_PREFIXES, MetaSegINR
from .options import as_bool, check_option
from .resolution import check_scale, scale_affine, scaled_coordinate_grid

__all__ = ["FitResult", "FitDivergedError", "MetaSegInferer", "native_bf16"]

# a fit whose last step's loss is more than this many times its first step's has diverged (a sane fit lowers it)
DIVERGENCE_FACTOR = 10.0


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 kernels: a CUDA GPU that supports the type, or a CPU where oneDNN has them
    (AVX512 and newer x86, Arm with BF16). Elsewhere PyTorch emulates bfloat16 element by element: on an AVX2-only CPU
    the grid head's convolutions under bfloat16 autocast took 85x as long as in float32 (docs/benchmarks.md)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def _bf16_mode(name: str, value: bool | str) -> bool | str:
    """``value`` checked as ``True``, ``False`` or ``"auto"`` (bfloat16 where :func:`native_bf16`)."""
    if not (isinstance(value, bool) or value == "auto"):
        raise ValueError(f"{name} must be true, false or 'auto', got {value!r}.")
    return value


class FitDivergedError(ValueError):
    """A test-time fit whose loss or weights became NaN or infinite, or whose loss rose more than
    ``DIVERGENCE_FACTOR``-fold: ``causes`` maps an image's index in the batch to what happened."""

    def __init__(self, causes: dict[int, str], names: Sequence[str] | None = None) -> None:
        super().__init__(dict(causes), list(names) if names is not None else [])  # all args: it pickles
        self.causes, self.names = self.args

    def __str__(self) -> str:
        return "\n".join(
            f"{self.names[i] if i < len(self.names) else f'image {i} of the batch'}: the test-time fit failed: "
            f"{cause}; no label is written for it."
            for i, cause in sorted(self.causes.items())
        )


def _file_names(inputs: torch.Tensor) -> list[str]:
    """The source file of each image of a batch (``MetaTensor`` metadata), or none."""
    names = getattr(inputs, "meta", {}).get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(inputs, MetaTensor) else None
    if names is None:
        return []
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else [str(names)] * int(inputs.shape[0])


@dataclass
class FitResult:
    """What a test-time fit produces for a batch of ``B`` images of ``spatial_shape``."""

    params: dict[str, torch.Tensor]  # per-image parameters, leading dim B (trunk fitted, head as stored)
    coords: torch.Tensor  # [N, D]
    spatial_shape: tuple[int, ...]
    decode_mask: torch.Tensor | None = None  # [B, N] bool: the pixels to classify (skip_background), None: all


class MetaSegInferer(Inferer):
    """Segment images by fitting MetaSeg's trunk to their pixels, then decoding labels with the head.

    Each call starts from the network's stored (meta-learned) weights, copies them per image, fits the trunk with
    ``fit_steps`` Adam steps of intensity MSE (no labels), and returns the head's class logits ``[B, C, *spatial]``.
    The network's own parameters are never modified, and gradients are enabled internally so the inferer also works
    inside ``torch.no_grad()`` (as MONAI evaluators and MONAI Label call it).

    Args:
        fit_steps: number of Adam steps of the test-time fit.
        fit_lr: Adam learning rate of the test-time fit (of its first step, see ``fit_lr_end_factor``).
        betas: Adam betas.
        fit_points: number of random pixels per image that each fit step's loss uses (``None``: all pixels). The
            subsets are drawn from a generator seeded with ``seed`` at every call, so results are reproducible.
        seed: seed of those subsets.
        decode_chunk: number of points decoded at a time, which bounds the memory of decoding large images and
            volumes (``None``: all at once). With ``fit_points`` set, the fit is bounded too.
        head_bf16: run the head's matrix products in bfloat16 (``torch.autocast``) when decoding; the fit and the
            trunk stay in float32 (sine layers need it). The head is most of the decoding cost with neighbourhood
            context, and its argmax is insensitive to bfloat16 rounding (measured: docs/benchmarks.md). ``"auto"``
            (the default): only on a device with bfloat16 kernels (:func:`native_bf16`), as emulated bfloat16 is
            many times slower than float32.
        fit_bf16: on a CPU, let oneDNN round the fit's float32 matrix-product inputs to bfloat16 (accumulating and
            returning float32; ``torch.backends.mkldnn`` ``fp32_precision="bf16"``, set for the fit only). Pays on CPUs
            with bfloat16 units (AMX, AVX512-BF16). The setting is process-wide while the fit runs, so other threads'
            CPU matmuls in that time are rounded too. ``"auto"`` (the default): only where :func:`native_bf16`.
        skip_background: classify only the pixels whose input intensity is not exactly 0 when a neighbourhood head
            (``context_radius`` > 0) decodes the fitted grid (on in the fast preset, ``configs/fast.json``); the
            others (zero padding, and the background that the intensity normalization sets to 0) are labelled
            background without running the head (logits 0 for class 0 and -30 for the others). The head is most of
            the decoding cost, and these pixels carry no foreground label in the demo data (measured:
            docs/experiments.md). A grid head runs on every pixel (its convolutions need them) and the mask is
            applied to its logits; point-wise heads and finer grids classify every pixel.
        output_scale: ``__call__`` decodes on a grid this many times finer than the input in every spatial dim
            (positive integer; see :mod:`scripts.resolution`), with the fine affine when the input is a
            ``MetaTensor``. :meth:`fit_decode` (evaluation against labels) always decodes on the input's grid.
        grid_head: decode with the network's convolutional grid head when it has one (``grid_head_channels``);
            ``False``: with the point-wise head, as the meta-training's validation does before the grid head is
            trained (:meth:`with_point_head`).
        fit_lr_end_factor: the learning rate of the fit's last step as a fraction of ``fit_lr``, reached along a half
            cosine (:func:`scripts.fitting.cosine_lr_factor`; as ``end_factor`` of PyTorch's ``LinearLR``); 1.0: a
            constant rate. The decay keeps the last steps from following the pixel noise of the random subsets and of
            the image (measured: docs/experiments.md).
    """

    def __init__(
        self,
        fit_steps: int = 55,
        fit_lr: float = 1.5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        fit_points: int | None = 4096,
        seed: int = 0,
        decode_chunk: int | None = 65536,
        head_bf16: bool | str = "auto",
        fit_bf16: bool | str = "auto",
        output_scale: int = 1,
        skip_background: bool = False,
        grid_head: bool = True,
        fit_lr_end_factor: float = 0.1,
    ) -> None:
        super().__init__()
        # every numeric option against its bounds (scripts/options.py), naming the option and its range
        self.fit_steps = check_option("fit_steps", fit_steps)
        self.fit_lr = check_option("fit_lr", fit_lr)
        self.fit_lr_end_factor = check_option("fit_lr_end_factor", fit_lr_end_factor)
        self.betas = (float(betas[0]), float(betas[1]))
        self.fit_points = check_option("fit_points", fit_points)
        self.seed = check_option("seed", seed)
        self.decode_chunk = check_option("decode_chunk", decode_chunk)
        self.head_bf16 = _bf16_mode("head_bf16", head_bf16)
        self.fit_bf16 = _bf16_mode("fit_bf16", fit_bf16)
        self.output_scale = check_scale(check_option("output_scale", output_scale))
        self.skip_background = as_bool(skip_background, "skip_background")
        self.grid_head = as_bool(grid_head, "grid_head")

    def uses_bf16(self, device: torch.device, part: str = "head") -> bool:
        """Whether the ``part`` (``"head"`` or ``"fit"``) runs in bfloat16 on ``device`` (``"auto"`` resolved)."""
        mode = self.head_bf16 if part == "head" else self.fit_bf16
        return native_bf16(device) if mode == "auto" else bool(mode)

    def with_point_head(self) -> MetaSegInferer:
        """A copy of this inferer that decodes with the network's point-wise head even where it has a grid head."""
        inferer = copy.copy(self)
        inferer.grid_head = False
        return inferer

    def _uses_grid_head(self, net: MetaSegINR) -> bool:
        return self.grid_head and net.grid_head is not None

    @staticmethod
    def _unwrap(network: torch.nn.Module) -> MetaSegINR:
        net = getattr(network, "module", network)  # DataParallel / DistributedDataParallel
        # by name too: MONAI Label reloads the bundle's `scripts` after building the network, so the class differs
        if not (isinstance(net, MetaSegINR) or type(net).__qualname__ == MetaSegINR.__qualname__):
            raise TypeError(f"MetaSegInferer needs a MetaSegINR network, got {type(net).__name__}.")
        return net

    def fit(self, inputs: torch.Tensor, network: torch.nn.Module) -> FitResult:
        """Fit the trunk to ``inputs`` ``[B, 1, *spatial]`` from the network's stored weights (no labels used)."""
        return self._fit(inputs, network, self.fit_steps)

    def fit_snapshots(
        self, inputs: torch.Tensor, network: torch.nn.Module, steps: Sequence[int]
    ) -> list[tuple[int, float, FitResult]]:
        """One fit of ``max(steps)`` steps, kept after each of ``steps``: ``(step, seconds since the start, fit)``.

        Each snapshot equals :meth:`fit` with ``fit_steps`` set to its step count (the same pixel subsets, drawn
        from the same seed, and the same Adam state), at the cost of the longest fit alone. With a decaying learning
        rate (``fit_lr_end_factor`` < 1) a fit's steps depend on its length, so each step count is a fit of its own.
        """
        wanted = {int(s) for s in steps}
        if not wanted or min(wanted) < 0:
            raise ValueError(f"steps must be non-negative integers, got {list(steps)}.")
        if self.fit_lr_end_factor != 1.0:
            fits = []
            for step in sorted(wanted):
                start = time.perf_counter()
                fit = self._fit(inputs, network, step)
                fits.append((step, time.perf_counter() - start, fit))
            return fits
        kept: list[tuple[int, float, dict[str, torch.Tensor]]] = []
        start = time.perf_counter()

        def keep(step: int, params: dict[str, torch.Tensor]) -> None:
            if step in wanted:
                kept.append((step, time.perf_counter() - start, {k: v.detach().clone() for k, v in params.items()}))

        fit = self._fit(inputs, network, max(wanted), keep)
        return [
            (step, seconds, FitResult(params, fit.coords, fit.spatial_shape, fit.decode_mask))
            for step, seconds, params in kept
        ]

    def _fit(
        self,
        inputs: torch.Tensor,
        network: torch.nn.Module,
        steps: int,
        on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    ) -> FitResult:
        net = self._unwrap(network)
        if inputs.dim() != net.spatial_dims + 2:
            raise ValueError(
                f"expected a batch of {net.spatial_dims}D images [B, C, *spatial] for this network, "
                f"got a tensor of shape {tuple(inputs.shape)}."
            )
        if inputs.shape[1] != net.out_channels:
            raise ValueError(f"expected {net.out_channels} image channel(s), got {inputs.shape[1]}.")
        target = flatten_image(convert_to_tensor(inputs, track_meta=False).float())
        coords = batch_coordinate_grid(inputs)
        if target.shape[0] > 1 and target.device.type == "cpu" and on_step is None:
            # a CPU fits a batch fastest one image after another: plain matmuls, no per-step concatenation (measured:
            # docs/benchmarks.md). Every image's pixel subsets come from the same seed, as in a batched fit.
            fits = []
            for i in range(target.shape[0]):
                try:
                    fits.append(self._fit_batch(coords[i : i + 1], target[i : i + 1], net, steps))
                except FitDivergedError as e:
                    raise FitDivergedError({i + k: c for k, c in e.causes.items()}, _file_names(inputs)) from None
            params = {k: torch.cat([f[k] for f in fits]) for k in fits[0]}
        else:
            try:
                params = self._fit_batch(coords, target, net, steps, on_step)
            except FitDivergedError as e:
                raise FitDivergedError(e.causes, _file_names(inputs)) from None
        mask = target[..., 0] != 0 if self.skip_background else None
        return FitResult(params, coords, tuple(int(s) for s in inputs.shape[2:]), mask)

    def _fit_batch(
        self,
        coords: torch.Tensor,
        target: torch.Tensor,
        net: MetaSegINR,
        steps: int,
        on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-image parameters (leading dim B) fitted to the intensities ``target`` ``[B, N, C]`` at ``coords``.

        The batch is fitted at once: one loss over all images, per-image weights (batched matmuls on a GPU; on a CPU
        :meth:`MetaSegINR.functional_forward` loops over the samples inside each step, which is why :meth:`fit` calls
        this per image there).
        """
        with torch.enable_grad():
            params = batch_params(net.param_dict(), target.shape[0], detach=True)
            trunk = [k for k in params if k.startswith(TRUNK_PREFIXES)]

            generator = torch.Generator(device=target.device).manual_seed(self.seed)

            losses: dict[str, torch.Tensor] = {}  # per-image losses [B] of the first and the last step

            def reconstruction_loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
                # one subset shared by the batch: an image's fit does not depend on what it is batched with
                index = sample_points(coords.shape[1], self.fit_points, 1, target.device, generator)
                index = None if index is None else index.expand(coords.shape[0], -1)
                intensity, _, _ = net.functional_forward(gather_points(coords, index), p, with_logits=False)
                expected = gather_points(target, index)
                with torch.no_grad():
                    losses["last"] = (intensity - expected).square().flatten(1).mean(1)
                    losses.setdefault("first", losses["last"])
                return F.mse_loss(intensity, expected)

            lr = net.fit_lr(self.fit_lr)  # learned factors are detached by adam_fit: no graph without create_graph
            with self._fit_precision(target.device):
                params = adam_fit(
                    reconstruction_loss,
                    params,
                    trunk,
                    steps,
                    lr,
                    self.betas,
                    on_step=on_step,
                    lr_end_factor=self.fit_lr_end_factor,
                )
        params = {k: v.detach() for k, v in params.items()}
        causes = self._divergence(params, losses)
        if causes:
            raise FitDivergedError(causes)
        return params

    def _divergence(self, params: dict[str, torch.Tensor], losses: dict[str, torch.Tensor]) -> dict[int, str]:
        """What went wrong with each image's fit, by index in the batch: weights or loss NaN or infinite, or a last
        step's loss more than ``DIVERGENCE_FACTOR`` times the first step's (one device sync per fit)."""
        batch = next(iter(params.values())).shape[0]
        finite = torch.stack([v.reshape(batch, -1).isfinite().all(1) for v in params.values()]).all(0)
        first = losses.get("first", finite.new_zeros(batch, dtype=torch.float32)).tolist()
        last = losses.get("last", finite.new_zeros(batch, dtype=torch.float32)).tolist()
        causes = {}
        for i, (ok, a, b) in enumerate(zip(finite.tolist(), first, last)):
            if not math.isfinite(a) or ("first" not in losses and not ok):
                causes[i] = "the network's weights (or the image) hold NaN or infinite values" + (
                    f" (loss {a} at the first step)" if "first" in losses else ""
                )
            elif not (ok and math.isfinite(b)):
                causes[i] = (
                    f"it diverged: its loss or fitted weights became NaN or infinite (loss {a:.4g} at the first step; "
                    f"--fit_lr {self.fit_lr:g} is too high for these weights)"
                )
            elif b > DIVERGENCE_FACTOR * max(a, 1e-12):
                causes[i] = (
                    f"it diverged: its loss rose from {a:.4g} to {b:.4g} (more than {DIVERGENCE_FACTOR:g}-fold; "
                    f"--fit_lr {self.fit_lr:g} is too high for these weights)"
                )
        return causes

    @contextlib.contextmanager
    def _fit_precision(self, device: torch.device) -> Iterator[None]:
        """oneDNN's bfloat16 rounding of float32 matmuls during the fit (``fit_bf16`` on a CPU), else nothing."""
        if not (device.type == "cpu" and torch.backends.mkldnn.is_available() and self.uses_bf16(device, "fit")):
            yield
            return
        matmul = torch.backends.mkldnn.matmul
        previous = matmul.fp32_precision
        matmul.fp32_precision = "bf16"
        try:
            yield
        finally:
            matmul.fp32_precision = previous

    def decode(self, fit: FitResult, network: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, C, *spatial]`` and reconstruction ``[B, 1, *spatial]`` of a fitted batch."""
        net = self._unwrap(network)
        if net.context_radius > 0 and fit.spatial_shape == net.context_grid and not self._uses_grid_head(net):
            return self._decode_own_grid(fit, net)
        return self.decode_on_grid(fit, network, fit.coords, fit.spatial_shape)

    @torch.no_grad()
    def _decode_own_grid(self, fit: FitResult, net: MetaSegINR) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode_on_grid` on the fitted grid, with the head's neighbour features gathered from one trunk pass.

        The neighbours of a grid point of ``net.context_grid`` are grid points (clamped at the border like the
        coordinates), so the trunk runs once per point instead of once per point and neighbour.
        """
        chunk = self.decode_chunk or fit.coords.shape[1]
        intensity, features = self._trunk_pass(fit, net, fit.coords)
        if self.uses_bf16(features.device):
            # the head's autocast would round the gathered copy to bf16: rounding first gathers half the bytes
            features = features.to(torch.bfloat16)
        points = None if fit.decode_mask is None else fit.decode_mask.any(0).nonzero()[:, 0]  # any image of the batch
        index = grid_neighbour_index(fit.spatial_shape, net.context_pixels.to(features.device), points)  # [n, K]
        # a head-input chunk [B, n, K * hidden] holds as many values as a chunk of `chunk` trunk features
        rows = max(1, chunk // (features.shape[0] * index.shape[1]))
        logits = []
        for idx in index.split(rows, dim=0):
            logits.append(self._head_logits(net, gather_neighbours(features, idx), fit.params))
        logits = torch.cat(logits, dim=1) if logits else features.new_zeros(features.shape[0], 0, net.num_classes)
        if points is not None:
            full = self._background_logits(net, *features.shape[:2], logits.device).clone()
            full[:, points] = logits.float()
            logits = self._mask_background(fit.decode_mask, full, net)
        shape = fit.spatial_shape
        return unflatten_points(logits, shape), unflatten_points(intensity, shape)

    def _trunk_pass(self, fit: FitResult, net: MetaSegINR, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fitted intensity ``[B, N, 1]`` and trunk features ``[B, N, hidden]`` at ``coords``, ``decode_chunk`` at a
        time."""
        chunk = self.decode_chunk or coords.shape[1]
        outputs = [net.functional_forward(c, fit.params, with_logits=False) for c in coords.split(chunk, dim=1)]
        return torch.cat([o[0] for o in outputs], dim=1), torch.cat([o[1] for o in outputs], dim=1)

    @staticmethod
    def _background_logits(net: MetaSegINR, batch: int, points: int, device: torch.device) -> torch.Tensor:
        """Logits ``[batch, points, C]`` of a certain background label (0 for class 0, -30 for the others)."""
        background = torch.full((net.num_classes,), -30.0, device=device)
        background[0] = 0.0
        return background.expand(batch, points, -1)

    def _mask_background(self, mask: torch.Tensor, logits: torch.Tensor, net: MetaSegINR) -> torch.Tensor:
        """``logits`` ``[B, N, C]`` where ``mask`` ``[B, N]`` is set, certain background elsewhere (per image)."""
        background = self._background_logits(net, *logits.shape[:2], logits.device)
        return torch.where(mask.unsqueeze(-1), logits, background)

    @torch.no_grad()
    def decode_on_grid(
        self, fit: FitResult, network: torch.nn.Module, coords: torch.Tensor, spatial_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C, *spatial_shape]`` and reconstruction ``[B, 1, *spatial_shape]`` at any coordinates.

        ``coords`` ``[N, D]`` or ``[B, N, D]`` (``N = prod(spatial_shape)``, in the order of ``spatial_shape``), e.g.
        :func:`scripts.resolution.scaled_coordinate_grid` for a finer grid than the fitted image's.
        """
        net = self._unwrap(network)
        batch = next(iter(fit.params.values())).shape[0]
        coords = coords.to(fit.coords.device)
        if coords.dim() == 2:
            coords = coords.expand(batch, -1, -1)
        if self._uses_grid_head(net):
            return self._decode_grid_head(fit, net, coords, tuple(int(s) for s in spatial_shape))
        chunk = self.decode_chunk or coords.shape[1]
        outputs = []
        for c in coords.split(chunk, dim=1):
            intensity, features, _ = net.functional_forward(c, fit.params, with_logits=False)
            logits = self._head_logits(net, net.head_input(c, fit.params, features), fit.params)
            outputs.append((intensity, logits))  # features dropped: [N, hidden] per chunk
        intensity = torch.cat([o[0] for o in outputs], dim=1)
        logits = torch.cat([o[1] for o in outputs], dim=1)
        return unflatten_points(logits, spatial_shape), unflatten_points(intensity, spatial_shape)

    @torch.no_grad()
    def _decode_grid_head(
        self, fit: FitResult, net: MetaSegINR, coords: torch.Tensor, spatial_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`decode_on_grid` with the grid head: one trunk pass over the grid, then its convolutions.

        The grid must be the fitted one or an integer multiple of it in every dim (the head's dilations are scaled).
        """
        scale = spatial_shape[0] // fit.spatial_shape[0]
        if scale < 1 or tuple(scale * s for s in fit.spatial_shape) != spatial_shape:
            raise ValueError(
                f"the grid head decodes the fitted grid {fit.spatial_shape} or an integer multiple of it, "
                f"got {spatial_shape}."
            )
        intensity, features = self._trunk_pass(fit, net, coords)
        with torch.autocast(features.device.type, dtype=torch.bfloat16, enabled=self.uses_bf16(features.device)):
            logits = net.decode_grid(features, spatial_shape, scale).float()
        if fit.decode_mask is not None and scale == 1:
            logits = self._mask_background(fit.decode_mask, logits, net)
        return unflatten_points(logits, spatial_shape), unflatten_points(intensity, spatial_shape)

    def _head_logits(self, net: MetaSegINR, head_input: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's float32 logits, its matrix products in bfloat16 with ``head_bf16``."""
        with torch.autocast(head_input.device.type, dtype=torch.bfloat16, enabled=self.uses_bf16(head_input.device)):
            return net.decode(head_input, params).float()

    def fit_decode(self, inputs: torch.Tensor, network: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit then decode: ``(logits [B, C, *spatial], reconstruction [B, 1, *spatial])``.

        Outputs carry the input's metadata (affine, applied transforms) when ``inputs`` is a ``MetaTensor``, so MONAI's
        ``Invertd`` and ``SaveImaged`` can map them back to the original image grid.
        """
        logits, recon = self.decode(self.fit(inputs, network), network)
        if isinstance(inputs, MetaTensor):
            logits, recon = (convert_to_dst_type(x, inputs, dtype=x.dtype)[0] for x in (logits, recon))
        return logits, recon

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Class logits ``[B, C, *spatial]`` of ``inputs`` ``[B, 1, *spatial]`` (``output_scale`` times finer)."""
        if self.output_scale == 1:
            return self.fit_decode(inputs, network)[0]
        return self.fit_decode_scaled(inputs, network, self.output_scale)

    def fit_decode_scaled(self, inputs: torch.Tensor, network: torch.nn.Module, scale: int) -> torch.Tensor:
        """Fit ``inputs``, then decode class logits ``[B, C, *(scale * spatial)]`` on the finer grid.

        A ``MetaTensor`` input's metadata is kept, with the affine of the finer grid (:func:`scale_affine`).
        """
        fit = self.fit(inputs, network)
        shape = tuple(scale * s for s in fit.spatial_shape)
        coords = scaled_coordinate_grid(fit.spatial_shape, scale, device=fit.coords.device)
        logits = self.decode_on_grid(fit, network, coords, shape)[0]
        if isinstance(inputs, MetaTensor):
            logits = convert_to_dst_type(logits, inputs, dtype=logits.dtype)[0]
            logits.affine = scale_affine(inputs.affine, scale, len(fit.spatial_shape))
        return logits
