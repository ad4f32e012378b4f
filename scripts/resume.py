"""Resumable training: full checkpoints (weights, optimizer, engine counters, RNG states) and resuming from them.

A training stage attaches a :class:`ResumeCheckpointLoader` first and a :class:`TrainingCheckpointSaver` last in its
handler list; both add the trainer itself to their objects under ``"trainer"`` (so the configs need no circular
reference). With ``resume`` on, the loader restores the stage at ``Events.STARTED`` and ignite continues from the
restored epoch/iteration; a stage whose checkpoint is complete runs no iteration at all. Checkpoints are written
atomically under one fixed name per stage (``checkpoint_meta.pt``, ``checkpoint_head.pt``), so a kill leaves either
the previous or the new checkpoint, never a truncated one.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import ValidationHandler
from monai.transforms import Randomizable

from .checkpoint import CheckedCheckpointLoader
from .io import AtomicCheckpointSaver
from .overrides import as_bool

__all__ = ["RNGState", "TrainingCheckpointSaver", "ResumeCheckpointLoader", "ResumableValidationHandler"]


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
