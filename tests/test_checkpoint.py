"""Checked, weights-only checkpoint loading; RNG state round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.checkpoint import RNGState, architecture_of, load_network_checked, read_checkpoint
from scripts.network import MetaSegINR

TINY = dict(hidden_channels=16, num_sine_layers=2, head_channels=16)


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "saved,phrase",
    [
        (dict(num_classes=25), "was trained with num_classes=25 but the config has num_classes=5"),
        (dict(hidden_channels=32), "was trained with hidden_channels=32 but the config has hidden_channels=16"),
        (dict(num_sine_layers=3), "was trained with num_sine_layers=3 but the config has num_sine_layers=2"),
    ],
)
def test_architecture_mismatch_names_file_and_hyperparameter(saved, phrase, tmp_path):
    path = _save(tmp_path / "model.pt", MetaSegINR(**{**TINY, **saved}).state_dict())
    with pytest.raises(ValueError) as e:
        load_network_checked(MetaSegINR(**TINY), str(path))
    assert f"{path} {phrase}" in str(e.value)


def test_mismatch_lists_tensors_and_shapes(tmp_path):
    path = _save(tmp_path / "model.pt", MetaSegINR(**TINY, num_classes=25).state_dict())
    with pytest.raises(ValueError, match=r"head\.2\.weight: checkpoint \(25, 16\) vs network \(5, 16\)"):
        load_network_checked(MetaSegINR(**TINY), str(path))


def test_matching_state_dict_and_full_checkpoint_load(tmp_path):
    src = MetaSegINR(**TINY)
    for obj in (src.state_dict(), {"model": src.state_dict(), "trainer": {"iteration": 3}}):
        net = load_network_checked(MetaSegINR(**TINY), str(_save(tmp_path / "m.pt", obj)))
        assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), src.state_dict().values()))
    assert architecture_of(src.state_dict()) == {
        "num_sine_layers": 2,
        "spatial_dims": 2,
        "hidden_channels": 16,
        "out_channels": 1,
        "head_channels": 16,
        "head_layers": 1,
        "num_classes": 5,
        "context_radius": 0,
        "grid_head_channels": None,
    }
    context = MetaSegINR(**TINY, head_layers=2, num_classes=3, context_radius=1, context_grid=(8, 8))
    found = architecture_of(context.state_dict())
    assert (found["head_layers"], found["num_classes"], found["context_radius"]) == (2, 3, 1)
    assert architecture_of(MetaSegINR(**TINY, grid_head_channels=6).state_dict())["grid_head_channels"] == 6


class NotWeights:
    pass


def test_unreadable_checkpoints_name_the_file(tmp_path):
    full = _save(tmp_path / "full.pt", MetaSegINR(**TINY).state_dict())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(full.read_bytes()[:1000])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    pickled = _save(tmp_path / "pickled.pt", {"model": NotWeights()})
    with pytest.raises(FileNotFoundError, match=f"checkpoint not found: {tmp_path / 'missing.pt'}"):
        read_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match=f"{empty}: the checkpoint file is empty"):
        read_checkpoint(str(empty))
    with pytest.raises(ValueError, match=f"{truncated}: cannot read the checkpoint"):
        read_checkpoint(str(truncated))
    with pytest.raises(ValueError, match=f"{pickled}: refused to load: the file is not a weights-only checkpoint"):
        read_checkpoint(str(pickled))


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    state = RNGState()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = _save(tmp_path / "rng.pt", state.state_dict())
    first = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    state.load_state_dict(torch.load(path, weights_only=True))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2] and torch.equal(first[2], again[2])
