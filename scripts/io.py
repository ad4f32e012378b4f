"""Output writing: subject-folder naming and an atomic NIfTI writer that keeps the input's affine as is."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

from monai.data import NibabelWriter
from monai.data.folder_layout import FolderLayoutBase

__all__ = ["SubjectFolderLayout", "AtomicNiftiWriter"]


class SubjectFolderLayout(FolderLayoutBase):
    """``<output_dir>/<input's parent folder>/<input stem>_<postfix><extension>``.

    In the neurite-oasis layout every subject folder holds a ``slice_norm.nii.gz``; keeping the subject folder in the
    output path means inputs sharing a file name never overwrite each other, e.g.
    ``OASIS_OAS1_0001_MR1/slice_norm.nii.gz`` -> ``<output_dir>/OASIS_OAS1_0001_MR1/slice_norm_seg.nii.gz``.
    Use as ``SaveImaged(folder_layout=SubjectFolderLayout(...))``.
    """

    def __init__(
        self, output_dir: str, postfix: str = "seg", extension: str = ".nii.gz", makedirs: bool = True
    ) -> None:
        self.output_dir = output_dir
        self.postfix = postfix
        self.extension = extension if extension.startswith(".") else f".{extension}"
        self.makedirs = makedirs

    def filename(self, subject: str = "subject", idx: int | None = None, **kwargs: object) -> str:
        path = str(subject)
        parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
        stem = os.path.basename(path)
        for ext in (".nii.gz", ".nii", ".gz"):
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        name = f"{stem}_{self.postfix}" if self.postfix else stem
        if idx is not None:
            name += f"_{idx}"
        folder = os.path.join(self.output_dir, parent)
        if self.makedirs:
            os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, name + self.extension)


class AtomicNiftiWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary file and renames it into place, so a failure or a kill never
    leaves a truncated file under the final name.

    With ``resample=False`` the data are written with their metadata affine unchanged, without going through
    MONAI's resampler: 2D slices cut from 3D volumes (such as neurite-oasis ``slice_*.nii.gz``) carry a 4x4 affine
    whose in-plane 2x2 block is singular, which the resampler cannot invert although nothing needs resampling.
    """

    def set_metadata(self, meta_dict: Mapping | None = None, resample: bool = True, **options: Any) -> None:
        if resample:
            return super().set_metadata(meta_dict, resample=resample, **options)
        _, affine, _ = self.get_meta_info(meta_dict)
        if self.output_dtype is None and hasattr(self.data_obj, "dtype"):
            self.output_dtype = self.data_obj.dtype
        self.affine = affine

    def write(self, filename: Any, verbose: bool = False, **obj_kwargs: Any) -> None:
        filename = str(filename)
        folder = os.path.dirname(os.path.abspath(filename))
        os.makedirs(folder, exist_ok=True)
        suffix = ".nii.gz" if filename.endswith(".nii.gz") else os.path.splitext(filename)[1]
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(filename)}.", suffix=suffix)
        os.close(fd)
        try:
            super().write(tmp, verbose=verbose, **obj_kwargs)
            os.replace(tmp, filename)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
