"""Helpers shared by the tests: the bundle's network at test sizes and runners for ``python -m monai.bundle``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]

# tiny overrides shared by the end-to-end tests: small networks, few steps, few images
TINY_NET = [
    "--network_def#hidden_channels",
    "16",
    "--network_def#num_sine_layers",
    "2",
    "--network_def#head_channels",
    "16",
]
# the U-Net baseline's features at test size (``--network_def#features``)
TINY_UNET_FEATURES = [4, 4, 4, 4, 4, 4]


def config_metaseg(**overrides: Any) -> torch.nn.Module:
    """The ``network_def`` of ``configs/inference.json`` (the shipped model's architecture), with ``overrides``."""
    from scripts.network import MetaSegINR

    config = json.loads((REPO_ROOT / "configs" / "inference.json").read_text())
    kwargs = {
        k: config[v[1:]] if isinstance(v, str) and v.startswith("@") else v
        for k, v in config["network_def"].items()
        if k != "_target_"
    }
    return MetaSegINR(**{**kwargs, **overrides})


def tiny_metaseg(**overrides: Any) -> torch.nn.Module:
    """:func:`config_metaseg` at the ``TINY_NET`` sizes (what the bundle builds with ``TINY_NET`` overrides)."""
    tiny = {k.lstrip("-").split("#")[-1]: int(v) for k, v in zip(TINY_NET[::2], TINY_NET[1::2])}
    return config_metaseg(**{**tiny, **overrides})


def save_tiny_metaseg(models_dir: Path) -> Path:
    """Random (untrained, seeded) weights of the ``TINY_NET`` MetaSeg as ``<models_dir>/model.pt``."""
    models_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(tiny_metaseg().state_dict(), models_dir / "model.pt")
    return models_dir / "model.pt"


def save_tiny_unet(models_dir: Path) -> Path:
    """Random (seeded) weights of a ``TINY_UNET_FEATURES`` U-Net as ``<models_dir>/unet.pt`` (the benchmarks take
    ``network_def#features`` set to match)."""
    from monai.networks.nets import BasicUNet

    models_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = BasicUNet(spatial_dims=2, in_channels=1, out_channels=5, features=tuple(TINY_UNET_FEATURES))
    torch.save(unet.state_dict(), models_dir / "unet.pt")
    return models_dir / "unet.pt"


def data_args(dataset_dir: Path, splits_file: Path, ckpt_dir: Path) -> list[str]:
    """Overrides pointing a workflow at a (tiny) dataset and checkpoint folder, with the tiny network."""
    return [
        "--dataset_dir",
        str(dataset_dir),
        "--splits_file",
        str(splits_file),
        "--ckpt_dir",
        str(ckpt_dir),
        *TINY_NET,
    ]


def bundle_env(**extra: str) -> dict[str, str]:
    """The environment of the tests' bundle runs: warnings off and one thread count for all of them (the caller's
    ``OMP_NUM_THREADS``, else 2), so runs compared bit for bit compute alike on any machine."""
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), **extra)


def run_bundle(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` in the repository root, as a user would."""
    env = bundle_env()
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"bundle command failed ({proc.returncode}): {args}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def run_inference_on_files(
    files: list[Path], output_dir: Path, ckpt_dir: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """``run inference`` on the user's own ``files`` (the README's command) with the tiny network of ``ckpt_dir``.

    ``dataset_dir`` points at the files' folder, so no demo data is generated.
    """
    return run_bundle(
        "run",
        "inference",
        "--config_file",
        "configs/inference.json",
        "--datalist",
        json.dumps([str(f) for f in files]),
        "--output_dir",
        str(output_dir),
        "--dataset_dir",
        str(Path(files[0]).parent),
        "--ckpt_dir",
        str(ckpt_dir),
        *TINY_NET,
        *args,
        check=check,
    )


# what a run may never touch: the bundle's weights, configs, data and docs, and its top-level files (eval/, the
# default output folder, is left to other runs; code folders are left out so that editing them while tests run is no
# failure)
_SNAPSHOT_FOLDERS = ("configs", "models", "data", "docs")


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (size, mtime_ns)`` of every file under ``folder`` (none if it does not exist)."""
    snapshot = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root) / name
            stat = path.lstat()
            snapshot[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return snapshot


def bundle_snapshot() -> dict[str, tuple[int, int]]:
    """:func:`folder_snapshot` of the bundle's weights, configs, data and docs, plus its top-level files."""
    snapshot = {p.name: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in REPO_ROOT.iterdir() if p.is_file()}
    for name in _SNAPSHOT_FOLDERS:
        snapshot.update({f"{name}/{k}": v for k, v in folder_snapshot(REPO_ROOT / name).items()})
    return snapshot
