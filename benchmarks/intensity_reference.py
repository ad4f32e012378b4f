"""How the intensity normalization's reference was chosen: which brain statistic puts white matter at one place.

For each candidate (a percentile of the brain's intensities, or a z-score over the brain) this script normalizes the
demo validation subjects (never the test splits) clean and under the perturbations of ``benchmarks/robustness.py``,
and prints the median normalized white-matter intensity: its mean and its spread (standard deviation) over subjects
and perturbations. The candidate with the smallest spread keeps the tissue contrast the network learned in one place
whatever the scanner; ``scripts.intensity.NormalizeBrainIntensity`` uses it (results: docs/benchmarks.md).

    python benchmarks/intensity_reference.py --num_subjects 20
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from monai.transforms import AdjustContrast, GaussianSmooth, RandBiasField

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # `python benchmarks/<name>.py` from anywhere: the bundle's scripts
# isort: split

from scripts.demo_data import generate_subject  # noqa: E402
from scripts.intensity import brain_intensity_range, brain_threshold  # noqa: E402

# the demo splits' subject indices (configs/train.json: 80 train, 20 val, 20 test, 20 test_shifted)
VAL_FIRST_INDEX = 81


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
    print(f"\ncommand: python benchmarks/intensity_reference.py --num_subjects {args.num_subjects}")


if __name__ == "__main__":
    main()
