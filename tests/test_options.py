"""Options given as bools, numbers or command-line strings: checked against their bounds, the option named."""

from __future__ import annotations

import pytest

from scripts.options import as_bool


@pytest.mark.parametrize(
    "value,expected", [(True, True), ("true", True), ("False", False), ("false", False), (0, False)]
)
def test_as_bool(value, expected):
    assert as_bool(value, "resume") is expected


def test_as_bool_rejects_other_values():
    with pytest.raises(ValueError, match="--resume must be true or false, got 'maybe'"):
        as_bool("maybe", "resume")


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("fit_steps", 55, 55),
        ("fit_steps", 1e3, 1000),  # fire gives 1e3 as a float
        ("fit_steps", "12", 12),
        ("fit_steps", 0, 0),
        ("fit_lr", 1.5e-4, 1.5e-4),
        ("fit_lr", 1, 1.0),
        ("fit_points", None, None),
        ("fit_points", 4096, 4096),
        ("fit_points", 0, 0),  # all pixels
        ("output_scale", 2, 2),
        ("seed", 4294967295, 4294967295),
    ],
)
def test_numeric_options_in_range(name, value, expected):
    from scripts.options import check_option

    assert check_option(name, value) == expected


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("fit_steps", 1e9, "--fit_steps must be an integer from 0 to 10000, got 1000000000.0"),
        ("fit_steps", "abc", "--fit_steps must be an integer from 0 to 10000, got 'abc'"),
        ("fit_steps", -1, "--fit_steps must be an integer from 0 to 10000"),
        ("fit_steps", 2.5, "--fit_steps must be an integer"),
        ("fit_steps", True, "--fit_steps must be an integer"),
        ("fit_lr", "abc", "--fit_lr must be a finite number > 0.0 and <= 1.0, got 'abc'"),
        ("fit_lr", 1e9, "--fit_lr must be a finite number > 0.0 and <= 1.0"),
        ("fit_lr", 0, "--fit_lr must be a finite number > 0.0"),
        ("fit_lr", float("nan"), "--fit_lr must be a finite number"),
        ("fit_lr", "inf", "--fit_lr must be a finite number"),
        ("fit_lr_end_factor", 1.5, "--fit_lr_end_factor must be a finite number >= 0.0 and <= 1.0"),
        ("fit_points", -1, r"--fit_points must be an integer from 0 to 16777216 \(or null\)"),
        ("output_scale", 0, "--output_scale must be an integer from 1 to 8"),
        ("output_scale", 100, "--output_scale must be an integer from 1 to 8"),
        ("seed", "abc", "--seed must be an integer from 0 to 4294967295, got 'abc'"),
        ("seed", -1, "--seed must be an integer"),
    ],
)
def test_numeric_options_out_of_range_name_the_option_and_range(name, value, message):
    from scripts.options import check_option

    with pytest.raises(ValueError, match=message):
        check_option(name, value)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--fit_steps", "1e9", "--fit_steps must be an integer from 0 to 10000, got 1000000000.0"),
        ("--fit_steps", "abc", "--fit_steps must be an integer from 0 to 10000, got 'abc'"),
        ("--fit_lr", "abc", "--fit_lr must be a finite number > 0.0 and <= 1.0, got 'abc'"),
        ("--fit_lr", "1e9", "--fit_lr must be a finite number > 0.0 and <= 1.0, got 1000000000.0"),
        ("--fit_points", "-5", "--fit_points must be an integer from 0 to 16777216"),
        ("--output_scale", "100", "--output_scale must be an integer from 1 to 8, got 100"),
        ("--seed", "abc", "--seed must be an integer from 0 to 4294967295, got 'abc'"),
    ],
)
@pytest.mark.usefixtures("bundle_unchanged")
def test_inference_refuses_bad_numbers_before_any_work(tmp_path, option, value, message):
    """Through ``python -m monai.bundle``: refused at start-up (no input read, nothing written), the option and its
    range named; ``--fit_steps 1e9`` ran for ever and ``--fit_lr abc`` / ``--seed abc`` were a bare TypeError."""
    import nibabel as nib
    import numpy as np

    from tests.utils import run_inference_on_files, save_tiny_metaseg

    image = tmp_path / "in" / "s1" / "T1.nii.gz"
    image.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(image))  # never read: no brain in it
    save_tiny_metaseg(tmp_path / "models")
    proc = run_inference_on_files([image], tmp_path / "out", tmp_path / "models", option, value, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in log, log[-3000:]
    assert "TypeError" not in log and "no brain" not in log  # checked before the inputs are read
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
