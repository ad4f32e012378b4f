"""Embedded, offline, deterministic demo data that mimics the neurite-oasis layout.

``anatomy`` (the template and its labels), ``synthesis`` (one subject) and ``dataset`` (the folder on disk).

The demo subjects are synthesised from the MNI ICBM 152 non-linear symmetric 2009a template (T1 and grey/white
matter probability maps) that ships inside the nilearn wheel, so nothing is downloaded. A tissue-type label volume
following FreeSurfer's seg4 convention (0 background, 1 cortex, 2 subcortical grey matter, 3 white matter,
4 ventricular CSF) is derived once in template space; each subject is then a randomly (affinely + elastically)
deformed, intensity-perturbed resampling of it. See docs/data_license.txt for provenance and licence.

The labels are checked over the whole volume (3D, ``spatial_dims=3``; about 3 s per subject on one CPU core): the
striatum is the deep grey matter connected to striatal seeds (not the cingulate gyrus), and cisternal CSF next to the
ventricles is background. Inside the coronal band used by the 2D slices (MNI y -36..4 mm) the labels are those of
version 1.0, so 2D subjects are identical to it. Known simplification: the cerebellar cortex (subcortical GM here) is
cut at MNI z = -12 mm, so the top of the vermis is labelled cortex.
"""

from __future__ import annotations

from .anatomy import AFFINE, AFFINE_3D, NUM_CLASSES, SEG4_LABELS, SLICE_INDEX, SLICE_SHAPE, VOLUME_SHAPE
from .dataset import (
    DEMO_SUBJECT_FMT,
    GENERATOR_NAME,
    GENERATOR_VERSION,
    MANIFEST_NAME,
    SPLITS_NAME,
    dataset_folder,
    prepare_demo_data,
)
from .synthesis import SHIFT_PARTS, WM_NORM, generate_subject

__all__ = [
    "AFFINE",
    "AFFINE_3D",
    "NUM_CLASSES",
    "SEG4_LABELS",
    "SLICE_INDEX",
    "SLICE_SHAPE",
    "VOLUME_SHAPE",
    "DEMO_SUBJECT_FMT",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SHIFT_PARTS",
    "SPLITS_NAME",
    "WM_NORM",
    "dataset_folder",
    "generate_subject",
    "prepare_demo_data",
]
