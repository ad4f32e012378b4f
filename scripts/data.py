"""Datalists for the neurite-oasis layout (real data or the embedded demo set), with clear errors."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from monai.data import Dataset

from .options import as_bool

__all__ = ["LABEL_KEYS", "load_datalist", "image_datalist", "InputDataset", "InputCheck", "transform_error_cause"]

# splits-file entry key of the label map for each supported number of classes (background included)
LABEL_KEYS = {5: "seg4", 25: "seg24"}
# file names inside a neurite-oasis subject folder (2D slice, 3D aligned volume), for splits that list subject
# folder names only
SUBJECT_FILES = {
    2: {"img": "slice_norm.nii.gz", "seg4": "slice_seg4.nii.gz", "seg24": "slice_seg24.nii.gz"},
    3: {"img": "aligned_norm.nii.gz", "seg4": "aligned_seg4.nii.gz", "seg24": "aligned_seg24.nii.gz"},
}


def _read_splits(splits_file: str) -> dict:
    if not os.path.isfile(splits_file):
        raise FileNotFoundError(f"splits file not found: {splits_file}")
    try:
        with open(splits_file) as f:
            splits = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{splits_file}: not valid JSON ({e}).") from e
    if not isinstance(splits, dict):
        raise ValueError(f"{splits_file}: expected a JSON object mapping split names to lists of entries.")
    return splits


def load_datalist(
    dataset_dir: str,
    splits_file: str,
    split: str,
    num_classes: int = 5,
    image_key: str = "img",
    limit: int | None = None,
    with_labels: bool = True,
    spatial_dims: int = 2,
) -> list[dict[str, str]]:
    """``[{"image": path, "label": path}, ...]`` for one split of a neurite-oasis style dataset.

    Args:
        dataset_dir: dataset root; split entries are relative to it.
        splits_file: JSON ``{"train": [...], "val": [...], "test": [...]}``; each entry is either a dict of paths
            relative to ``dataset_dir`` (``{"img": ..., "seg4": ..., "seg24": ...}``, the MetaSeg authors' format) or a
            subject folder name, which stands for that folder's ``slice_norm``/``slice_seg4``/``slice_seg24`` files
            (``aligned_norm``/``aligned_seg4``/``aligned_seg24`` with ``spatial_dims=3``).
        split: which split to read.
        num_classes: 5 reads ``seg4`` labels, 25 reads ``seg24``.
        image_key: entry key of the image path.
        limit: keep only the first ``limit`` entries (``None``: all).
        with_labels: ``False`` lists images only (``[{"image": path}, ...]``), for inference.
        spatial_dims: 2 (slices) or 3 (volumes): which files a subject folder name stands for.

    Raises:
        FileNotFoundError: ``dataset_dir`` is missing or empty, or the splits file or a listed file is missing.
        ValueError: malformed splits file, unknown split, or unsupported ``num_classes``.
    """
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset_dir does not exist or is not a directory: {dataset_dir}")
    if not os.listdir(dataset_dir):
        raise FileNotFoundError(
            f"dataset_dir is empty: {dataset_dir} (expected neurite-oasis subject folders, e.g. OASIS_OAS1_0001_MR1/)."
        )
    if num_classes not in LABEL_KEYS:
        raise ValueError(
            f"num_classes must be one of {sorted(LABEL_KEYS)} for neurite-oasis labels, got {num_classes}."
        )
    if spatial_dims not in SUBJECT_FILES:
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
    splits = _read_splits(splits_file)
    if split not in splits:
        raise ValueError(f"{splits_file}: no split named '{split}' (available: {sorted(splits)}).")
    label_key = LABEL_KEYS[num_classes] if with_labels else None
    entries = splits[split][:limit] if limit is not None else splits[split]
    if not entries:
        raise ValueError(f"{splits_file}: split '{split}' is empty.")
    datalist = []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {key: f"{entry}/{name}" for key, name in SUBJECT_FILES[spatial_dims].items()}
        keys = {"image": image_key, "label": label_key} if label_key else {"image": image_key}
        for key in keys.values():
            if key not in entry:
                raise ValueError(f"{splits_file}: entry {i} of split '{split}' has no '{key}' path.")
        item = {kind: os.path.join(dataset_dir, entry[key]) for kind, key in keys.items()}
        for kind, path in item.items():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{kind} file listed in {splits_file} (split '{split}') not found: {path}")
        datalist.append(item)
    return datalist


def image_datalist(paths: Sequence[str]) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for inference on arbitrary images, checking that every file exists."""
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ValueError("the inference datalist is empty: give at least one image path.")
    problems = [
        f"{path}: {'a folder, not an image file' if os.path.isdir(path) else 'not found'}"
        for path in paths
        if not os.path.isfile(path)
    ]
    if problems:
        raise FileNotFoundError(
            f"{len(problems)} of {len(paths)} input images cannot be read (nothing was segmented): "
            + "; ".join(problems)
        )
    return [{"image": os.path.abspath(p)} for p in paths]


def transform_error_cause(error: BaseException) -> BaseException:
    """The exception that made a transform fail, out of MONAI's ``RuntimeError("applying transform <object at 0x..>")``
    wrappers (``monai.transforms.apply_transform`` chains the real one as ``__cause__``)."""
    cause = error
    while isinstance(cause, RuntimeError) and str(cause).startswith("applying transform") and cause.__cause__:
        cause = cause.__cause__
    return cause


class InputDataset(Dataset):
    """MONAI ``Dataset`` whose transform errors carry their real reason.

    A failing transform reaches the engine as ``RuntimeError: applying transform <...ValidateMetaSegInputd object at
    0x7f..>``, and the log's ERROR line shows only that; here the error is re-raised as the underlying exception
    (e.g. ``ValueError: /data/sub01/slice_norm.nii.gz: no brain found ...``), chained to MONAI's for the traceback.
    """

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except RuntimeError as e:
            cause = transform_error_cause(e)
            if cause is e:
                raise
            try:
                error = type(cause)(*cause.args)
            except Exception:  # an exception type that cannot be rebuilt from its args
                error = RuntimeError(f"{type(cause).__name__}: {cause}")
            raise error from e


class InputCheck:
    """Check every input of a batch run before the first fit, and optionally segment the rest when some fail.

    Called on the datalist, it applies the workflow's ``transform`` (loading, input checks, intensity normalization)
    to every item and collects the failures with their real reason. Without ``skip_failed`` any failure stops the run
    before any work, listing every bad file at once (not only the first). With ``skip_failed`` the good items are
    returned, the failures are written to ``report_path`` (CSV: ``image,error``) and :meth:`finish`, run after the
    workflow, raises so that the run exits non-zero.

    Args:
        transform: the workflow's preprocessing (a callable on one datalist item).
        skip_failed: segment the inputs that pass and report the others (``true``/``false`` from the command line).
        report_path: the failures CSV; removed when a run has no failures, so it never describes an older run.
        image_key: the datalist key naming the input file.
    """

    def __init__(
        self, transform: Callable, skip_failed: Any = False, report_path: str | None = None, image_key: str = "image"
    ) -> None:
        self.transform = transform
        self.skip_failed = as_bool(skip_failed, "skip_failed")
        self.report_path = report_path
        self.image_key = image_key
        self.failures: list[tuple[str, str]] = []
        self.total = 0

    def __call__(self, data: Sequence[dict]) -> list[dict]:
        self.failures, self.total, passed = [], len(data), []
        for item in data:
            try:
                self.transform(dict(item))
            except Exception as e:  # noqa: BLE001 - every failure is reported with its reason
                cause = transform_error_cause(e)
                self.failures.append((str(item.get(self.image_key)), f"{type(cause).__name__}: {cause}"))
            else:
                passed.append(item)
        self._write_report()
        if self.failures and not self.skip_failed:
            logging.getLogger(__name__).error(f"{self._summary(' ')} (nothing segmented)")
            raise ValueError(f"{self._summary()} (nothing was segmented; --skip_failed true segments the others)")
        if self.failures:
            logging.getLogger(__name__).error(f"{self._summary(' ')} (segmenting the other {len(passed)})")
        if not passed:
            raise ValueError(f"{self._summary()}: no input left to segment.")
        return passed

    def _summary(self, separator: str = "\n  ") -> str:
        lines = "".join(f"{separator}{image}: {error}" for image, error in self.failures)
        return f"{len(self.failures)} of {self.total} inputs cannot be segmented:{lines}"

    def _write_report(self) -> None:
        if self.report_path is None:
            return
        if not self.failures:
            if os.path.isfile(self.report_path):
                os.remove(self.report_path)
            return
        from .outputs import atomic_path

        with atomic_path(self.report_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "error"])
            writer.writerows(self.failures)

    def finish(self) -> None:
        """Raise after a ``skip_failed`` run in which inputs failed (the others are segmented by then)."""
        if self.failures:
            raise RuntimeError(
                f"{len(self.failures)} of {self.total} inputs were skipped (listed in {self.report_path}); the other "
                f"{self.total - len(self.failures)} were segmented."
            )
