"""Build the Model Zoo package of this bundle: ``<output_dir>/<name>_v<version>.zip`` holding ``<name>/...``.

Usage, from the bundle root: ``python scripts/package_bundle.py [--output_dir dist] [--name NAME]``.
The zip has the layout of the Model Zoo's release assets: one top folder named after the bundle with ``configs/``,
``models/model.pt``, ``scripts/``, ``docs/``, ``LICENSE`` and ``large_files.yml``; tests, virtualenvs, data, outputs,
caches and training by-products (``meta_model.pt``, TorchScript files) are left out.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

BUNDLE_NAME = "metaseg_brain_mri_segmentation"
BUNDLE_ROOT = Path(__file__).resolve().parents[1]
# (path relative to the bundle root, glob of files to ship inside it)
CONTENTS = [
    ("configs", "*.json"),
    ("configs", "*.conf"),
    ("docs", "*"),
    ("scripts", "*.py"),
    ("models", "model.pt"),
]
TOP_LEVEL_FILES = ["LICENSE", "large_files.yml", "requirements.txt"]

__all__ = ["BUNDLE_NAME", "bundle_files", "package_bundle"]


def bundle_files(root: Path = BUNDLE_ROOT) -> list[Path]:
    """The files that make up the bundle package, relative to ``root``, sorted."""
    files = [Path(name) for name in TOP_LEVEL_FILES]
    for folder, pattern in CONTENTS:
        files += [p.relative_to(root) for p in (root / folder).glob(pattern) if p.is_file()]
    missing = [str(f) for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"cannot package the bundle in {root}: missing {missing}")
    return sorted(set(files))


def package_bundle(output_dir: str | Path = "dist", name: str = BUNDLE_NAME, root: Path = BUNDLE_ROOT) -> Path:
    """Write ``<output_dir>/<name>_v<version>.zip`` (version from ``configs/metadata.json``) and return its path."""
    meta_path = root / "configs" / "metadata.json"
    try:
        version = json.loads(meta_path.read_text())["version"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the bundle version from {meta_path}: {e}") from e
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name}_v{version}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in bundle_files(root):
            zf.write(root / rel, f"{name}/{rel.as_posix()}")
    tmp.replace(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="dist", help="folder for the zip (default: dist)")
    parser.add_argument("--name", default=BUNDLE_NAME, help=f"bundle name (default: {BUNDLE_NAME})")
    args = parser.parse_args()
    print(package_bundle(args.output_dir, args.name))


if __name__ == "__main__":
    main()
