"""Checkpoints: weights-only reads checked against the network, atomic saves, and resumable training stages.

- Reading: :func:`read_checkpoint` (``torch.load(weights_only=True)`` with errors naming the file),
  :func:`check_state_dict` (the architecture mismatch in words), :func:`load_network_checked` and the engine handler
  :class:`CheckedCheckpointLoader`; :func:`require_weights` and :func:`check_weights_replaceable` guard a workflow's
  weight files before it starts.
- Saving: :class:`AtomicCheckpointSaver`, MONAI's ``CheckpointSaver`` writing through ignite's atomic mode.
- Resuming: a training stage attaches a :class:`ResumeCheckpointLoader` first and a :class:`TrainingCheckpointSaver`
  last in its handler list; both add the trainer itself to their objects under ``"trainer"`` (so the configs need no
  circular reference). With ``resume`` on, the loader restores the stage at ``Events.STARTED`` and ignite continues
  from the restored epoch/iteration; a stage whose checkpoint is complete runs no iteration at all. Checkpoints are
  written atomically under one fixed name per stage (``checkpoint_meta.pt``, ``checkpoint_head.pt``), so a kill
  leaves either the previous or the new checkpoint, never a truncated one. :class:`RNGState` makes the resumed run
  draw the same random numbers as an uninterrupted one.
"""

from __future__ import annotations

import os
import pickle
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver, ValidationHandler
from monai.transforms import Randomizable

from .network import GRID_HEAD_PREFIX, MetaSegINR, widen_head_context
from .options import as_bool

__all__ = [
    "read_checkpoint",
    "architecture_of",
    "check_state_dict",
    "load_network_checked",
    "require_weights",
    "check_weights_replaceable",
    "CheckedCheckpointLoader",
    "AtomicDiskSaver",
    "AtomicCheckpointSaver",
    "RNGState",
    "TrainingCheckpointSaver",
    "ResumeCheckpointLoader",
    "ResumableValidationHandler",
]


# --- Reading and checking weights ---


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


def architecture_of(state: Mapping[str, Any]) -> dict[str, int | None]:
    """``MetaSegINR`` hyper-parameters implied by a state dict's tensor names and shapes (those it can tell)."""
    arch: dict[str, int | None] = {}
    trunk = sorted(int(k.split(".")[1]) for k in state if k.startswith("trunk.") and k.endswith(".weight"))
    if trunk:
        arch["num_sine_layers"] = len(trunk)
        arch["spatial_dims"] = int(state["trunk.0.weight"].shape[1])
        arch["hidden_channels"] = int(state["trunk.0.weight"].shape[0])
    if "intensity.weight" in state:
        arch["out_channels"] = int(state["intensity.weight"].shape[0])
    if trunk:  # a MetaSeg state: with or without a grid head
        grid = state.get(f"{GRID_HEAD_PREFIX}0.weight")
        arch["grid_head_channels"] = None if grid is None else int(grid.shape[0])
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
    network: torch.nn.Module, path: str, map_location: Any = None, key: str = "model", widen_head: bool = False
) -> torch.nn.Module:
    """Load a plain state dict (or the ``key`` entry of a full checkpoint) into ``network`` after checking it fits.

    ``widen_head``: a MetaSeg state whose head reads a smaller neighbourhood than ``network``'s is widened first
    (:func:`scripts.network.widen_head_context`: same logits, zero weights for the new neighbours), so a head
    fine-tuning can start from weights trained with a smaller ``context_radius``; and a state without a grid head
    (a meta-trained network) gets ``network``'s own initial grid head, which the head fine-tuning then trains.
    """
    checkpoint = read_checkpoint(path, map_location)
    state = checkpoint[key] if key in checkpoint and isinstance(checkpoint[key], Mapping) else checkpoint
    net = getattr(network, "module", network)
    if widen_head and isinstance(net, MetaSegINR):
        state = widen_head_context(dict(state), net)
        if net.grid_head is not None and not any(k.startswith(GRID_HEAD_PREFIX) for k in state):
            own = net.state_dict()
            state = {**state, **{k: v for k, v in own.items() if k.startswith(GRID_HEAD_PREFIX)}}
    check_state_dict(network, state, str(path))
    net.load_state_dict(state)
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
    ckpt_dir: str, filenames: Sequence[str], replace: Any = False, resume: Any = False, checkpoints: Sequence[str] = ()
) -> None:
    """Refuse to start a training run that would replace weights already in ``ckpt_dir`` (e.g. the shipped
    ``models/model.pt``) unless asked to: ``replace`` true (``--replace_weights true``), or ``resume`` true with one of
    the run's resumable ``checkpoints`` (e.g. ``checkpoint_meta.pt``) in ``ckpt_dir``: the resumed run continues the
    run that wrote the weights. ``--resume true`` without such a checkpoint would train from scratch, so it is refused
    like a fresh run.

    Raises:
        FileExistsError: naming the folder, the files and the ways on: another ``--ckpt_dir``, or
            ``--replace_weights true``.
    """
    if as_bool(replace, "replace_weights"):
        return
    resumable = [name for name in checkpoints if os.path.isfile(os.path.join(ckpt_dir, name))]
    if as_bool(resume, "resume") and resumable:
        return
    existing = [name for name in filenames if os.path.isfile(os.path.join(ckpt_dir, name))]
    if existing:
        why = ""
        if as_bool(resume, "resume"):
            wanted = " or ".join(checkpoints) if checkpoints else "a checkpoint"
            why = (
                f"--resume true found no checkpoint of an interrupted run to resume ({wanted}) in {ckpt_dir}, so this "
                "run would train from scratch. "
            )
        raise FileExistsError(
            f"{why}ckpt_dir {ckpt_dir} already holds {', '.join(existing)}, which this training run would replace. "
            "Train into another folder with --ckpt_dir DIR (then copy DIR/<file> where you want it), or pass "
            "--replace_weights true to replace them."
        )


def require_weights(path: str, what: str, command: str) -> str:
    """``path`` if it is a file, else a ``FileNotFoundError`` naming the file and the command that produces it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found: {path}. Produce them with: {command}")
    return path


# --- Saving atomically ---


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` with ``atomic=True``, optionally under one fixed file name that is replaced, never deleted.

    ignite's atomic mode (``ignite/handlers/checkpoint.py``, ``DiskSaver._save_func``, pytorch-ignite 0.5.5) saves into
    a ``tempfile.NamedTemporaryFile`` in the destination folder, ``os.replace``-s it onto the final name and then adds
    group/other read permission. With ``filename`` set, every save goes to that name; ``remove`` is then a no-op
    because the next save replaces the file atomically (ignite's ``Checkpoint`` removes the old file *before* writing
    the new one, which for a fixed name would leave no file at all if the process died in between).
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint=checkpoint, filename=self.filename or filename, metadata=metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are written atomically (temporary file + rename).

    MONAI 1.6's ``CheckpointSaver`` builds its ignite ``DiskSaver`` with ``atomic=False`` (``monai/handlers/
    checkpoint_saver.py``, ``_DiskSaver.__init__``, because atomic saves used to be readable by their owner only);
    ignite 0.5.5 restores group/other read permission after the rename, so this subclass switches every saver it
    uses (final, key metric, interval) to :class:`AtomicDiskSaver`. Fixed names (``final_filename``,
    ``key_metric_filename``, ``interval_filename``) are replaced in place and never deleted first.

    Args:
        interval_filename: fixed file name for the ``save_interval`` checkpoints (``None``: MONAI's
            ``checkpoint_epoch=N.pt`` names, ``n_saved`` of them kept).
        args, kwargs: those of ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, *args: Any, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint):
            if checkpoint is not None:  # MONAI's _DiskSaver keeps the fixed file name (or None) as `filename`
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=checkpoint.save_handler.filename)
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler = AtomicDiskSaver(self.save_dir, filename=interval_filename)
        self.interval_filename = interval_filename

    def state_dict(self) -> dict:
        """The key-metric tracking list (best scores saved so far), the counterpart of ``load_state_dict``."""
        if self._key_metric_checkpoint is None:
            return {}
        state = self._key_metric_checkpoint.state_dict()  # {"_saved": [(score, filename), ...]}
        return {k: [(float(p), str(f)) for p, f in v] for k, v in state.items()}


# --- Resuming a training stage ---


def _randomizables(obj: Any, seen: set[int] | None = None) -> list[Randomizable]:
    """``obj`` and every transform nested in it (``Compose``, lists, the array transforms a dictionary transform wraps)
    that owns a random generator, in a fixed order."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    found: list[Randomizable] = [obj] if isinstance(obj, Randomizable) else []
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, Randomizable) or hasattr(obj, "transforms"):
        children = [
            v for v in vars(obj).values() if isinstance(v, (Randomizable, list, tuple)) or hasattr(v, "transforms")
        ]
    else:
        children = []
    for child in children:
        found += _randomizables(child, seen)
    return found


class RNGState:
    """The Python, NumPy and PyTorch (CPU, and CUDA when in use) random generator states, as a checkpoint object.

    ``transforms`` (e.g. the training pipeline with its random augmentations): the generators of its MONAI
    ``Randomizable`` transforms are saved and restored too.
    ``state_dict`` holds only tensors, ints and floats, so it loads with ``torch.load(weights_only=True)``.
    Restoring it at an epoch boundary makes a resumed run draw the same shuffles, augmentations and point samples as
    an uninterrupted one.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = random.getstate()
        _, keys, pos, has_gauss, cached = np.random.get_state()
        state: dict[str, Any] = {
            "python_version": int(version),
            "python_state": torch.tensor(internal, dtype=torch.int64),
            "python_gauss": gauss,
            "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "numpy_pos": int(pos),
            "numpy_has_gauss": int(has_gauss),
            "numpy_gauss": float(cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        for i, t in enumerate(_randomizables(self.transforms)):
            _, keys, pos, has_gauss, cached = t.R.get_state()
            state[f"transform{i}_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
            state[f"transform{i}_rest"] = torch.tensor([pos, has_gauss], dtype=torch.int64)
            state[f"transform{i}_gauss"] = float(cached)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        internal = tuple(int(x) for x in state["python_state"].cpu().tolist())
        random.setstate((int(state["python_version"]), internal, state["python_gauss"]))
        keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state(
            ("MT19937", keys, int(state["numpy_pos"]), int(state["numpy_has_gauss"]), float(state["numpy_gauss"]))
        )
        torch.set_rng_state(state["torch"].cpu())
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        for i, t in enumerate(_randomizables(self.transforms)):
            if f"transform{i}_keys" not in state:  # a checkpoint written before the augmentations' states were kept
                break
            pos, has_gauss = (int(v) for v in state[f"transform{i}_rest"].tolist())
            keys = state[f"transform{i}_keys"].cpu().numpy().astype(np.uint32)
            t.R.set_state(("MT19937", keys, pos, has_gauss, float(state[f"transform{i}_gauss"])))


class TrainingCheckpointSaver(AtomicCheckpointSaver):
    """Save a trainer's full state every ``save_interval`` epochs (or iterations) and at completion, atomically.

    The checkpoint holds ``save_dict``'s objects plus the engine it is attached to under ``engine_key``, in one file
    ``<save_dir>/<filename>`` that each save replaces (temporary file + rename: see :class:`AtomicDiskSaver`).

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict`` (network, optimizer, :class:`RNGState`, key-metric savers...).
        filename: fixed checkpoint file name.
        save_interval: save every N epochs (``epoch_level``) or N iterations.
        epoch_level: interval unit. Epoch-level resumes are exact (same shuffles as an uninterrupted run);
            iteration-level ones continue the interrupted epoch with a fresh shuffle.
        engine_key: name of the engine in the checkpoint.
        name: logger name (default: the engine's logger).
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: Mapping[str, Any],
        filename: str,
        save_interval: int = 1,
        epoch_level: bool = True,
        engine_key: str = "trainer",
        name: str | None = None,
    ) -> None:
        if int(save_interval) < 1:
            raise ValueError(f"save_interval must be >= 1, got {save_interval}.")
        super().__init__(
            save_dir=save_dir,
            save_dict=dict(save_dict),
            name=name,
            save_interval=int(save_interval),
            epoch_level=epoch_level,
            n_saved=1,
            interval_filename=filename,
        )
        self.engine_key = engine_key
        self._last_saved_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        self.save_dict[self.engine_key] = engine
        self._interval_checkpoint.to_save = self.save_dict
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self._save_final)

    def interval_completed(self, engine: Engine) -> None:
        super().interval_completed(engine)
        self._last_saved_iteration = engine.state.iteration

    def _save_final(self, engine: Engine) -> None:
        """At completion, save unless the last interval save already holds this iteration."""
        if engine.state.iteration != self._last_saved_iteration:
            self.interval_completed(engine)


class ResumeCheckpointLoader(CheckedCheckpointLoader):
    """At ``Events.STARTED``, resume a training stage from its full checkpoint, or start it afresh.

    - ``resume`` and ``load_path`` exists: restore ``load_dict`` and the engine (``engine_key``), checking the
      network against the file; ignite then continues from the restored iteration. A complete checkpoint makes the
      stage run no iteration.
    - ``resume`` and no checkpoint: start from scratch (logged).
    - not ``resume``: start from scratch; an existing checkpoint at ``load_path`` from an earlier run is deleted
      (logged), so that a later ``--resume true`` cannot pick it up instead of this run's.

    Whenever the stage will train (anything but a complete checkpoint), the files in ``stale_paths`` are deleted:
    checkpoints of later stages (e.g. the head fine-tune's) that were computed from an older result of this stage.

    Args:
        load_path: the stage's checkpoint file.
        load_dict: objects to restore (as saved by :class:`TrainingCheckpointSaver`, without the engine).
        resume: whether to resume.
        stale_paths: checkpoints of later stages to delete when this stage trains.
        engine_key: name of the engine in the checkpoint.
        map_location, name: as for ``monai.handlers.CheckpointLoader``.
    """

    def __init__(
        self,
        load_path: str,
        load_dict: Mapping[str, Any],
        resume: bool,
        stale_paths: Sequence[str] = (),
        engine_key: str = "trainer",
        map_location: Any = None,
        name: str | None = None,
    ) -> None:
        super().__init__(load_path=load_path, load_dict=dict(load_dict), name=name, map_location=map_location)
        self.resume = as_bool(resume, "resume")
        self.stale_paths = [str(p) for p in stale_paths]
        self.engine_key = engine_key

    def __call__(self, engine: Engine) -> None:
        path = str(self.load_path)
        complete = False
        if self.resume and os.path.isfile(path):
            epoch_length = engine.state.epoch_length
            self.load(engine, {**self.load_dict, self.engine_key: engine})
            if epoch_length is not None and engine.state.epoch_length != epoch_length:
                raise ValueError(
                    f"{path}: the checkpoint was saved with {engine.state.epoch_length} iterations per epoch but the "
                    f"data now give {epoch_length}; resume with the same data, or start afresh without --resume."
                )
            total = engine.state.max_epochs * engine.state.epoch_length
            complete = engine.state.iteration >= total
            self.logger.info(
                f"Resumed from {path} at epoch {engine.state.epoch}, iteration {engine.state.iteration} of {total}"
                + (": this stage is complete." if complete else ".")
            )
        elif self.resume:
            self.logger.warning(f"--resume: no checkpoint at {path}; starting this stage from scratch.")
        elif os.path.isfile(path):
            self.logger.warning(
                f"Starting afresh: deleting the earlier run's checkpoint {path} (pass --resume true to continue it)."
            )
            _remove(path)
        if not complete:
            for stale in self.stale_paths:
                if os.path.isfile(stale):
                    self.logger.warning(f"Deleting {stale}: it was computed from an earlier result of this stage.")
                    _remove(stale)


def _remove(path: str) -> None:
    """Delete ``path``; another rank of a distributed run may have deleted it first."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


class ResumableValidationHandler(ValidationHandler):
    """MONAI ``ValidationHandler`` whose ``exec_at_start`` validation runs only when training starts at iteration 0.

    A resumed run restored by :class:`ResumeCheckpointLoader` (attached before this handler) has already validated
    (or deliberately not validated) the restored weights; validating them again could save a model the
    uninterrupted run never saved. Arguments are those of ``monai.handlers.ValidationHandler``.
    """

    def attach(self, engine: Engine) -> None:
        at_start, self.exec_at_start = self.exec_at_start, False
        super().attach(engine)
        self.exec_at_start = at_start
        if at_start:
            engine.add_event_handler(Events.STARTED, self._validate_at_start)

    def _validate_at_start(self, engine: Engine) -> None:
        if engine.state.iteration == 0:
            self(engine)
