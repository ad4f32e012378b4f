"""3D demo data: anatomically plausible labels over the whole volume, and 2D subjects unchanged by the 3D fixes."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from scripts import demo_data

# (x, y, z) ranges in MNI mm of template boxes, and the class that must (or must not) dominate there
REGIONS = {
    "striatum (caudate head, putamen)": (((8, 30), (-5, 20), (-5, 15)), 2, 0.3),
    "cerebellar cortex": (((10, 40), (-80, -55), (-50, -30)), 2, 0.5),
    "lateral ventricles": (((3, 20), (-20, 10), (10, 25)), 4, 0.2),
    "centrum semiovale": (((15, 35), (-30, 10), (28, 40)), 3, 0.9),
    "anterior cingulate": (((-8, 8), (20, 40), (10, 30)), 1, 0.5),
}
NOT_THERE = {
    "anterior cingulate is not subcortical GM": (((-8, 8), (20, 40), (10, 30)), 2, 0.01),
    "quadrigeminal cistern is not ventricle": (((-5, 5), (-45, -37), (0, 12)), 4, 0.01),
}


def _box_fractions(box: tuple) -> np.ndarray:
    tpl = demo_data.anatomy.template()
    labels, affine = tpl["labels"], tpl["affine"]
    axes = [affine[i, i] * np.arange(labels.shape[i]) + affine[i, 3] for i in range(3)]
    index = [np.where((a >= lo) & (a <= hi))[0] for a, (lo, hi) in zip(axes, box)]
    sub = labels[np.ix_(*index)]
    return np.bincount(sub.ravel(), minlength=5) / sub.size


@pytest.mark.parametrize("name", sorted(REGIONS))
def test_template_classes_are_where_the_anatomy_puts_them(name):
    box, label, at_least = REGIONS[name]
    assert _box_fractions(box)[label] >= at_least, name


@pytest.mark.parametrize("name", sorted(NOT_THERE))
def test_template_mislabels_fixed_for_3d(name):
    box, label, at_most = NOT_THERE[name]
    assert _box_fractions(box)[label] <= at_most, name


def test_2d_subjects_are_those_of_version_2_0():
    """Subject 1's slice is the one generator version 2.0 wrote (the shipped weights were trained on it; 2.1 changed
    only how 3D subjects are computed, 2.2 only how 2D files are stored)."""
    assert demo_data.GENERATOR_VERSION == "2.2"
    img, seg = demo_data.generate_subject(0, 1, 2)
    assert hashlib.sha256(seg.tobytes()).hexdigest()[:16] == "268eebe843d4ae15"
    assert float(img.astype(np.float64).sum()) == pytest.approx(4642.799279666695, rel=1e-6)


def test_3d_subject_has_every_class_in_plausible_proportions():
    """Subject 1's volume is also the one version 2.0 wrote (2.1 evaluates its random fields separably)."""
    img, seg = demo_data.generate_subject(0, 1, 3)
    assert hashlib.sha256(seg.tobytes()).hexdigest()[:16] == "c08e47660d8f07f9"
    assert float(img.astype(np.float64).sum()) == pytest.approx(584401.2822739871, rel=1e-6)
    assert img.shape == seg.shape == demo_data.VOLUME_SHAPE
    assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
    frac = np.bincount(seg.ravel(), minlength=5)[1:] / np.count_nonzero(seg)
    # whole brain: cortex ~50%, subcortical GM incl. cerebellar cortex ~10%, white matter ~37%, ventricles ~2%
    assert 0.4 < frac[0] < 0.6 and 0.06 < frac[1] < 0.15 and 0.3 < frac[2] < 0.45 and 0.01 < frac[3] < 0.05
    assert np.all(img[seg > 0] > 0)
