"""How the intensity normalization was chosen: which brain statistics put every tissue at one place.

Part 1, the reference: for each candidate (a percentile of the brain's intensities, or a z-score over the brain) this
script normalizes the demo validation subjects (never the test splits) clean and under the intensity perturbations of
``benchmarks/robustness.py``, and prints the median normalized white-matter intensity: its mean and its spread
(standard deviation) over subjects and perturbations. The candidate with the smallest spread keeps white matter in one
place whatever the scanner.

Part 2, the contrast: the linear map (background 0, reference 1) cannot undo a contrast change such as a gamma, which
moves grey matter and CSF. The contrast-standardizing map (``contrast_percentile``: a power law that also sends a lower
brain percentile to a fixed value) can; its ``contrast_value`` is measured here as the mean over the demo TRAINING
subjects, and both maps are compared by the spread of the median normalized cortex, white matter and CSF over the
validation subjects and perturbations. ``scripts.intensity.NormalizeBrainIntensity`` and the configs'
``normalize_intensity`` use the result (docs/benchmarks.md). ``--floor_level`` takes the lower percentile over the
brain above a CSF cut at that level of the linear map (``tissue_floor``, its exponent measured on the training
subjects too; a candidate of release 0.16.3, not in the configs).

    python -m benchmarks.intensity_reference --num_subjects 20
    python -m benchmarks.intensity_reference --num_subjects 20 --contrast_percentile 35 --floor_level 0.45
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from monai.transforms import AdjustContrast, GaussianSmooth, RandBiasField

from scripts.demo_data import generate_subject
from scripts.intensity import (
    NormalizeBrainIntensity,
    brain_contrast_landmarks,
    brain_intensity_range,
    brain_threshold,
    correct_bias_field,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
# the demo splits' subject indices (configs/train.json: 80 train, 20 val, 20 test, 20 test_shifted)
NUM_TRAIN = 80
VAL_FIRST_INDEX = 81
TISSUES = {"cortex": 1, "white matter": 3, "CSF": 4}


def perturbations(x: torch.Tensor, seed: int) -> Iterator[tuple[str, torch.Tensor]]:
    """The image as it comes, then under each intensity perturbation of the robustness benchmark."""
    gen = torch.Generator().manual_seed(seed)
    yield "clean", x
    yield "x0.5", x * 0.5
    yield "x2", x * 2.0
    yield "+0.1", x + 0.1
    yield "gamma 0.6", AdjustContrast(0.6)(x)
    yield "gamma 1.6", AdjustContrast(1.6)(x)
    bias = RandBiasField(coeff_range=(0.3, 0.3), prob=1.0)
    bias.set_random_state(seed)
    yield "bias", bias(x[None])[0]
    yield "noise 0.05", x + 0.05 * torch.randn(x.shape, generator=gen)
    yield "blur 1", GaussianSmooth(1.0)(x[None])[0]


def percentile_reference(q: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def normalize(x: torch.Tensor) -> torch.Tensor:
        background, reference = brain_intensity_range(x, q)
        return (x - background) / (reference - background)

    return normalize


def zscore_over_brain(x: torch.Tensor) -> torch.Tensor:
    brain = x[x > brain_threshold(x.flatten())]
    return (x - brain.mean()) / brain.std()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_subjects", type=int, default=20, help="demo validation subjects (at most 20)")
    parser.add_argument("--seed", type=int, default=0, help="demo-data seed (configs: 0)")
    parser.add_argument("--contrast_percentile", type=float, default=25.0, help="lower landmark of the power law")
    parser.add_argument(
        "--floor_level",
        type=float,
        default=0.0,
        help="CSF cut of the lower landmark, as a level of the linear map on typical training subjects (0: none)",
    )
    parser.add_argument(
        "--bias_sigma", type=float, default=0.0, help="divide out a bias field of this sigma first (pixels; 0: off)"
    )
    args = parser.parse_args()

    candidates = {f"brain p{q:g}": percentile_reference(q) for q in (50, 75, 90, 95, 99)}
    candidates["z-score over brain"] = zscore_over_brain
    subjects = [generate_subject(args.seed, VAL_FIRST_INDEX + i) for i in range(min(args.num_subjects, 20))]
    values: dict[str, dict[str, list[float]]] = {c: {} for c in candidates}
    for i, (img, seg) in enumerate(subjects):
        wm = torch.as_tensor(seg == 3)
        for name, x in perturbations(torch.as_tensor(img), seed=i):
            for cand, normalize in candidates.items():
                values[cand].setdefault(name, []).append(float(normalize(x)[wm].median()))
    names = list(values[next(iter(candidates))])
    print(f"median normalized white-matter intensity over {len(subjects)} demo validation subjects: mean (std)\n")
    print("| reference | " + " | ".join(names) + " | all: std / mean |")
    print("|---" * (len(names) + 2) + "|")
    for cand, rows in values.items():
        every = np.concatenate([rows[n] for n in names])
        cells = [f"{np.mean(rows[n]):.3f} ({np.std(rows[n]):.3f})" for n in names]
        print(f"| {cand} | " + " | ".join(cells) + f" | **{np.std(every) / abs(np.mean(every)):.3f}** |")

    q = args.contrast_percentile
    floor, value, std = measure_contrast_landmark(args.seed, q, args.floor_level, args.bias_sigma)
    print(
        f"\ntissue floor (exponent of the CSF cut at level {args.floor_level:g}; 0: none): {floor:g}; contrast value "
        f"(the brain's {q:g}th percentile{above_cut(floor)}, after the linear map{bias_label(args.bias_sigma)}) over "
        f"the {NUM_TRAIN} demo training subjects: mean {value:.3f} (std {std:.3f})\n"
    )
    maps = {
        "linear (p75)": NormalizeBrainIntensity(),
        f"power law (p75, p{q:g}{above_cut(floor)} -> {value:.3f}{bias_label(args.bias_sigma)})": (
            NormalizeBrainIntensity(
                contrast_percentile=q, contrast_value=round(value, 3), tissue_floor=floor, bias_sigma=args.bias_sigma
            )
        ),
    }
    print("median normalized tissue intensity over the validation subjects and perturbations: mean (std / mean)\n")
    print("| map | " + " | ".join(f"{t}: {n}" for t in TISSUES for n in ("clean", "all")) + " |")
    print("|---" * (2 * len(TISSUES) + 1) + "|")
    for label, normalize in maps.items():
        cells = []
        for value in TISSUES.values():
            per_perturbation: dict[str, list[float]] = {}
            for i, (img, seg) in enumerate(subjects):
                mask = torch.as_tensor(seg == value)
                for name, x in perturbations(torch.as_tensor(img), seed=i):
                    per_perturbation.setdefault(name, []).append(float(normalize(x[None])[0][mask].median()))
            clean, every = np.array(per_perturbation["clean"]), np.concatenate(list(per_perturbation.values()))
            cells += [
                f"{clean.mean():.3f} ({clean.std() / clean.mean():.3f})",
                f"{every.mean():.3f} ({every.std() / every.mean():.3f})",
            ]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print(
        f"\ncommand: python -m benchmarks.intensity_reference --num_subjects {args.num_subjects} "
        f"--contrast_percentile {q:g} --floor_level {args.floor_level:g} --bias_sigma {args.bias_sigma:g}"
    )


def measure_contrast_landmark(
    seed: int, contrast_percentile: float, floor_level: float = 0.0, bias_sigma: float = 0.0
) -> tuple[float, float, float]:
    """The lower landmark of the power law over the demo training subjects, after the linear map: ``(tissue_floor,
    mean, std)``.

    ``floor_level`` > 0 takes the landmark above a CSF cut: ``tissue_floor`` is the exponent ``k`` (rounded to 0.01)
    of ``NormalizeBrainIntensity(tissue_floor=k)`` whose cut ``u_c ** k`` lies at ``floor_level`` for the subjects'
    mean whole-brain landmark ``u_c``; 0 means no cut (``tissue_floor`` 0). ``bias_sigma`` > 0 measures on the
    subjects with their bias field divided out first, as ``NormalizeBrainIntensity(bias_sigma=...)`` does.
    """
    images = [torch.as_tensor(generate_subject(seed, index)[0])[None] for index in range(1, NUM_TRAIN + 1)]
    if bias_sigma > 0:
        images = [correct_bias_field(img, bias_sigma) for img in images]

    def levels(tissue_floor: float) -> np.ndarray:
        values = []
        for img in images:
            background, low, reference = brain_contrast_landmarks(
                img, 75.0, contrast_percentile, tissue_floor=tissue_floor
            )
            values.append((low - background) / (reference - background))
        return np.array(values)

    tissue_floor = 0.0
    if floor_level > 0:
        tissue_floor = round(math.log(floor_level) / math.log(float(levels(0.0).mean())), 2)
    values = levels(tissue_floor)
    return tissue_floor, float(values.mean()), float(values.std())


def above_cut(tissue_floor: float) -> str:
    """How a map's label names its CSF cut (nothing without one)."""
    return f" above cut {tissue_floor:g}" if tissue_floor else ""


def bias_label(bias_sigma: float) -> str:
    """How a map's label names its bias-field correction (nothing without one)."""
    return f", bias field sigma {bias_sigma:g}" if bias_sigma else ""


if __name__ == "__main__":
    main()
