"""Where the ``test_shifted`` drop comes from: the demo validation subjects with one part of the shift at a time.

The ``test_shifted`` population differs from the training one in three ways at once (``_draw_params`` in
``scripts/demo_data/synthesis.py``): anatomy (older brains, more atrophy, larger ventricles), tissue contrast (grey
matter and CSF closer to white matter) and scanner (integer intensities in the thousands with an offset, a stronger
bias field, more noise). This script re-synthesises the demo's validation subjects with none, some or all of these
parts (``generate_subject(..., shifted=parts)``: each subject keeps its own pose, deformation and noise seed), writes
them to a temporary folder and evaluates MetaSeg and the U-Net on each set with their ``run evaluating`` configs, as
``benchmarks.robustness`` does. The ``none`` row is the models' validation Dice (``run evaluating --split val``);
``all`` is a validation-subject copy of the ``test_shifted`` population. No test image is read or generated.

    python -m benchmarks.shift_sources --output eval/shift_sources.json

``--set KEY=VALUE`` and ``--ckpt_dir`` work as in ``benchmarks.robustness``.

``--tissue_levels`` evaluates no model: it prints where the intensity normalization puts each tissue on each row (the
median normalized intensity of each foreground class, mean over the subjects, and its move from the ``none`` row in
standard deviations of the ``none`` subjects), for the configs' ``normalize_intensity`` (with and without its
bias-field correction), its linear variant (no contrast standardization) and a power law through each
``--contrast_percentile`` (its value measured on the demo training subjects as ``benchmarks.intensity_reference``
does), taken above a CSF cut with ``--floor_level``. It also prints how much tissue pairs overlap in intensity (the
error of the best single threshold between them), and ``--bias_sigma`` corrects the power laws' images first and adds
the configs' map with a bias-field correction of that sigma (when it is not the configs' own):

    python -m benchmarks.shift_sources --tissue_levels --contrast_percentile 35 --floor_level 0.45
    python -m benchmarks.shift_sources --tissue_levels --bias_sigma 4
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser

from benchmarks.intensity_reference import REPO_ROOT, VAL_FIRST_INDEX, above_cut, bias_label, measure_contrast_landmark
from benchmarks.robustness import (
    MODELS,
    eval_namespace,
    evaluate,
    parse_sets,
    prepare,
    report,
    unknown_sets,
    write_result,
)
from scripts.demo_data import AFFINE, DEMO_SUBJECT_FMT, SHIFT_PARTS, generate_subject
from scripts.intensity import NormalizeBrainIntensity

# (row name, the parts of the test_shifted population's shift that its subjects take)
ROWS: list[tuple[str, list[str]]] = [
    ("none", []),
    ("contrast", ["contrast"]),
    ("scanner", ["scanner"]),
    ("contrast + scanner", ["contrast", "scanner"]),
    ("anatomy", ["anatomy"]),
    ("all", list(SHIFT_PARTS)),
]
SPLITS_NAME = "shift_sources_splits.json"
TISSUES = ("cortex", "subcortical GM", "white matter", "CSF")  # seg4 labels 1-4
# tissue pairs whose overlap --tissue_levels reports (seg4 labels: the darker class first)
OVERLAPS = {"cortex / WM": (1, 3), "subcortical GM / WM": (2, 3), "CSF / cortex": (4, 1)}


def write_subjects(root: Path, folder: str, seed: int, indices: list[int], parts: list[str]) -> list[dict[str, str]]:
    """Write the demo subjects ``indices`` with the ``parts`` of the shift (2D slices in the neurite-oasis layout)
    under ``root/folder/``; return their datalist entries, relative to ``root``."""
    entries = []
    for index in indices:
        img, seg = generate_subject(seed, index, 2, shifted=parts)
        subject = Path(folder) / DEMO_SUBJECT_FMT.format(index)
        (root / subject).mkdir(parents=True)
        for arr, kind in ((img, "norm"), (seg, "seg4")):
            nifti = nib.Nifti1Image(arr, AFFINE)
            nifti.header.set_data_dtype(arr.dtype)
            nib.save(nifti, str(root / subject / f"slice_{kind}.nii.gz"))
        entries.append({"img": f"{subject}/slice_norm.nii.gz", "seg4": f"{subject}/slice_seg4.nii.gz"})
    return entries


def write_variants(root: Path, seed: int, indices: list[int]) -> Path:
    """Write each row's subjects under ``root/<row>/``; return the splits JSON, one split per row name."""
    splits = {name: write_subjects(root, name.replace(" + ", "_"), seed, indices, parts) for name, parts in ROWS}
    path = root / SPLITS_NAME
    path.write_text(json.dumps(splits, indent=1))
    return path


def normalizations(
    seed: int, contrast_percentiles: list[float], floor_level: float = 0.0, bias_sigma: float = 0.0
) -> dict[str, NormalizeBrainIntensity]:
    """The configs' ``normalize_intensity`` (``configs/inference.json``; also without its bias-field correction when it
    has one), its linear variant, and a power law through each of ``contrast_percentiles`` with its ``contrast_value``
    measured on the demo training subjects: of the whole brain, or with ``floor_level`` > 0 of the brain above a CSF
    cut at that level (``tissue_floor`` measured as ``benchmarks.intensity_reference`` does). ``bias_sigma`` > 0 adds
    the configs' map with a bias-field correction of that sigma (unless the configs already use it) and corrects the
    power laws' images too (their values measured on corrected training subjects)."""
    config = ConfigParser.load_config_file(str(REPO_ROOT / "configs" / "inference.json"))["normalize_intensity"]
    kwargs = {k: v for k, v in config.items() if k not in ("_target_", "keys")}
    configs = f"configs (p{kwargs['percentile']:g}, p{kwargs['contrast_percentile']:g}"
    configs += f"{above_cut(kwargs.get('tissue_floor', 0.0))})"
    own_sigma = kwargs.get("bias_sigma", 0.0)
    maps = {configs + bias_label(own_sigma): NormalizeBrainIntensity(**kwargs)}
    if own_sigma > 0:  # what the bias-field correction does: the same map without it
        maps[configs] = NormalizeBrainIntensity(**{**kwargs, "bias_sigma": 0.0})
    maps[f"linear (p{kwargs['percentile']:g})"] = NormalizeBrainIntensity(kwargs["percentile"])
    if bias_sigma > 0 and bias_sigma != own_sigma:
        maps[configs + bias_label(bias_sigma)] = NormalizeBrainIntensity(**{**kwargs, "bias_sigma": bias_sigma})
    for q in contrast_percentiles:
        cut, value, _ = measure_contrast_landmark(seed, q, floor_level, bias_sigma)
        kwargs.update(contrast_percentile=q, contrast_value=round(value, 3), tissue_floor=cut, bias_sigma=bias_sigma)
        label = f"p{kwargs['percentile']:g}, p{q:g}{above_cut(cut)} -> {round(value, 3):g}{bias_label(bias_sigma)}"
        maps[label] = NormalizeBrainIntensity(**kwargs)
    return maps


def overlap(x: np.ndarray, seg: np.ndarray, darker: int, brighter: int) -> float:
    """How much two tissues' normalized intensities overlap: the smallest mean of the two classes' error rates that
    one intensity threshold reaches (0: separable by intensity alone, 0.5: indistinguishable)."""
    a, b = np.sort(x[seg == darker]), np.sort(x[seg == brighter])
    thresholds = np.quantile(np.concatenate([a, b]), np.linspace(0.0, 1.0, 201))
    errors = (a.size - np.searchsorted(a, thresholds)) / a.size + np.searchsorted(b, thresholds) / b.size
    return float(errors.min() / 2)


def tissue_levels(
    seed: int, indices: list[int], contrast_percentiles: list[float], floor_level: float = 0.0, bias_sigma: float = 0.0
) -> dict[str, Any]:
    """Per normalization and row: the subjects' median normalized intensity of each tissue (mean over subjects) and
    its move from the ``none`` row in standard deviations of the ``none`` subjects, and the mean :func:`overlap` of
    the ``OVERLAPS`` pairs."""
    subjects = {name: [generate_subject(seed, i, 2, shifted=parts) for i in indices] for name, parts in ROWS}
    result: dict[str, Any] = {}
    for label, normalize in normalizations(seed, contrast_percentiles, floor_level, bias_sigma).items():
        levels, overlaps = {}, {}
        for name, pairs in subjects.items():
            medians, pair_overlaps = [], []
            for img, seg in pairs:
                x = normalize(torch.as_tensor(img[None].astype(np.float32)), source=f"{name} subject")[0].numpy()
                medians.append([float(np.median(x[seg == c])) for c in range(1, len(TISSUES) + 1)])
                pair_overlaps.append([overlap(x, seg, *pair) for pair in OVERLAPS.values()])
            levels[name], overlaps[name] = np.array(medians), np.mean(pair_overlaps, 0)
        mean, std = levels["none"].mean(0), levels["none"].std(0)
        result[label] = {
            name: {
                **{
                    t: {"level": float(m), "move": float(z)}
                    for t, m, z in zip(TISSUES, v.mean(0), (v.mean(0) - mean) / std)
                },
                "overlap": dict(zip(OVERLAPS, map(float, overlaps[name]))),
            }
            for name, v in levels.items()
        }
    return result


def tissue_table(levels: dict[str, Any]) -> str:
    """Markdown table of :func:`tissue_levels`: one line per normalization and row, ``level (move)`` per tissue, then
    the overlap of each pair."""
    header = [*TISSUES, *(f"overlap {pair}" for pair in OVERLAPS)]
    lines = ["| normalization | shift | " + " | ".join(header) + " |", "|---" * (len(header) + 2) + "|"]
    for label, rows in levels.items():
        for name, cells in rows.items():
            text = [f"{cells[t]['level']:.3f} ({cells[t]['move']:+.1f})" for t in TISSUES]
            text += [f"{cells['overlap'][pair]:.3f}" for pair in OVERLAPS]
            lines.append(f"| {label} | {name} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description="Mean foreground Dice of MetaSeg and the U-Net on validation subjects with parts of the "
        "test_shifted population's shift.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--num_images", type=int, default=20, help="validation subjects (the demo has 20)")
    ap.add_argument("--seed", type=int, default=0, help="demo data seed (the configs' demo_seed)")
    ap.add_argument(
        "--first_index", type=int, default=VAL_FIRST_INDEX, help="demo index of the first validation subject"
    )
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS[2]), default=sorted(MODELS[2]))
    ap.add_argument("--ckpt_dir", default=None, help="folder of the models' weights (default: models/)")
    ap.add_argument("--output", default=None, help="JSON file for the results (optional)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--tissue_levels", action="store_true", help="normalized tissue levels per row; no model")
    ap.add_argument(
        "--bias_sigma",
        type=float,
        default=0.0,
        help="with --tissue_levels: divide out a bias field of this Gaussian sigma (pixels) too (0: off)",
    )
    ap.add_argument(
        "--contrast_percentile", type=float, action="append", default=[], help="with --tissue_levels: a power law"
    )
    ap.add_argument(
        "--floor_level",
        type=float,
        default=0.0,
        help="with --contrast_percentile: take it above a CSF cut at this level of the linear map (0: whole brain)",
    )
    args = ap.parse_args(argv)
    if args.num_images < 1:
        ap.error("--num_images must be at least 1")
    if args.contrast_percentile and not args.tissue_levels:
        ap.error("--contrast_percentile needs --tissue_levels")
    if args.bias_sigma and not args.tissue_levels:
        ap.error("--bias_sigma needs --tissue_levels (for the models: --set normalize_intensity#bias_sigma=S)")
    if args.floor_level and not args.contrast_percentile:
        ap.error("--floor_level needs --contrast_percentile")
    if args.tissue_levels and args.sets:
        ap.error("--set changes a model's config; --tissue_levels evaluates no model")
    indices = list(range(args.first_index, args.first_index + args.num_images))
    if args.tissue_levels:
        levels = tissue_levels(args.seed, indices, args.contrast_percentile, args.floor_level, args.bias_sigma)
        print(tissue_table(levels))
        info = {"seed": args.seed, "subject_indices": [indices[0], indices[-1]]}
        return write_result("shift_sources", {"tissue_levels": levels, **info}, args.output, argv)
    try:
        sets = parse_sets(args.sets)
    except ValueError as e:
        ap.error(str(e))
    models = list(dict.fromkeys(args.models))
    names = {m: MODELS[2][m]["name"] for m in models}
    eval_args = eval_namespace(args.ckpt_dir)
    unknown = unknown_sets(models, eval_args, sets)
    if unknown:
        ap.error(f"--set ids that no selected model's config defines: {unknown}")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shift-sources-") as tmp:
        eval_args.dataset_dir, eval_args.splits_file = tmp, str(write_variants(Path(tmp), args.seed, indices))
        for m in models:
            prepare(m, eval_args, sets)
        for name, parts in ROWS:
            row: dict[str, Any] = {"shift": name, "parts": parts}
            for m in models:
                dice, count = evaluate(m, eval_args, sets, [], name)
                row[m] = {"dice": dice, "num_images": count}
                print(f"{name:>20s}  {names[m]:>9s}  Dice {dice:.4f}  ({count} images)", flush=True)
            rows.append(row)
    info = {
        "seed": args.seed,
        "subject_indices": [indices[0], indices[-1]],
        "sets": sets,
        "seconds": time.perf_counter() - start,
    }
    return report("shift_sources", rows, names, info, args.output, argv, label="shift")


if __name__ == "__main__":
    main()
