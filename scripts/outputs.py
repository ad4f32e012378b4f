"""Output files: subject-folder naming and atomic writers (NIfTI labels, metric CSVs, any file via atomic_path).

Every file the bundle writes goes to a temporary name in the destination folder and is renamed into place
(``os.replace``, atomic on POSIX), so an error or a kill never leaves a truncated file under its final name.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from monai.data import NibabelWriter
from monai.data.folder_layout import FolderLayoutBase
from monai.handlers import MetricsSaver

from .options import as_bool
from .transforms import SQUEEZED_AXES_KEY

__all__ = [
    "SubjectFolderLayout",
    "output_parent_levels",
    "OutputParentLevels",
    "AtomicNiftiWriter",
    "AtomicMetricsSaver",
    "check_writable_dir",
    "atomic_path",
    "remove_stale_temp_files",
    "OverwriteGuard",
]

logger = logging.getLogger(__name__)

# the bundle's hidden temporary files and folders: ".metaseg-tmp<pid>.<final name>.<random><suffix>", a name no
# other program uses, so that a later run can tell a dead writer's leftovers from anything else in the folder
TEMP_PREFIX = ".metaseg-tmp"
_TEMP_NAME = re.compile(rf"^{re.escape(TEMP_PREFIX)}(?P<pid>\d+)\.[^/]+$")


def _temp_prefix(name: str) -> str:
    """The prefix of this process's temporary files for the final file ``name``."""
    return f"{TEMP_PREFIX}{os.getpid()}.{name}."


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[str]:
    """A temporary path next to ``path`` to write to; renamed onto ``path`` when the block ends without error.

    The file gets the permissions the user's umask gives new files (``mkstemp`` alone would leave 0600), its hidden
    name carries this process's id (``remove_stale_temp_files`` removes it after a kill), and on any error it is
    removed, so ``path`` is either the old file or the complete new one.
    """
    path = str(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(os.path.basename(path)), suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temp_files(folders: str | Path | Sequence[str | Path]) -> list[str]:
    """Remove the temporary files (and the metric writer's temporary folders) that killed runs of this bundle left in
    ``folders`` (one or several: those a run writes into), not in their subfolders; those of live processes (e.g. a
    concurrent run into the same folder) are kept. Only the bundle's own temporary names (``.metaseg-tmp<pid>.*``, see
    :func:`atomic_path`) are touched. Returns the removed paths."""
    removed = []
    folders = [folders] if isinstance(folders, (str, Path)) else folders
    for root in dict.fromkeys(os.path.abspath(str(f)) for f in folders):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            match = _TEMP_NAME.match(name)
            if not match or _pid_alive(int(match["pid"])):
                continue
            path = os.path.join(root, name)
            try:
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


_IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".mgz", ".mgh", ".gz")


def _output_key(path: str, parent_levels: int) -> tuple[tuple[str, ...], str]:
    """``(last parent_levels parent folders, file name without its image extension)`` of an input path."""
    path = os.path.abspath(str(path))
    stem = os.path.basename(path)
    for ext in _IMAGE_EXTENSIONS:
        if stem.lower().endswith(ext):  # T1.NII.GZ as well
            stem = stem[: -len(ext)]
            break
    parents = [p for p in os.path.dirname(path).split(os.sep) if p]
    return tuple(parents[-parent_levels:]), stem  # parent_levels >= 1; fewer parents: all of them


def output_parent_levels(paths: Sequence[str]) -> int:
    """The fewest parent folders (at least 1) that :class:`SubjectFolderLayout` must keep so that no two of the input
    ``paths`` get the same output name, e.g. 2 for ``siteA/sub01/T1.nii.gz`` and ``siteB/sub01/T1.nii.gz``.

    Raises:
        ValueError: naming the inputs, when the same image is listed twice or two inputs differ only in their
            extension (``T1.nii`` and ``T1.nii.gz`` in one folder), which no number of folders can tell apart.
    """
    paths = [os.path.abspath(str(p)) for p in paths]
    repeated = sorted(p for p, n in Counter(paths).items() if n > 1)
    if repeated:
        raise ValueError(
            f"the datalist lists the same image more than once: {repeated}; each output would be written twice."
        )
    depth = max((len([p for p in os.path.dirname(path).split(os.sep) if p]) for path in paths), default=1)
    for levels in range(1, max(depth, 1) + 1):
        seen: dict[tuple, str] = {}
        clashes = []
        for path in paths:
            key = _output_key(path, levels)
            if key in seen:
                clashes.append((seen[key], path))
            seen.setdefault(key, path)
        if not clashes:
            return levels
    raise ValueError(
        f"inputs that differ only in their file extension would get the same output name: {clashes}; rename one or "
        "segment them in separate runs with different --output_dir."
    )


class OutputParentLevels:
    """How many parent folders :class:`SubjectFolderLayout` keeps, shared by a workflow's writers and set from its
    inputs before the run (``set_inputs``; 1 until then, e.g. in a MONAI Label server, which writes no files).

    A config object rather than a number so that the writers (in ``postprocessing``, which MONAI Label also builds)
    do not depend on the dataset when they are created.
    """

    def __init__(self, levels: int = 1) -> None:
        self.levels = int(levels)

    def set_inputs(
        self,
        items: Sequence[str | Mapping[str, Any]],
        layouts: Sequence[SubjectFolderLayout] = (),
        image_key: str = "image",
    ) -> int:
        """Set (and return) the fewest levels that keep the outputs of the inputs apart (``output_parent_levels``).

        ``items``: input image paths, or datalist entries (dicts) whose ``image_key`` is the input image; their other
        string values (label files in an evaluation) are protected from the outputs as well.

        Raises:
            ValueError: naming both files, when an output of one of ``layouts`` would overwrite a file of the run
                (``a.nii.gz`` and ``a_seg.nii.gz`` in one folder, written into that folder), before any work.
        """
        paths = [str(d[image_key]) if isinstance(d, Mapping) else str(d) for d in items]
        self.levels = output_parent_levels(paths)
        files = {
            os.path.realpath(str(v))
            for d in items
            for v in (d.values() if isinstance(d, Mapping) else [d])
            if isinstance(v, (str, os.PathLike))
        }
        for layout in layouts:
            for path in paths:
                output = layout.path_for(path)
                if os.path.realpath(output) in files:
                    raise ValueError(
                        f"{output} (the '{layout.postfix}' output of {path}) is also a file this run reads and would "
                        "be overwritten; write the outputs elsewhere with --output_dir."
                    )
        return self.levels

    def __int__(self) -> int:
        return self.levels


class SubjectFolderLayout(FolderLayoutBase):
    """``<output_dir>/<input's parent folder(s)>/<input stem>_<postfix><extension>``.

    In the neurite-oasis layout every subject folder holds a ``slice_norm.nii.gz``; keeping the subject folder in the
    output path means inputs sharing a file name never overwrite each other, e.g.
    ``OASIS_OAS1_0001_MR1/slice_norm.nii.gz`` -> ``<output_dir>/OASIS_OAS1_0001_MR1/slice_norm_seg.nii.gz``.
    ``parent_levels`` (a number, or an :class:`OutputParentLevels` set from the inputs) keeps more folders where one is
    not enough (``siteA/sub01/T1.nii.gz`` and ``siteB/sub01/T1.nii.gz``: 2, see :func:`output_parent_levels`). The
    whole image extension is dropped (``T1.mgz`` -> ``T1_seg.nii.gz``). Use as
    ``SaveImaged(folder_layout=SubjectFolderLayout(...))``.
    """

    def __init__(
        self,
        output_dir: str,
        postfix: str = "seg",
        extension: str = ".nii.gz",
        makedirs: bool = True,
        parent_levels: int | OutputParentLevels = 1,
    ) -> None:
        if int(parent_levels) < 1:
            raise ValueError(f"parent_levels must be >= 1, got {int(parent_levels)}.")
        self.output_dir = output_dir
        self.postfix = postfix
        self.extension = extension if extension.startswith(".") else f".{extension}"
        self.makedirs = makedirs
        self.parent_levels = parent_levels

    def path_for(self, subject: str, idx: int | None = None) -> str:
        """The output path of the input ``subject`` (nothing is created)."""
        parents, stem = _output_key(str(subject), int(self.parent_levels))
        name = f"{stem}_{self.postfix}" if self.postfix else stem
        if idx is not None:
            name += f"_{idx}"
        return os.path.join(self.output_dir, *parents, name + self.extension)

    def filename(self, subject: str = "subject", idx: int | None = None, **kwargs: object) -> str:
        path = self.path_for(subject, idx)
        if self.makedirs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


class AtomicNiftiWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary file and renames it into place, so a failure or a kill never
    leaves a truncated file under the final name.

    With ``resample=False`` the data are written with their metadata affine unchanged, without going through
    MONAI's resampler: 2D slices cut from 3D volumes (such as neurite-oasis ``slice_*.nii.gz``) carry a 4x4 affine
    whose in-plane 2x2 block is singular, which the resampler cannot invert although nothing needs resampling.

    Trailing singleton axes that :class:`scripts.transforms.ValidateMetaSegInputd` dropped from the input (a
    ``160x192x1`` neurite-oasis slice) are given back, so the output has the input's shape.
    """

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options: Any) -> None:
        squeezed = int((meta_dict or {}).get(SQUEEZED_AXES_KEY, 0) or 0)
        if squeezed and self.data_obj is not None:
            self.data_obj = self.data_obj.reshape(*self.data_obj.shape, *([1] * squeezed))
        if resample:
            return super().set_metadata(meta_dict, resample=resample, **options)
        _, affine, _ = self.get_meta_info(meta_dict)
        if self.output_dtype is None and hasattr(self.data_obj, "dtype"):
            self.output_dtype = self.data_obj.dtype
        self.affine = affine

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        filename = str(filename)
        suffix = ".nii.gz" if filename.endswith(".nii.gz") else os.path.splitext(filename)[1]
        try:
            with atomic_path(filename, suffix=suffix) as tmp:
                super().write(tmp, verbose=verbose, **obj_kwargs)
        except OSError as e:
            # MONAI's SaveImage reports any writer failure as "cannot find a suitable writer": say what it was first
            logger.error(f"cannot write {filename}: {e.strerror or e} ({type(e).__name__}); nothing was written there.")
            raise


class AtomicMetricsSaver(MetricsSaver):
    """MONAI ``MetricsSaver`` whose CSV files are each written atomically.

    ``monai.handlers.utils.write_metrics_reports`` opens ``metrics.csv`` and ``<metric>_raw.csv`` directly under
    their final names; here the reports are written into a temporary folder inside ``save_dir`` and each complete
    file is moved into place by :func:`atomic_path`. Arguments are those of ``monai.handlers.MetricsSaver``.
    """

    def __call__(self, engine: Any) -> None:
        final_dir = self.save_dir
        os.makedirs(final_dir, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(dir=final_dir, prefix=_temp_prefix("metrics"))
        try:
            self.save_dir = tmp_dir
            super().__call__(engine)
            for name in sorted(os.listdir(tmp_dir)):
                with atomic_path(os.path.join(final_dir, name), suffix=os.path.splitext(name)[1]) as tmp:
                    os.replace(os.path.join(tmp_dir, name), tmp)
        finally:
            self.save_dir = final_dir
            shutil.rmtree(tmp_dir, ignore_errors=True)


def check_writable_dir(path: str, what: str = "output_dir") -> str:
    """Create ``path`` if needed and check that files can be created in it; ``PermissionError`` naming it if not.

    Called before any work so that an unwritable output folder fails in seconds, not after the first image.
    """
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise PermissionError(f"{what} is not writable: {path} ({type(e).__name__}: {e.strerror or e}).") from e
    return path


class OverwriteGuard:
    """Refuse, before any work, a run that would replace or remove a file it did not create (``--overwrite``).

    A workflow's outputs (label maps named after its inputs, ``failures.csv``) may already exist in the output
    folder: a user's own files (manual labels are often named ``T1_seg.nii.gz``) or an earlier run's. Unless
    ``overwrite`` is true, :meth:`check_outputs` and :meth:`check_files` raise a ``FileExistsError`` naming the
    existing files and ``--overwrite true``. Files under ``own_dir`` (the bundle's own output folder, ``eval/``, which
    only the bundle writes to) are the bundle's earlier outputs and may be replaced.

    Args:
        overwrite: replace existing outputs (``true``/``false`` from the command line).
        own_dir: the bundle's own output folder, whose files may be replaced (``None``: none).
    """

    def __init__(self, overwrite: Any = False, own_dir: str | None = None) -> None:
        self.overwrite = as_bool(overwrite, "overwrite")
        self.own_dir = os.path.realpath(str(own_dir)) if own_dir else None

    def replaceable(self, path: str) -> bool:
        """Whether ``path`` may be replaced: ``overwrite`` is on, or it lies in ``own_dir``."""
        if self.overwrite:
            return True
        if self.own_dir is None:
            return False
        real = os.path.realpath(os.path.dirname(os.path.abspath(str(path))))
        return os.path.commonpath([real, self.own_dir]) == self.own_dir

    def check_files(self, paths: Sequence[str], folder: str | None = None) -> list[str]:
        """``paths`` (the files the run will write or remove; relative ones in ``folder``), after checking that none
        of them exists unless it may be replaced.

        Raises:
            FileExistsError: naming the existing files, ``--overwrite true`` and ``--output_dir``.
        """
        paths = [os.path.join(folder, str(p)) if folder else str(p) for p in paths]
        existing = [p for p in dict.fromkeys(paths) if os.path.lexists(p) and not self.replaceable(p)]
        if existing:
            shown = ", ".join(existing[:20]) + (f" and {len(existing) - 20} more" if len(existing) > 20 else "")
            raise FileExistsError(
                f"{len(existing)} file(s) that this run would write already exist and were not written by it: "
                f"{shown}. Nothing was written. Pass --overwrite true to replace them, or write the outputs elsewhere "
                "with --output_dir."
            )
        return paths

    def check_outputs(
        self,
        items: Sequence[str | Mapping[str, Any]],
        layouts: Sequence[SubjectFolderLayout],
        files: Sequence[str] = (),
        image_key: str = "image",
    ) -> list[str]:
        """The output paths of ``layouts`` for the input images ``items`` (paths or datalist entries) and ``files``,
        checked with :meth:`check_files` (call after :meth:`OutputParentLevels.set_inputs`, which fixes the names)."""
        images = [str(d[image_key]) if isinstance(d, Mapping) else str(d) for d in items]
        return self.check_files([layout.path_for(image) for layout in layouts for image in images] + list(files))
