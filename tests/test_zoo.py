"""Model Zoo conformance, offline: metadata schema, network I/O check, TorchScript export, large-file hash, pins."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import pytest
import torch

from scripts.intensity import NormalizeBrainIntensityd
from scripts.segmenter import MetaSegSegmenter
from tests.utils import REPO_ROOT, config_metaseg, run_bundle, tiny_metaseg

META = "configs/metadata.json"
SCHEMA = REPO_ROOT / "docs" / "meta_schema.json"  # meta_schema_20240725.json of MONAI-extra-test-data 0.8.1
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"


def _requirement_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s#]+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_schema_copy_is_the_referenced_file():
    metadata = json.loads((REPO_ROOT / META).read_text())
    assert metadata["schema"].endswith("/0.8.1/meta_schema_20240725.json")
    assert hashlib.md5(SCHEMA.read_bytes()).hexdigest() == SCHEMA_MD5


def test_metadata_validates_against_the_zoo_schema():
    proc = run_bundle("verify_metadata", "--meta_file", META, "--filepath", str(SCHEMA), "--hash_val", SCHEMA_MD5)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_schema_check_rejects_incomplete_metadata(tmp_path):
    metadata = json.loads((REPO_ROOT / META).read_text())
    del metadata["network_data_format"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(metadata))
    proc = run_bundle("verify_metadata", "--meta_file", str(bad), "--filepath", str(SCHEMA), check=False)
    assert proc.returncode != 0 and "network_data_format" in proc.stderr


def test_metadata_versions_are_the_pinned_requirements():
    metadata = json.loads((REPO_ROOT / META).read_text())
    pins = _requirement_pins(REPO_ROOT / "requirements.txt")
    assert metadata["monai_version"] == pins["monai"]
    assert metadata["pytorch_version"] == pins["torch"]
    assert metadata["numpy_version"] == pins["numpy"]
    required = metadata["required_packages_version"]
    # training logs and PNG pictures: pinned in requirements.txt, not needed to segment or evaluate (the unpacked-zip
    # test in test_package.py runs both with these unimportable); jsonschema and PyYAML serve the zoo's verify and
    # download commands. nilearn is required: the default workflows read the demo data, made from its template
    not_required = {"tensorboard", "pillow", "jsonschema", "pyyaml"}
    assert required == {k: v for k, v in pins.items() if k not in {"monai", "torch", "numpy", *not_required}}
    # MONAI 1.6 reads optional_packages_version as a deprecated name of required_packages_version and replaces the
    # latter with it (ReferenceResolver, DEPRECATED_ID_MAPPING): a metadata file with both would lose its requirements
    assert "optional_packages_version" not in metadata
    assert metadata["version"] in metadata["changelog"]
    assert "Fit Pixels, Get Labels" in metadata["references"][0]
    assert metadata["eval_metrics"]["mean_dice"] > 0.7


def test_network_data_format_is_the_image_to_label_contract():
    fmt = json.loads((REPO_ROOT / META).read_text())["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    assert image["num_channels"] == 1 and len(image["spatial_shape"]) == 2
    assert pred["num_channels"] == 5 and pred["channel_def"]["0"] == "background"
    net = MetaSegSegmenter(tiny_metaseg())
    with torch.no_grad():
        out = net(torch.rand(1, image["num_channels"], 24, 20))
    assert out.shape == (1, pred["num_channels"], 24, 20)


def test_shipped_logits_lie_in_the_stated_value_range(tiny_dataset):
    """``outputs.pred`` are class logits (unbounded): the stated range holds the shipped model's on demo images."""
    low, high = json.loads((REPO_ROOT / META).read_text())["network_data_format"]["outputs"]["pred"]["value_range"]
    dataset_dir, _ = tiny_dataset
    image = nib.load(sorted(dataset_dir.glob("*/slice_norm.nii.gz"))[0])
    raw = torch.as_tensor(image.get_fdata()[None, ..., 0], dtype=torch.float32)  # a 160x192x1 neurite-oasis slice
    normalized = torch.as_tensor(NormalizeBrainIntensityd("image")({"image": raw})["image"])
    padded = torch.nn.functional.pad(normalized, (0, 0, 16, 16))[None]  # 160x192 -> 192x192, as the configs pad
    net = config_metaseg()
    net.load_state_dict(torch.load(REPO_ROOT / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        logits = MetaSegSegmenter(net)(padded)  # fit-then-decode: network_data_format's image contract
    assert logits.shape[1] == 5 and low <= float(logits.min()) < float(logits.max()) <= high


def test_verify_net_in_out():
    proc = run_bundle("verify_net_in_out", "segmenter", "--meta_file", META, "--config_file", "configs/inference.json")
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr


def test_verify_net_in_out_catches_a_wrong_contract():
    proc = run_bundle(
        "verify_net_in_out",
        "segmenter",
        "--meta_file",
        META,
        "--config_file",
        "configs/inference.json",
        "--_meta_#network_data_format#outputs#pred#num_channels",
        "4",
        check=False,
    )
    assert proc.returncode != 0 and "doesn't match" in proc.stderr


def test_ckpt_export_gives_torchscript_equal_to_eager(tmp_path):
    ts = tmp_path / "model.ts"
    run_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(ts),
        "--ckpt_file",
        "models/model.pt",
        "--meta_file",
        META,
        "--config_file",
        "configs/inference.json",
    )
    extra = {"metadata.json": "", "inference.json": ""}
    scripted = torch.jit.load(str(ts), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads((REPO_ROOT / META).read_text())["version"]
    eager = config_metaseg()
    eager.load_state_dict(torch.load(REPO_ROOT / "models" / "model.pt", weights_only=True))
    eager.eval()
    coords = torch.rand(2, 500, 2) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scripted(coords), eager(coords), rtol=0, atol=0)
        assert not torch.allclose(scripted(coords), config_metaseg()(coords))  # weights came from model.pt


@pytest.mark.parametrize("path", ["models/model.pt", "models/unet.pt", "models/3d/model.pt", "models/3d/segresnet.pt"])
def test_large_files_hash_matches_the_shipped_weights(path):
    text = (REPO_ROOT / "large_files.yml").read_text()
    entry = re.search(rf'path:\s*"{path}".*?hash_val:\s*"([0-9a-f]+)".*?hash_type:\s*"(\w+)"', text, re.S)
    assert entry is not None, f"large_files.yml has no {path} entry with hash_val and hash_type"
    assert entry.group(2) == "sha256"
    assert hashlib.sha256((REPO_ROOT / path).read_bytes()).hexdigest() == entry.group(1)


@pytest.mark.parametrize(
    "path", ["models/model.ts", ".venv-monailabel/bin/python", "dist/x.zip", "monailabel_app/studies/.lock"]
)
def test_generated_files_are_git_ignored(path):
    proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO_ROOT)
    assert proc.returncode == 0, f"{path} is not ignored by .gitignore"
