"""MetaSeg implicit network: a SIREN trunk regressing intensity plus a segmentation head on its penultimate features."""

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MetaSegINR", "TRUNK_PREFIXES", "HEAD_PREFIX", "GRID_HEAD_PREFIX", "widen_head_context"]

TRUNK_PREFIXES = ("trunk.", "intensity.")
HEAD_PREFIX = "head."
GRID_HEAD_PREFIX = "grid_head."


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T + bias`` for unbatched (``weight`` 2D) or per-sample batched (``weight`` 3D) parameters."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    if weight.shape[0] == 1:  # one sample: a plain matmul, whose backward is ~2x cheaper than baddbmm's on CPU
        return F.linear(x, weight[0], bias[0])
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class MetaSegINR(nn.Module):
    """Implicit neural representation mapping coordinates to intensity and class logits.

    The trunk is ``num_sine_layers`` sine layers (``sin(omega0 * (W x + b))``, SIREN initialisation) followed by a
    linear layer regressing intensity. The head is ``head_layers`` times ``Linear - LeakyReLU`` (width ``head``), then
    ``Linear(head, num_classes)``, applied to the trunk's penultimate features (the output of the last sine layer).
    With ``context_radius`` ``r > 0`` the head reads the features of a ``(2r+1)^D`` neighbourhood of each point
    instead of the point's alone: the trunk is also evaluated at the point shifted by multiples of ``context_step``
    pixels of a ``context_grid``-sized image (clamped to ``[-1, 1]``), and the head's input is those features
    concatenated. The network stays an implicit function of continuous coordinates; on the ``context_grid`` itself
    the neighbours are grid points, which :class:`scripts.inferer.MetaSegInferer` gathers from one trunk pass instead
    of evaluating the trunk again.
    An optional convolutional *grid head* (``grid_head_channels``) decodes a whole grid of fitted features instead;
    when present it is what images are decoded with, and the point-wise head is the meta-training's decoder.

    ``forward(coords)`` takes coordinates ``[B, N, spatial_dims]`` in ``[-1, 1]`` and returns ``[B, N, 1 + C]``:
    channel 0 is the intensity, channels ``1..C`` the class logits (images are segmented by the fit-then-decode of
    :class:`scripts.segmenter.MetaSegSegmenter`). :meth:`functional_forward` evaluates the same
    network with an explicit parameter dictionary whose tensors may carry a leading per-sample batch dimension, which
    is how the inner loops of meta-training and the test-time fit run many images at once.

    Args:
        spatial_dims: number of coordinate dimensions (2 or 3).
        hidden_channels: width of the sine layers.
        num_sine_layers: number of sine layers in the trunk.
        omega0: SIREN frequency factor.
        num_classes: number of segmentation classes, background included.
        head_channels: width of the head's hidden layers.
        head_layers: number of hidden (Linear + LeakyReLU) layers of the head (the paper's head has 1).
        out_channels: number of regressed intensity channels.
        learned_fit_lr: ``None`` (the fit uses one learning rate), ``"layer"`` (a learned learning-rate factor per
            trunk tensor) or ``"element"`` (one per trunk weight, as in Meta-SGD, Li et al. 2017). The factors are
            meta-learned with the initialisation, stored as ``fit_lr_scale.*`` (log scale) in the state dict, and
            multiply the configured fit learning rate, see :meth:`fit_lr`.
        context_radius: neighbourhood radius of the head's input in steps (0: the point's own features, as in the
            paper; 1: a 3x3 (3x3x3) neighbourhood).
        context_step: distance between neighbours, in pixels of ``context_grid``.
        context_grid: the image size (pixels per spatial dim) that ``context_step`` refers to, normally the
            bundle's padded/resized ``image_size``; required when ``context_radius > 0``.
        grid_head_channels: width of an optional convolutional head that decodes a whole grid of fitted features
            (``None``: no grid head). It is a 1x1 convolution to this width, a 3x3 (3x3x3) convolution per entry of
            ``grid_head_dilations`` with that dilation in pixels (replicate padding, each followed by a LeakyReLU),
            and a 1x1 convolution to the class logits; see :meth:`decode_grid`. Meta-training trains the point-wise
            ``head``; the grid head is trained on fitted features afterwards
            (:class:`scripts.head_trainer.HeadFineTuneTrainer`) and, when present, is what images are decoded with.
        grid_head_dilations: dilations of the grid head's 3x3 convolutions, in pixels of the fitted grid.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        hidden_channels: int = 128,
        num_sine_layers: int = 5,
        omega0: float = 30.0,
        num_classes: int = 5,
        head_channels: int = 128,
        head_layers: int = 1,
        out_channels: int = 1,
        learned_fit_lr: str | None = None,
        context_radius: int = 0,
        context_step: int = 4,
        context_grid: Sequence[int] | None = None,
        grid_head_channels: int | None = None,
        grid_head_dilations: Sequence[int] = (1, 2, 4, 8, 16),
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if num_sine_layers < 1:
            raise ValueError(f"num_sine_layers must be >= 1, got {num_sine_layers}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        self.spatial_dims = spatial_dims
        self.omega0 = float(omega0)
        self.num_classes = num_classes
        self.out_channels = out_channels
        widths = [spatial_dims] + [hidden_channels] * num_sine_layers
        self.trunk = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.intensity = nn.Linear(hidden_channels, out_channels)
        self._init_context(context_radius, context_step, context_grid)
        num_neighbours = self.context_offsets.shape[0]
        if head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}.")
        head: list[nn.Module] = []
        for i in range(head_layers):
            head += [nn.Linear(num_neighbours * hidden_channels if i == 0 else head_channels, head_channels)]
            head += [nn.LeakyReLU()]
        self.head = nn.Sequential(*head, nn.Linear(head_channels, num_classes))
        self.grid_head_dilations = tuple(int(d) for d in grid_head_dilations)
        self.grid_head = self._build_grid_head(grid_head_channels, hidden_channels, num_classes)
        if learned_fit_lr not in (None, "layer", "element"):
            raise ValueError(f"learned_fit_lr must be None, 'layer' or 'element', got {learned_fit_lr!r}.")
        self.learned_fit_lr = learned_fit_lr
        self.fit_lr_scale = nn.ParameterDict()  # trunk parameter name (dots as underscores) -> log lr factor
        self._fit_lr_names: dict[str, str] = {}
        if learned_fit_lr is not None:
            for name, p in list(self.named_parameters()):
                if name.startswith(TRUNK_PREFIXES):
                    key = name.replace(".", "_")
                    self.fit_lr_scale[key] = nn.Parameter(torch.zeros(p.shape if learned_fit_lr == "element" else ()))
                    self._fit_lr_names[key] = name
        self.reset_parameters()

    def _init_context(self, radius: int, step: int, grid: Sequence[int] | None) -> None:
        """Neighbourhood of the head's input: pixel offsets ``[K, D]`` (int) and coordinate offsets ``[K, D]``."""
        if radius < 0 or step < 1:
            raise ValueError(f"context_radius must be >= 0 and context_step >= 1, got {radius} and {step}.")
        grid = None if grid is None else tuple(int(n) for n in grid)
        if radius > 0 and (grid is None or len(grid) != self.spatial_dims or min(grid) < 2):
            raise ValueError(
                f"context_radius {radius} needs context_grid: the image size ({self.spatial_dims} values >= 2) that "
                f"context_step refers to, got {grid}."
            )
        self.context_radius, self.context_step, self.context_grid = int(radius), int(step), grid
        shifts = range(-radius * step, radius * step + 1, step)
        pixels = torch.tensor(list(itertools.product(shifts, repeat=self.spatial_dims)), dtype=torch.long)
        spacing = torch.tensor([2.0 / (n - 1) for n in grid]) if radius > 0 else torch.ones(self.spatial_dims)
        # buffers, not parameters, and not saved: they follow from the constructor arguments
        self.register_buffer("context_pixels", pixels, persistent=False)
        self.register_buffer("context_offsets", pixels.float() * spacing, persistent=False)

    def _build_grid_head(self, channels: int | None, hidden: int, num_classes: int) -> nn.Sequential | None:
        """The convolutional grid head (see the class docstring), or ``None``."""
        if channels is None:
            return None
        if channels < 1 or not self.grid_head_dilations or min(self.grid_head_dilations) < 1:
            raise ValueError(
                f"grid_head_channels must be >= 1 and grid_head_dilations positive integers, got {channels} and "
                f"{list(self.grid_head_dilations)}."
            )
        conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
        layers: list[nn.Module] = [conv(hidden, channels, 1), nn.LeakyReLU()]
        for _ in self.grid_head_dilations:
            layers += [conv(channels, channels, 3), nn.LeakyReLU()]  # dilation and padding applied in decode_grid
        return nn.Sequential(*layers, conv(channels, num_classes, 1))

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of what decodes images: the grid head when there is one, else the point-wise head."""
        return list((self.head if self.grid_head is None else self.grid_head).parameters())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SIREN initialisation for the trunk (Sitzmann et al. 2020); PyTorch defaults for the head."""
        for i, layer in enumerate(self.trunk):
            fan_in = layer.in_features
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.omega0
            layer.weight.uniform_(-bound, bound)
        bound = math.sqrt(6.0 / self.intensity.in_features) / self.omega0
        self.intensity.weight.uniform_(-bound, bound)

    def param_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights by name (learned fit learning rates excluded), as :meth:`functional_forward` takes."""
        return {k: v for k, v in self.named_parameters() if not k.startswith("fit_lr_scale.")}

    def fit_lr(self, base_lr: float) -> float | dict[str, torch.Tensor]:
        """Learning rates of the trunk fit: ``base_lr``, or ``base_lr * exp(scale)`` per trunk tensor when learned."""
        if self.learned_fit_lr is None:
            return base_lr
        return {self._fit_lr_names[k]: base_lr * torch.exp(s) for k, s in self.fit_lr_scale.items()}

    def functional_forward(
        self, coords: torch.Tensor, params: dict[str, torch.Tensor], with_logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Evaluate the network with ``params`` instead of the module's own parameters.

        Args:
            coords: ``[B, N, spatial_dims]`` coordinates.
            params: tensors named like :meth:`param_dict`; each either unbatched or with a leading batch dim ``B``.
            with_logits: whether to evaluate the head (skipped when only the reconstruction is needed).

        Returns:
            ``(intensity [B, N, out_channels], features [B, N, hidden], logits [B, N, C] or None)``.
        """
        batch = params["trunk.0.weight"].shape[0] if params["trunk.0.weight"].dim() == 3 else 1
        if batch > 1 and coords.device.type == "cpu":
            # per-sample weights on a CPU: one plain-matmul pass per sample beats baddbmm, whose backward is ~2x slower
            own = dict(self.named_parameters())
            outs = []
            for i in range(batch):
                sample = {k: v[i : i + 1] if k in own and v.dim() > own[k].dim() else v for k, v in params.items()}
                outs.append(
                    self.functional_forward(coords[i : i + 1] if len(coords) > 1 else coords, sample, with_logits)
                )
            logits = torch.cat([o[2] for o in outs]) if with_logits else None
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs]), logits
        x = self.trunk_features(coords, params)
        intensity = _linear(x, params["intensity.weight"], params["intensity.bias"])
        logits = self.decode(self.head_input(coords, params, x), params) if with_logits else None
        return intensity, x, logits

    def trunk_features(self, coords: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Penultimate features ``[B, N, hidden]`` (output of the last sine layer) at ``coords`` ``[B, N, D]``."""
        x = coords
        w0 = self.omega0
        for i in range(len(self.trunk)):
            # sin(w0 * (W x + b)) with w0 folded into the small W and b: one pass less over [B, N, hidden] each way
            x = torch.sin(_linear(x, w0 * params[f"trunk.{i}.weight"], w0 * params[f"trunk.{i}.bias"]))
        return x

    def head_input(
        self, coords: torch.Tensor, params: dict[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The head's input ``[B, N, K * hidden]`` at ``coords``: features of the ``K`` neighbours of every point.

        ``features`` (the points' own features, when already computed) is returned as is without context.
        """
        if self.context_radius == 0:
            return self.trunk_features(coords, params) if features is None else features
        neighbours = self.trunk_features(self._neighbour_coords(coords), params)  # [B, N * K, hidden]
        return neighbours.reshape(*coords.shape[:2], -1)

    def _neighbour_coords(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates ``[B, N * K, D]`` of the ``K`` context neighbours of every point, clamped to ``[-1, 1]``."""
        return (coords.unsqueeze(2) + self.context_offsets.to(coords)).clamp(-1.0, 1.0).flatten(1, 2)

    def decode(self, head_input: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits ``[B, N, C]`` from the head's input (:meth:`head_input`; head parameters from ``params``)."""
        p = self.param_dict() if params is None else params
        x = head_input
        last = len(self.head) - 1  # head.0, head.2, ...: Linear layers, each but the last followed by a LeakyReLU
        for i in range(0, last, 2):
            x = F.leaky_relu(_linear(x, p[f"head.{i}.weight"], p[f"head.{i}.bias"]))
        return _linear(x, p[f"head.{last}.weight"], p[f"head.{last}.bias"])

    def decode_grid(self, features: torch.Tensor, spatial_shape: Sequence[int], scale: int = 1) -> torch.Tensor:
        """Class logits ``[B, N, C]`` of the grid head from the features ``[B, N, hidden]`` of a whole grid.

        ``N = prod(spatial_shape)``, points in the order of ``spatial_shape``. ``scale``: the grid is this many times
        finer than the one the head was trained on (an integer), so every dilation is multiplied by it and the head
        reads the same physical neighbourhood: like the point-wise head, it stays a function of position.
        """
        if self.grid_head is None:
            raise RuntimeError("this MetaSegINR has no grid head (grid_head_channels is None).")
        shape = tuple(int(s) for s in spatial_shape)
        x = features.transpose(1, 2).reshape(features.shape[0], features.shape[2], *shape)
        convs = [m for m in self.grid_head if isinstance(m, nn.modules.conv._ConvNd)]
        conv = F.conv2d if self.spatial_dims == 2 else F.conv3d
        for i, layer in enumerate(convs):
            if 0 < i < len(convs) - 1:  # the dilated 3x3 convolutions, between the 1x1 ones
                d = self.grid_head_dilations[i - 1] * int(scale)
                x = conv(F.pad(x, (d, d) * self.spatial_dims, mode="replicate"), layer.weight, layer.bias, dilation=d)
            else:
                x = conv(x, layer.weight, layer.bias)
            if i < len(convs) - 1:
                x = F.leaky_relu(x)
        return x.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Coordinates ``[B, N, spatial_dims]`` -> ``[B, N, out_channels + num_classes]`` (intensity, then logits).

        The network itself, evaluated with its stored weights; this is the path TorchScript exports. The logits are the
        point-wise head's: a grid head needs a whole grid of features (:meth:`decode_grid`). Images are
        segmented by the fit-then-decode of :class:`scripts.segmenter.MetaSegSegmenter` (or
        :class:`scripts.inferer.MetaSegInferer` with this network).
        """
        if x.dim() != 3 or x.shape[-1] != self.spatial_dims:
            raise ValueError(
                f"MetaSegINR takes coordinates [B, N, {self.spatial_dims}], got a tensor of shape {list(x.shape)} "
                "(segment images with scripts.segmenter.MetaSegSegmenter)."
            )
        h = self._module_trunk(x)
        if self.context_radius > 0:
            head_in = self._module_trunk(self._neighbour_coords(x)).reshape(x.shape[0], x.shape[1], -1)
        else:
            head_in = h
        return torch.cat([self.intensity(h), self.head(head_in)], dim=-1)

    def _module_trunk(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.trunk:
            x = torch.sin(self.omega0 * layer(x))
        return x


def widen_head_context(state: dict[str, torch.Tensor], network: MetaSegINR) -> dict[str, torch.Tensor]:
    """``state`` of a network with a smaller head neighbourhood, made to fit ``network`` without changing its output.

    The first head layer of ``state`` reads ``K0`` neighbours (``(2 r0 + 1)^D``, ``r0 < network.context_radius``,
    taken with ``network.context_step``); its weights are copied to the columns of the same neighbours in
    ``network``'s larger neighbourhood and the new neighbours' columns are zero, so the widened network gives the
    same logits until the head is trained further. Any other state (already the right size) is returned unchanged.
    """
    key = f"{HEAD_PREFIX}0.weight"
    hidden, dims = network.intensity.in_features, network.spatial_dims
    if key not in state or state[key].shape[1] == network.head[0].in_features or state[key].shape[1] % hidden:
        return state
    old_count = state[key].shape[1] // hidden
    radius = round((old_count ** (1.0 / dims) - 1) / 2)
    if (2 * radius + 1) ** dims != old_count or radius >= network.context_radius:
        return state
    # the smaller neighbourhood's offsets, in its own (lexicographic) order, are those of the larger within its box
    inside = (network.context_pixels.abs().amax(dim=1) <= radius * network.context_step).nonzero().flatten()
    old_weight = state[key]
    weight = old_weight.new_zeros(old_weight.shape[0], len(network.context_pixels), hidden)
    weight[:, inside] = old_weight.reshape(old_weight.shape[0], old_count, hidden)
    return {**state, key: weight.flatten(1)}
