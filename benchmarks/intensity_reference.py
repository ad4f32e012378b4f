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
    floor = round(measure_tissue_floor(args.seed, q, args.floor_level), 2) if args.floor_level > 0 else 0.0
    contrast_value = measure_contrast_value(args.seed, q, floor)
    above = f" above cut {floor:g}" if floor else ""
    print(
        f"\ntissue floor (exponent of the CSF cut at level {args.floor_level:g}; 0: none): {floor:g}; contrast value "
        f"(the brain's {q:g}th percentile{above}, after the linear map) over the {NUM_TRAIN} demo training "
        f"subjects: mean {contrast_value[0]:.3f} (std {contrast_value[1]:.3f})\n"
    )
    maps = {
        "linear (p75)": NormalizeBrainIntensity(),
        f"power law (p75, p{q:g}{above} -> {contrast_value[0]:.3f})": NormalizeBrainIntensity(
            contrast_percentile=q, contrast_value=round(contrast_value[0], 3), tissue_floor=floor
        ),
    }
    print("median normalized tissue intensity over the validation subjects and perturbations: mean (std / mean)\n")
    print("| map | " + " | ".join(f"{t}: {n}" for t in TISSUES for n in ("clean", "all")) + " |")
    print("|---" * (2 * len(TISSUES) + 1) + "|")
    for label, normalize in maps.items():
        cells = []
        for tissue, value in TISSUES.items():
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
        f"--contrast_percentile {q:g} --floor_level {args.floor_level:g}"
    )


def measure_contrast_value(seed: int, contrast_percentile: float, tissue_floor: float = 0.0) -> tuple[float, float]:
    """Mean and std over the demo training subjects of the lower landmark after the linear map."""
    ratios = []
    for index in range(1, NUM_TRAIN + 1):
        img, _ = generate_subject(seed, index)
        background, low, reference = brain_contrast_landmarks(
            torch.as_tensor(img)[None], 75.0, contrast_percentile, tissue_floor=tissue_floor
        )
        ratios.append((low - background) / (reference - background))
    return float(np.mean(ratios)), float(np.std(ratios))


def measure_tissue_floor(seed: int, contrast_percentile: float, floor_level: float) -> float:
    """The exponent ``k`` of ``NormalizeBrainIntensity(tissue_floor=k)`` whose CSF cut ``u_c ** k`` lies at
    ``floor_level`` of the linear map for the demo training subjects' mean whole-brain landmark ``u_c``."""
    return math.log(floor_level) / math.log(measure_contrast_value(seed, contrast_percentile)[0])


if __name__ == "__main__":
    main()
