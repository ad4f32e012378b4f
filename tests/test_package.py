"""The Model Zoo package: a zip of the bundle that runs whole once unpacked into an empty folder.

The zip is built once per module by the documented command and unpacked into an empty folder; every workflow below
runs there through ``python -m monai.bundle`` with only the unpacked ``scripts/`` importable and the training-only
packages of requirements.txt made unimportable, so what the zip and ``required_packages_version`` hold is enough.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.apps.utils import download_url

from tests.utils import REPO_ROOT
from tools.package_bundle import BUNDLE_NAME

PACKAGE_COMMAND = "python tools/package_bundle.py --output_dir dist"
# import names of the packages requirements.txt pins for training logs and the pictures only
TRAINING_ONLY_IMPORTS = {"tensorboard", "PIL"}
# folders and files of the source repository that the zip leaves out and that its docs may name (with a note saying so)
SOURCE_ONLY = ("benchmarks/", "tests/", "tools/", ".ci/", "requirements-dev.txt", "requirements-monailabel.txt")
# paths the docs name: bundle-relative files and folders, and relative markdown links
DOC_PATH = re.compile(
    r"(?<![\w/.-])((?:configs|scripts|docs|models|benchmarks|tests|tools|\.ci)/[\w.*<>/-]*\w"
    r"|requirements[\w-]*\.txt|large_files\.yml)"
)
DOC_LINK = re.compile(r"\]\(([^)#\s]+)\)")
BLOCK_OPTIONAL = """import sys


class _BlockOptional:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (optional package, blocked by the test)")
        return None


sys.meta_path.insert(0, _BlockOptional())
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path]:
    """``(zip path, unpacked bundle folder)``: the documented packaging command (output folder appended)."""
    tmp = tmp_path_factory.mktemp("package")
    cmd = [sys.executable, *shlex.split(PACKAGE_COMMAND)[1:], "--output_dir", str(tmp / "dist")]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    path = Path(proc.stdout.strip())
    (tmp / "unpacked").mkdir()
    with zipfile.ZipFile(path) as zf:
        zf.extractall(tmp / "unpacked")
    blocker = tmp / "block_optional"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_OPTIONAL.format(blocked=TRAINING_ONLY_IMPORTS))
    return path, tmp / "unpacked" / BUNDLE_NAME


def _large_files(text: str) -> list[dict[str, str]]:
    """The entries of a ``large_files.yml`` (flat ``key: "value"`` items; PyYAML is not a dependency)."""
    entries: list[dict[str, str]] = []
    for line in text.splitlines():
        match = re.match(r"^\s*(-\s*)?(\w+):\s*\"([^\"]*)\"\s*$", line)
        if match:
            if match.group(1):
                entries.append({})
            entries[-1][match.group(2)] = match.group(3)
    return entries


def _run_unpacked(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle <args>`` in the unpacked bundle, without the repository's code or optional packages."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=str(bundle.parents[1] / "block_optional"))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=bundle, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def _documented(bundle: Path, command_start: str) -> list[str]:
    """The one command of the unpacked ``docs/README.md`` that starts with ``command_start``, split as a shell would."""
    docs = (bundle / "docs" / "README.md").read_text().splitlines()
    lines = [line for line in docs if line.startswith(command_start)]
    assert len(lines) == 1, f"docs/README.md: expected one command starting with {command_start!r}"
    return shlex.split(lines[0])


def test_packaging_command_is_documented():
    # the model card holds every command; the top-level README points to its Commands section
    assert PACKAGE_COMMAND in (REPO_ROOT / "docs" / "README.md").read_text()
    assert "docs/README.md#commands" in (REPO_ROOT / "README.md").read_text()


def test_zip_is_named_and_laid_out_like_a_zoo_release(package):
    path, _ = package
    version = json.loads((REPO_ROOT / "configs" / "metadata.json").read_text())["version"]
    assert path.name == f"{BUNDLE_NAME}_v{version}.zip"
    names = zipfile.ZipFile(path).namelist()
    assert all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
    rel = {n.split("/", 1)[1] for n in names}
    for required in ["configs/metadata.json", "configs/inference.json", "configs/multi_gpu_evaluate.json"]:
        assert required in rel
    assert {"scripts/network.py", "scripts/inferer.py", "docs/README.md", "docs/meta_schema.json"} <= rel
    assert {"LICENSE", "large_files.yml", "requirements.txt", "models/model.pt", "models/unet.pt"} <= rel
    assert {"models/3d/model.pt", "models/3d/segresnet.pt", "models/model_train_time.json"} <= rel
    assert {"models/fast/model_train_time.json", "models/paper/model_train_time.json"} <= rel
    top = {n.split("/")[0] for n in rel}
    assert not top & {"tools", "tests", "benchmarks", ".ci", ".venv", ".venv-monailabel", "data", "eval", "dist"}
    assert not [n for n in rel if "__pycache__" in n or n.endswith((".pyc", ".ts", "meta_model.pt", ".tmp"))]
    assert not [n for n in rel if fnmatch.fnmatch(n.rsplit("/", 1)[-1], "checkpoint_*.pt")]


def test_large_files_are_shipped_and_accepted_by_monai_download_logic(package, tmp_path):
    """Each entry as MONAI's ``download_large_files`` (and the Model Zoo's copy of it) handles it: ``download_url``
    finds the shipped file, checks its hash and never reaches the empty ``url``; a missing or altered file fails."""
    _, bundle = package
    entries = _large_files((bundle / "large_files.yml").read_text())
    assert {e["path"] for e in entries} == {
        "models/model.pt",
        "models/fast/model.pt",
        "models/paper/model.pt",
        "models/unet.pt",
        "models/3d/model.pt",
        "models/3d/segresnet.pt",
    }
    for entry in entries:
        args = {k: v for k, v in entry.items() if k != "path" and not (k.startswith("hash") and v == "")}
        assert args["hash_type"] == "sha256" and len(args["hash_val"]) == 64
        download_url(filepath=str(bundle / entry["path"]), **args)  # raises unless present with this hash
        digest = hashlib.sha256((REPO_ROOT / entry["path"]).read_bytes()).hexdigest()
        assert digest == entry["hash_val"], f"large_files.yml: stale hash of {entry['path']}"
    first = {k: v for k, v in entries[0].items() if k != "path"}
    altered = tmp_path / "model.pt"
    altered.write_bytes((bundle / entries[0]["path"]).read_bytes()[:-1])
    with pytest.raises(ValueError, match="hash check of existing file failed"):
        download_url(filepath=str(altered), **first)
    with pytest.raises(ValueError, match="unknown url type"):  # why no file is listed without shipping it
        download_url(filepath=str(tmp_path / "absent.pt"), **first)


def test_docs_in_the_zip_name_only_files_it_holds(package):
    """A path the zipped docs name is in the zip, a generated (git-ignored) output, or a file of the source
    repository that the same document says is not in the zip."""
    _, bundle = package
    shipped = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*")}
    for doc in sorted((bundle / "docs").glob("*.md")):
        text = doc.read_text()
        prose = " ".join(text.split())
        refs = set(DOC_PATH.findall(text))
        refs |= {os.path.normpath(f"docs/{link}") for link in DOC_LINK.findall(text) if "://" not in link}
        for ref in sorted(refs):
            if fnmatch.filter(shipped, ref.rstrip("/")):
                continue
            if subprocess.run(["git", "check-ignore", "-q", ref], cwd=REPO_ROOT).returncode == 0:
                continue  # an output a workflow writes (models/model.ts, models/meta_model.pt)
            source = next((s for s in SOURCE_ONLY if ref.startswith(s)), None)
            assert source is not None, f"{doc.name} names {ref}, which the zip lacks"
            assert (REPO_ROOT / ref.split("*")[0].split("<")[0]).exists(), f"{doc.name} names {ref}, which is absent"
            assert (
                "source repository" in prose and f"`{source}`" in prose
            ), f"{doc.name}: say that {source} is not in the zip"


def test_unpacked_zip_runs_inference_and_evaluation(package, tiny_dataset, tmp_path):
    _, bundle = package
    dataset_dir, splits = tiny_dataset
    data = ["--dataset_dir", str(dataset_dir), "--splits_file", str(splits), "--fit_steps", "1"]
    image = sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0]
    out = tmp_path / "out"
    _run_unpacked(
        bundle,
        "run",
        "inference",
        "--config_file",
        "configs/inference.json",
        "--datalist",
        f"['{image}']",
        "--output_dir",
        str(out),
        *data,
    )
    seg = nib.load(out / image.parent.name / "slice_norm_seg.nii.gz")
    served = json.loads((bundle / "configs" / "metadata.json").read_text())["network_data_format"]
    served = served["post_processed_outputs"]["pred"]
    assert seg.get_data_dtype() == np.dtype(served["dtype"]) and seg.shape == nib.load(image).shape
    labels = np.unique(np.asarray(seg.dataobj))
    assert served["value_range"][0] <= labels.min() and labels.max() <= served["value_range"][1]

    evaluate = "['configs/inference.json','configs/evaluate.json']"
    _run_unpacked(bundle, "run", "evaluating", "--config_file", evaluate, "--output_dir", str(tmp_path / "eval"), *data)
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and summary["metrics"]["mean_dice"] > 0.3
    assert not (bundle / "data").exists()  # the tiny dataset was used, no demo data generated inside the package


def test_unpacked_zip_evaluates_the_unet_baseline(package, tiny_dataset, tmp_path):
    """The shipped ``models/unet.pt`` through the model card's U-Net evaluation command, on the tiny test split."""
    _, bundle = package
    dataset_dir, splits = tiny_dataset
    _run_unpacked(
        bundle,
        "run",
        "evaluating",
        "--config_file",
        "['configs/train.json','configs/train_unet.json','configs/evaluate_unet.json']",
        "--dataset_dir",
        str(dataset_dir),
        "--splits_file",
        str(splits),
        "--output_dir",
        str(tmp_path / "unet"),
    )
    summary = json.loads((tmp_path / "unet" / "metrics_summary.json").read_text())
    assert summary["num_images"] == 2 and summary["metrics"]["mean_dice"] > 0.5


def test_unpacked_zip_verifies_its_metadata_offline(package):
    """The documented ``verify_metadata`` command, as written, reads the schema copy shipped in ``docs/``."""
    _, bundle = package
    cmd = _documented(bundle, "python -m monai.bundle verify_metadata")
    assert cmd[cmd.index("--filepath") + 1] == "docs/meta_schema.json"
    proc = _run_unpacked(bundle, *cmd[3:])
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_unpacked_zip_verifies_network_input_and_output(package):
    _, bundle = package
    proc = _run_unpacked(bundle, *_documented(bundle, "python -m monai.bundle verify_net_in_out")[3:])
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr
