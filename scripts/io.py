"""Output naming: one label file per input, in a folder named after the input's parent (subject) folder."""

from __future__ import annotations

import os

from monai.data.folder_layout import FolderLayoutBase

__all__ = ["SubjectFolderLayout"]


class SubjectFolderLayout(FolderLayoutBase):
    """``<output_dir>/<input's parent folder>/<input stem><postfix><extension>``.

    In the neurite-oasis layout every subject folder holds a ``slice_norm.nii.gz``; keeping the subject folder in the
    output path means inputs sharing a file name never overwrite each other, e.g.
    ``OASIS_OAS1_0001_MR1/slice_norm.nii.gz`` -> ``<output_dir>/OASIS_OAS1_0001_MR1/slice_norm_seg.nii.gz``.
    Use as ``SaveImaged(folder_layout=SubjectFolderLayout(...))``.
    """

    def __init__(self, output_dir: str, postfix: str = "seg", extension: str = ".nii.gz", makedirs: bool = True) -> None:
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
