"""Checked checkpoint loading: weights-only reads and errors that name the file and the architecture mismatch."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader

__all__ = [
    "read_checkpoint",
    "architecture_of",
    "check_state_dict",
    "load_network_checked",
    "CheckedCheckpointLoader",
    "check_weights_replaceable",
]


def read_checkpoint(path: str, map_location: Any = None) -> Mapping[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors naming ``path``: missing, empty, truncated, unsafe files."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path} (train first, or point --ckpt_dir at the weights).")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path}: the checkpoint file is empty (0 bytes).")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: the file is not a weights-only checkpoint (it holds Python objects other than "
            f"tensors and plain containers, or it is not a PyTorch file at all): {e}"
        ) from e
    except Exception as e:
        raise ValueError(
            f"{path}: cannot read the checkpoint ({type(e).__name__}: {e}); the file may be truncated or not a "
            "PyTorch checkpoint."
        ) from e
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(checkpoint)}.")
    return checkpoint


def architecture_of(state: Mapping[str, Any]) -> dict[str, int]:
    """``MetaSegINR`` hyper-parameters implied by a state dict's tensor names and shapes (those it can tell)."""
    arch: dict[str, int] = {}
    trunk = sorted(int(k.split(".")[1]) for k in state if k.startswith("trunk.") and k.endswith(".weight"))
    if trunk:
        arch["num_sine_layers"] = len(trunk)
        arch["spatial_dims"] = int(state["trunk.0.weight"].shape[1])
        arch["hidden_channels"] = int(state["trunk.0.weight"].shape[0])
    if "intensity.weight" in state:
        arch["out_channels"] = int(state["intensity.weight"].shape[0])
    head = sorted(int(k.split(".")[1]) for k in state if k.startswith("head.") and k.endswith(".weight"))
    if head:  # head.0, head.2, ...: hidden Linear layers, then the classifier
        arch["head_layers"] = len(head) - 1
        arch["head_channels"] = int(state["head.0.weight"].shape[0])
        arch["num_classes"] = int(state[f"head.{head[-1]}.weight"].shape[0])
        if trunk:  # the head reads (2r+1)^D neighbours' features
            neighbours = int(state["head.0.weight"].shape[1]) // arch["hidden_channels"]
            arch["context_radius"] = int(round((neighbours ** (1.0 / arch["spatial_dims"]) - 1) / 2))
    return arch


def check_state_dict(network: torch.nn.Module, state: Mapping[str, Any], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and every difference if ``state`` does not fit ``network`` exactly.

    For a MetaSeg network the message states the hyper-parameters that differ, e.g. ``models/model.pt was trained
    with num_classes=25 but the config has num_classes=5``, followed by the mismatched tensors and shapes.
    """
    network = getattr(network, "module", network)
    expected = network.state_dict()
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: expected a state dict of tensors for {type(network).__name__}.")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    found, wanted = architecture_of(state), architecture_of(expected)
    differ = [k for k in wanted if k in found and found[k] != wanted[k]]
    lines = []
    if differ:
        lines.append(
            f"{source} was trained with "
            + ", ".join(f"{k}={found[k]}" for k in differ)
            + " but the config has "
            + ", ".join(f"{k}={wanted[k]}" for k in differ)
            + " (set the same values, e.g. --num_classes, --network_def#hidden_channels, or use matching weights)."
        )
    else:
        lines.append(f"{source} does not match the configured {type(network).__name__}.")
    if shapes:
        lines.append("mismatched tensors: " + "; ".join(shapes[:8]) + (" ..." if len(shapes) > 8 else ""))
    if missing:
        lines.append(f"missing in the checkpoint: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        lines.append(f"not in the network: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
    raise ValueError("\n".join(lines))


def load_network_checked(
    network: torch.nn.Module, path: str, map_location: Any = None, key: str = "model"
) -> torch.nn.Module:
    """Load a plain state dict (or the ``key`` entry of a full checkpoint) into ``network`` after checking it fits."""
    checkpoint = read_checkpoint(path, map_location)
    state = checkpoint[key] if key in checkpoint and isinstance(checkpoint[key], Mapping) else checkpoint
    check_state_dict(network, state, str(path))
    getattr(network, "module", network).load_state_dict(state)
    return network


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` that reads weights-only and checks every network against the file first.

    A checkpoint from another architecture or class count fails with a ``ValueError`` that names the file and the
    mismatch (see :func:`check_state_dict`) instead of PyTorch's ``size mismatch`` list; a missing, empty or
    truncated file fails with its path. ``strict_shape=False`` is not supported (partial loading defeats the check).
    Other arguments are those of ``monai.handlers.CheckpointLoader``.
    """

    def __init__(self, load_path: str, load_dict: dict, name: str | None = None, map_location: Any = None) -> None:
        super().__init__(load_path=load_path, load_dict=load_dict, name=name, map_location=map_location)

    def attach(self, engine: Engine) -> None:
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.STARTED, self)

    def load(self, engine: Engine, load_dict: Mapping[str, Any]) -> None:
        """Read ``load_path``, check the networks in ``load_dict`` against it, restore every object."""
        path = str(self.load_path)
        checkpoint = dict(read_checkpoint(path, self.map_location))
        first = next(iter(load_dict))
        if len(load_dict) == 1 and first not in checkpoint:  # a plain state dict of the single object
            checkpoint = {first: checkpoint}
        for k, obj in load_dict.items():
            if k not in checkpoint:
                raise ValueError(f"{path}: no '{k}' entry in the checkpoint (it has: {sorted(checkpoint)}).")
            if isinstance(obj, torch.nn.Module):
                check_state_dict(obj, checkpoint[k], path)
        prior_max_epochs = engine.state.max_epochs
        try:
            Checkpoint.load_objects(to_load=dict(load_dict), checkpoint=checkpoint, strict=True)
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise ValueError(f"{path}: cannot restore the checkpoint ({type(e).__name__}: {e}).") from e
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise ValueError(
                f"{path}: the checkpoint is at epoch {engine.state.epoch}, beyond max_epochs={prior_max_epochs}; "
                "raise max_epochs to train further."
            )
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored {sorted(load_dict)} from {path}")

    def __call__(self, engine: Engine) -> None:
        self.load(engine, self.load_dict)


def check_weights_replaceable(
    ckpt_dir: str, filenames: Sequence[str], replace: Any = False, resume: Any = False
) -> None:
    """Refuse to start a training run that would replace weights already in ``ckpt_dir`` (e.g. the shipped
    ``models/model.pt``) unless asked to: ``replace`` true (``--replace_weights true``), or ``resume`` true (a resumed
    run continues the run that wrote them).

    Raises:
        FileExistsError: naming the files and the two ways on: another ``--ckpt_dir``, or ``--replace_weights true``.
    """
    from .overrides import as_bool

    if as_bool(replace, "replace_weights") or as_bool(resume, "resume"):
        return
    existing = [name for name in filenames if os.path.isfile(os.path.join(ckpt_dir, name))]
    if existing:
        raise FileExistsError(
            f"ckpt_dir {ckpt_dir} already holds {', '.join(existing)}, which this training run would replace. "
            "Train into another folder with --ckpt_dir DIR (then copy DIR/<file> where you want it), or pass "
            "--replace_weights true to replace them."
        )
