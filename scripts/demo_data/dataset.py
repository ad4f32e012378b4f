"""The demo dataset on disk: subjects in the neurite-oasis layout, splits, a manifest, written once and checked."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.utils import optional_import

from .anatomy import AFFINE, AFFINE_3D, SEG4_LABELS, SLICE_INDEX
from .synthesis import generate_subject, warm_up

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "DEMO_SUBJECT_FMT",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "MANIFEST_NAME",
    "SPLITS_NAME",
    "prepare_demo_data",
    "dataset_folder",
]

DEMO_SUBJECT_FMT = "OASIS_OAS1_{:04d}_MR1"
GENERATOR_NAME = "metaseg-demo-data"
# 1.1: 3D labels corrected outside the 2D band; 2.0: neurite-oasis intensity convention (FreeSurfer norm/255), non-brain
# rim, age-dependent atrophy, asymmetry, and a ``test_shifted`` split; 2.1: 3D deformation and bias fields evaluated
# separably (3x faster; equal to 2.0 up to rounding, the same arrays in every subject checked but not guaranteed), 2D
# subjects unchanged bit for bit; 2.2: 2D slices stored as neurite-oasis stores them (160x192x1, identity affine,
# readable by ITK), the same arrays
GENERATOR_VERSION = "2.2"
MANIFEST_NAME = "demo_manifest.json"
SPLITS_NAME = {2: "demo_splits.json", 3: "demo_splits_3d.json"}
_WORKER_MEMORY = 3 * 2**30  # peak memory of one process generating 3D subjects, with room to spare
logger = logging.getLogger(__name__)


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(arr, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_data_dtype(arr.dtype)
    nib.save(img, str(path))


def _manifest_params(
    num_train: int, num_val: int, num_test: int, num_test_shifted: int, seed: int, spatial_dims: int
) -> dict:
    return {
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_test_shifted": num_test_shifted,
        "seed": seed,
        "spatial_dims": spatial_dims,
    }


def _read_manifest(dataset_dir: Path) -> dict | None:
    try:
        with open(dataset_dir / MANIFEST_NAME) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_NAME else None


def _is_complete(dataset_dir: Path, manifest: dict | None, params: dict) -> bool:
    """Whether ``manifest`` describes a complete dataset generated with ``params`` (or a 3D superset of it)."""
    if manifest is None or manifest.get("version") != GENERATOR_VERSION:
        return False
    old = manifest.get("params", {})
    same = all(old.get(k) == v for k, v in params.items() if k != "spatial_dims")
    if not same or old.get("spatial_dims", 0) < params["spatial_dims"]:
        return False
    return all((dataset_dir / f).is_file() for f in manifest.get("files", []))


def _foreign_entries(dataset_dir: Path, manifest: dict) -> list[str]:
    """Top-level entries of ``dataset_dir`` that the generator run described by ``manifest`` did not write."""
    ours = {MANIFEST_NAME} | {Path(f).parts[0] for f in manifest.get("files", [])}
    return sorted(set(os.listdir(dataset_dir)) - ours)


def _foreign_hint(dataset_dir: Path, foreign: list[str]) -> str:
    """How to get rid of ``foreign`` entries of ``dataset_dir`` (and where MONAI Label's come from)."""
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    hint = f"dataset_dir {dataset_dir} holds files the demo-data generator did not write ({shown})"
    if {".lock", "labels", "datastore_v2.json"} & set(foreign):
        hint += (
            "; .lock, labels/ and datastore_v2.json are what MONAI Label writes into its studies folder: serve the "
            f"demo images with tools/serve_monailabel.sh --studies {dataset_dir}, which only reads it"
        )
    return hint + f". Move them out of {dataset_dir} or delete them."


def _check_not_foreign(dataset_dir: Path, manifest: dict | None) -> None:
    """Refuse to (re)generate into a non-empty directory whose content was not all written by this generator."""
    if not dataset_dir.exists():
        return
    if not dataset_dir.is_dir():
        raise ValueError(f"demo dataset_dir {dataset_dir} exists and is not a directory")
    if not os.listdir(dataset_dir):
        return
    if manifest is None:
        raise ValueError(
            f"dataset_dir {dataset_dir} is not empty and was not created by the demo-data generator (no valid "
            f"{MANIFEST_NAME}); refusing to overwrite it. Point dataset_dir at an empty or new folder, or use the "
            "real neurite-oasis data there with the demo data disabled."
        )
    foreign = _foreign_entries(dataset_dir, manifest)
    if foreign:
        raise ValueError(
            _foreign_hint(dataset_dir, foreign)
            + " The demo data must be regenerated there; refusing until they are gone."
        )


def prepare_demo_data(
    dataset_dir: str,
    num_train: int = 80,
    num_val: int = 20,
    num_test: int = 20,
    seed: int = 0,
    spatial_dims: int = 2,
    overwrite: bool = False,
    num_test_shifted: int | None = None,
    num_workers: int | None = None,
) -> str:
    """Generate (or reuse, if already generated with the same parameters) the demo dataset.

    Returns the path of its splits JSON.
    Writes the neurite-oasis layout (``OASIS_OAS1_0001_MR1/slice_norm.nii.gz``, ``slice_seg4.nii.gz``, for 3D also
    ``aligned_norm.nii.gz`` / ``aligned_seg4.nii.gz``, plus ``subjects.txt``, ``seg4_labels.txt``) and a splits
    JSON (``demo_splits.json`` / ``demo_splits_3d.json``) with ``img``/``seg4`` paths relative to ``dataset_dir``:
    ``train``, ``val``, ``test`` and ``test_shifted`` (``num_test_shifted`` out-of-distribution subjects, as many as
    ``num_test`` by default; see ``_draw_params``). Generation happens in a temporary sibling directory that replaces
    ``dataset_dir`` only when complete; a non-empty ``dataset_dir`` not created by this generator is refused with
    ``ValueError``. Files another program left in a complete demo folder (e.g. MONAI Label's ``.lock`` and
    ``labels/``) are named in a warning and otherwise ignored; they are refused, named, only when the folder has to be
    regenerated.

    ``num_workers`` processes generate the subjects (``None``: one per CPU core, as memory allows, for 3D; 2D is
    serial); the files are the same for any number. Progress is shown (a tqdm bar if tqdm is installed, else a log
    line at most every 5 s) when generation takes more than a few seconds.
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    num_test_shifted = num_test if num_test_shifted is None else num_test_shifted
    counts = (int(num_train), int(num_val), int(num_test), int(num_test_shifted))
    if min(counts) < 0 or sum(counts) < 1:
        raise ValueError(f"subject counts must be >= 0 with at least one subject, got {counts}")
    params = _manifest_params(*counts, int(seed), int(spatial_dims))
    out = Path(dataset_dir).expanduser().absolute()
    splits_path = out / SPLITS_NAME[spatial_dims]
    manifest = _read_manifest(out)
    if not overwrite and _is_complete(out, manifest, params) and splits_path.is_file():
        foreign = _foreign_entries(out, manifest)
        if foreign:  # the demo data are intact and read by name: say so, and go on
            logger.warning(_foreign_hint(out, foreign) + " They are not used.")
        return str(splits_path)
    _check_not_foreign(out, manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        files = _write_dataset(tmp, params, num_workers=num_workers)
        with open(tmp / MANIFEST_NAME, "w") as f:  # manifest last: its presence marks a complete dataset
            manifest = {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "params": params, "files": files}
            json.dump(manifest, f, indent=1)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.replace(out, old / "data")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(splits_path)


def dataset_folder(dataset_dir: str, demo_dir: str, seed: int = 0, spatial_dims: int = 2) -> str:
    """``dataset_dir``, after generating the demo dataset into it when it is the demo folder (``demo_dir``).

    The configs' ``dataset_root`` calls this, and only the expressions that read the dataset's splits refer to it, so
    the demo data are made when a workflow reads them and never when it segments the user's own ``--datalist``.
    """
    if os.path.abspath(str(dataset_dir)) == os.path.abspath(str(demo_dir)):
        prepare_demo_data(str(demo_dir), seed=seed, spatial_dims=spatial_dims)
    return str(dataset_dir)


def _write_subject(root: str, name: str, seed: int, index: int, spatial_dims: int, shifted: bool) -> list[str]:
    """Generate subject ``index`` and write its files into ``root/name``; return their paths relative to ``root``."""
    folder = Path(root) / name
    folder.mkdir()
    img, seg = generate_subject(seed, index, spatial_dims, shifted=shifted)
    files = []
    if spatial_dims == 3:
        _save(folder / "aligned_norm.nii.gz", img, AFFINE_3D)
        _save(folder / "aligned_seg4.nii.gz", seg, AFFINE_3D)
        files += [f"{name}/aligned_norm.nii.gz", f"{name}/aligned_seg4.nii.gz"]
        img, seg = np.ascontiguousarray(img[:, :, SLICE_INDEX]), np.ascontiguousarray(seg[:, :, SLICE_INDEX])
    _save(folder / "slice_norm.nii.gz", img[..., None], AFFINE)  # 160x192x1, as neurite-oasis stores its slices
    _save(folder / "slice_seg4.nii.gz", seg[..., None], AFFINE)
    return files + [f"{name}/slice_norm.nii.gz", f"{name}/slice_seg4.nii.gz"]


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


class _Progress:
    """Subjects done out of ``total``: a tqdm bar when tqdm is installed (``use_tqdm``), else a log line through this
    module's logger at most every ``interval`` seconds. Nothing is shown before ``interval`` seconds have passed."""

    def __init__(self, total: int, label: str, interval: float = 5.0, use_tqdm: bool | None = None) -> None:
        self.total, self.label, self.interval = total, label, interval
        self.done, self.workers = 0, 1
        self.start = self.last = time.monotonic()
        use_tqdm = has_tqdm if use_tqdm is None else use_tqdm and has_tqdm
        self.bar = tqdm(total=total, desc=label, unit="subject", delay=interval) if use_tqdm else None

    def message(self) -> str:
        elapsed = time.monotonic() - self.start
        msg = f"{self.label}: {self.done}/{self.total} subjects, {_duration(elapsed)} elapsed"
        if self.workers <= self.done < self.total:  # once every worker has finished a subject
            msg += f", ~{_duration(elapsed / self.done * (self.total - self.done))} left"
        return msg

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.monotonic()
        if now - self.last >= self.interval or (self.done == self.total and now - self.start >= self.interval):
            self.last = now
            logger.info(self.message())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _default_workers(spatial_dims: int, num_subjects: int) -> int:
    """One process per usable CPU core for 3D (as memory allows); 2D subjects are fast enough in this process."""
    if spatial_dims == 2:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = cpus * _WORKER_MEMORY
    return max(1, min(cpus, num_subjects, memory // _WORKER_MEMORY))


def _write_subjects(
    root: Path, jobs: list[tuple], spatial_dims: int, num_workers: int | None, progress: _Progress
) -> list[str]:
    """Run ``_write_subject(str(root), *job)`` for each job, in ``num_workers`` processes; the files in job order."""
    workers = _default_workers(spatial_dims, len(jobs)) if num_workers is None else max(1, int(num_workers))
    workers = min(workers, len(jobs))
    progress.workers = workers
    logger.info(f"{progress.label}: generating {len(jobs)} subjects in {root} with {workers} process(es)")
    results: list[list[str]] = [[] for _ in jobs]
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = _write_subject(str(root), *job)
            progress.update()
        return [f for r in results for f in r]
    # spawn, not fork: the caller may hold threads (torch, CUDA) that a forked child must not inherit
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=warm_up) as pool:
        futures = {pool.submit(_write_subject, str(root), *job): i for i, job in enumerate(jobs)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                progress.update()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [f for r in results for f in r]


def _write_dataset(
    root: Path, params: dict, num_workers: int | None = None, progress_interval: float = 5.0
) -> list[str]:
    """Write all subjects, text files and splits into ``root``; return the written paths relative to ``root``."""
    n_train, n_val, n_test = params["num_train"], params["num_val"], params["num_test"]
    n_shifted = params["num_test_shifted"]
    n_regular = n_train + n_val + n_test
    subjects = [DEMO_SUBJECT_FMT.format(i) for i in range(1, n_regular + n_shifted + 1)]
    dims = params["spatial_dims"]
    jobs = [(name, params["seed"], index, dims, index > n_regular) for index, name in enumerate(subjects, start=1)]
    progress = _Progress(len(jobs), f"{dims}D demo data", interval=progress_interval)
    try:
        files = _write_subjects(root, jobs, dims, num_workers, progress)
    finally:
        progress.close()
    (root / "subjects.txt").write_text("".join(s + "\n" for s in subjects))
    lut = "".join("{:<4d}{:<30s}{:>4d}{:>4d}{:>4d}{:>4d}\n".format(*e) for e in SEG4_LABELS)
    (root / "seg4_labels.txt").write_text(lut)
    files += ["subjects.txt", "seg4_labels.txt"]
    groups = {
        "train": subjects[:n_train],
        "val": subjects[n_train : n_train + n_val],
        "test": subjects[n_train + n_val : n_regular],
        "test_shifted": subjects[n_regular:],
    }
    for dims in range(2, params["spatial_dims"] + 1):
        prefix = "slice" if dims == 2 else "aligned"
        splits = {
            k: [{"img": f"{s}/{prefix}_norm.nii.gz", "seg4": f"{s}/{prefix}_seg4.nii.gz"} for s in v]
            for k, v in groups.items()
        }
        with open(root / SPLITS_NAME[dims], "w") as f:
            json.dump(splits, f, indent=1)
        files.append(SPLITS_NAME[dims])
    return files
