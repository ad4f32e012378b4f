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
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib

from benchmarks.intensity_reference import VAL_FIRST_INDEX
from benchmarks.robustness import MODELS, evaluate, parse_sets, prepare, report, unknown_sets
from scripts.demo_data import AFFINE, DEMO_SUBJECT_FMT, SHIFT_PARTS, generate_subject

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


def write_variants(root: Path, seed: int, indices: list[int]) -> Path:
    """Write each row's subjects (2D slices in the neurite-oasis layout) under ``root/<row>/``; return the splits
    JSON, one split per row name."""
    splits: dict[str, list[dict[str, str]]] = {}
    for name, parts in ROWS:
        folder = name.replace(" + ", "_")
        splits[name] = []
        for index in indices:
            img, seg = generate_subject(seed, index, 2, shifted=parts)
            subject = Path(folder) / DEMO_SUBJECT_FMT.format(index)
            (root / subject).mkdir(parents=True)
            for arr, kind in ((img, "norm"), (seg, "seg4")):
                nifti = nib.Nifti1Image(arr, AFFINE)
                nifti.header.set_data_dtype(arr.dtype)
                nib.save(nifti, str(root / subject / f"slice_{kind}.nii.gz"))
            splits[name].append({"img": f"{subject}/slice_norm.nii.gz", "seg4": f"{subject}/slice_seg4.nii.gz"})
    path = root / SPLITS_NAME
    path.write_text(json.dumps(splits, indent=1))
    return path


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
    args = ap.parse_args(argv)
    if args.num_images < 1:
        ap.error("--num_images must be at least 1")
    try:
        sets = parse_sets(args.sets)
    except ValueError as e:
        ap.error(str(e))
    models = list(dict.fromkeys(args.models))
    names = {m: MODELS[2][m]["name"] for m in models}
    eval_args = argparse.Namespace(
        spatial_dims=2, preset=[], ckpt_dir=args.ckpt_dir, dataset_dir=None, splits_file=None, num_images=None
    )
    unknown = unknown_sets(models, eval_args, sets)
    if unknown:
        ap.error(f"--set ids that no selected model's config defines: {unknown}")
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="shift-sources-") as tmp:
        indices = list(range(args.first_index, args.first_index + args.num_images))
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
        "subject_indices": [args.first_index, args.first_index + args.num_images - 1],
        "sets": sets,
        "seconds": time.perf_counter() - start,
    }
    return report("shift_sources", rows, names, info, args.output, argv, label="shift")


if __name__ == "__main__":
    main()
