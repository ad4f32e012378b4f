"""Load benchmark: bundle inference over many slices in one run must hold memory flat (no growth per image).

Runs ``configs/inference.json`` (the ``inference`` workflow, shipped ``models/model.pt``) in this process over
``--num_images`` slices — copies of the demo test images, each in its own subject folder — and reads the process's
resident memory (``VmRSS``, and the peak ``VmHWM``, from ``/proc/self/status``) after every image. Prints the
readings at a few points and whether RSS grew between image ``--compare_from`` and the last one (maxima over
10-image windows, since single readings swing with the allocator).

    python -m benchmarks.inference_load --num_images 200 --fit_steps 2

Linux only (``/proc``). Exit status 1 when the growth exceeds ``--tolerance_mb``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def memory_mb() -> dict[str, float]:
    """Current (``VmRSS``) and peak (``VmHWM``) resident memory of this process in MiB."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values


class MemoryRecorder:
    """Ignite handler: memory after every iteration, as ``[(images done, VmRSS MiB, VmHWM MiB), ...]``."""

    def __init__(self) -> None:
        self.readings: list[tuple[int, float, float]] = []
        self._images = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        batch = engine.state.batch  # decollated by MONAI's evaluator: a list with one dict per image
        self._images += len(batch) if isinstance(batch, list) else int(batch["image"].shape[0])
        mem = memory_mb()
        self.readings.append((self._images, mem["VmRSS"], mem["VmHWM"]))


def make_datalist(work: Path, num_images: int, seed: int = 3) -> list[str]:
    """``num_images`` slice paths: copies of 20 generated demo test subjects, one subject folder per copy."""
    from scripts.demo_data import prepare_demo_data

    demo = work / "demo"
    splits = json.loads(Path(prepare_demo_data(str(demo), num_train=0, num_val=0, num_test=20, seed=seed)).read_text())
    sources = [demo / entry["img"] for entry in splits["test"]]
    paths = []
    for i in range(num_images):
        folder = work / "inputs" / f"copy{i:04d}"
        folder.mkdir(parents=True)
        shutil.copy(sources[i % len(sources)], folder / "slice_norm.nii.gz")
        paths.append(str(folder / "slice_norm.nii.gz"))
    return paths


def run(num_images: int, fit_steps: int, ckpt_dir: str, work: Path) -> MemoryRecorder:
    """Run the bundle's inference workflow over ``num_images`` slices with a :class:`MemoryRecorder` attached."""
    from monai.bundle import ConfigWorkflow

    datalist = make_datalist(work, num_images)
    workflow = ConfigWorkflow(
        config_file=str(REPO_ROOT / "configs" / "inference.json"),
        meta_file=str(REPO_ROOT / "configs" / "metadata.json"),
        logging_file=str(REPO_ROOT / "configs" / "logging.conf"),
        workflow_type="infer",
        bundle_root=str(REPO_ROOT),
        dataset_dir=str(work / "demo"),
        splits_file=str(work / "demo" / "demo_splits.json"),
        datalist=datalist,
        output_dir=str(work / "out"),
        ckpt_dir=ckpt_dir,
        fit_steps=fit_steps,
    )
    workflow.initialize()
    recorder = MemoryRecorder()
    recorder.attach(workflow.parser.get_parsed_content("evaluator"))
    workflow.run()
    workflow.finalize()
    written = len(list((work / "out").glob("*/*_seg.nii.gz")))
    if written != num_images:
        raise RuntimeError(f"expected {num_images} label maps, found {written}")
    return recorder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--fit_steps", type=int, default=2)
    parser.add_argument("--ckpt_dir", default=str(REPO_ROOT / "models"))
    parser.add_argument("--compare_from", type=int, default=50, help="image after which RSS is the baseline")
    parser.add_argument("--window", type=int, default=10, help="images per window whose max RSS is compared")
    parser.add_argument("--tolerance_mb", type=float, default=50.0, help="allowed RSS growth after --compare_from")
    parser.add_argument("--json", default=None, help="also write the readings to this JSON file")
    args = parser.parse_args()
    if not args.window <= args.compare_from < args.num_images:
        parser.error("need --window <= --compare_from < --num_images")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="metaseg-load-") as tmp:
        recorder = run(args.num_images, args.fit_steps, args.ckpt_dir, Path(tmp))
    seconds = time.perf_counter() - start
    readings = {n: (rss, hwm) for n, rss, hwm in recorder.readings}
    marks = sorted({1, 10, args.compare_from, *range(50, args.num_images + 1, 50), args.num_images})
    print(f"{'images':>7} {'VmRSS MiB':>10} {'VmHWM MiB':>10}")
    for n in marks:
        if n in readings:
            print(f"{n:>7} {readings[n][0]:>10.1f} {readings[n][1]:>10.1f}")
    # single RSS readings swing by a few hundred MiB with the allocator; compare the maxima of 10-image windows
    w = args.window

    def window_max(end: int) -> float:
        return max(readings[n][0] for n in range(max(1, end - w + 1), end + 1))

    base, last = window_max(args.compare_from), window_max(args.num_images)
    growth = last - base
    hwm_growth = readings[args.num_images][1] - readings[args.compare_from][1]
    verdict = "FLAT" if growth <= args.tolerance_mb else "GROWING"
    print(
        f"max RSS over images {args.compare_from - w + 1}-{args.compare_from}: {base:.1f} MiB; over images "
        f"{args.num_images - w + 1}-{args.num_images}: {last:.1f} MiB; growth {growth:+.1f} MiB "
        f"({growth * 1024 / (args.num_images - args.compare_from):+.1f} KiB/image); peak (VmHWM) "
        f"{readings[args.compare_from][1]:.1f} -> {readings[args.num_images][1]:.1f} MiB ({hwm_growth:+.1f}) -> "
        f"{verdict} (tolerance {args.tolerance_mb:.0f} MiB); {args.num_images} images in {seconds:.0f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "seconds": seconds, "readings": recorder.readings}, f)
    return 0 if verdict == "FLAT" else 1


if __name__ == "__main__":
    sys.exit(main())
