"""Build the Model Zoo package of this bundle: ``<output_dir>/<name>_v<version>.zip`` holding ``<name>/...``.

Usage, from the bundle root: ``python tools/package_bundle.py [--output_dir dist] [--name NAME]``.
The zip has the layout of the Model Zoo's release assets: one top folder named after the bundle with ``configs/``,
``scripts/``, ``docs/`` (with the metadata schema copy ``docs/meta_schema.json``), ``LICENSE``, ``requirements.txt``,
``large_files.yml`` and every weight file it lists (the Model Zoo's release zips hold their large files too), so each
config in the zip runs from it. Developer tools (``tools/``), benchmarks, tests, CI files, virtualenvs, data, outputs,
caches and training by-products (``meta_model.pt``, resume checkpoints, TorchScript files) are left out.
"""

from __future__ import annotations

import argparse
import json
import re
import zipfile
from pathlib import Path

BUNDLE_NAME = "metaseg_brain_mri_segmentation"
BUNDLE_ROOT = Path(__file__).resolve().parents[1]
# (path relative to the bundle root, glob of files to ship inside it)
CONTENTS = [
    ("configs", "*.json"),
    ("configs", "*.conf"),
    ("docs", "*"),
    ("scripts", "**/*.py"),
    ("scripts", "**/*.npz"),  # the demo data's vendored label maps (scripts/demo_data/label_maps.py reads them)
    ("models", "**/*_train_time.json"),  # every model folder's (default, fast, paper, 3d)
]
TOP_LEVEL_FILES = ["LICENSE", "large_files.yml", "requirements.txt"]
LARGE_FILES = "large_files.yml"
# weights are stored as they are: deflate saves under 10% on them and costs seconds per build; the label maps are
# LZMA-compressed already
STORED_SUFFIXES = (".pt", ".npz")

__all__ = ["BUNDLE_NAME", "bundle_files", "large_file_paths", "package_bundle"]


def large_file_paths(root: Path = BUNDLE_ROOT) -> list[Path]:
    """The ``path`` entries of ``<root>/large_files.yml`` (the shipped weights), relative to ``root``."""
    manifest = root / LARGE_FILES
    try:
        text = manifest.read_text()
    except OSError as e:
        raise FileNotFoundError(f"cannot package the bundle: {manifest} is not readable ({e})") from e
    paths = re.findall(r"^\s*-\s*path:\s*[\"']?([^\"'\s#]+)", text, re.M)
    if not paths:
        raise ValueError(f"{manifest} lists no `path:` entries under `large_files:`")
    return [Path(p) for p in paths]


def bundle_files(root: Path = BUNDLE_ROOT) -> list[Path]:
    """The files that make up the bundle package, relative to ``root``, sorted."""
    files = [Path(name) for name in TOP_LEVEL_FILES] + large_file_paths(root)
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
    files = bundle_files(root)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{name}_v{version}.zip"
    tmp = target.with_suffix(".zip.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                stored = rel.suffix in STORED_SUFFIXES
                zf.write(root / rel, f"{name}/{rel.as_posix()}", zipfile.ZIP_STORED if stored else None)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="dist", help="folder for the zip (default: dist)")
    parser.add_argument("--name", default=BUNDLE_NAME, help=f"bundle name (default: {BUNDLE_NAME})")
    args = parser.parse_args()
    print(package_bundle(args.output_dir, args.name))


if __name__ == "__main__":
    main()
