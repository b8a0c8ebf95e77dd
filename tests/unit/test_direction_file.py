"""Direction file v1: round trip and every way a file can be refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from rosi_vllm.core.direction_file import DirectionFile, load_direction, save_direction
from rosi_vllm.core.errors import RosiError

META = {
    "format": "rosi-direction", "format_version": "1", "architecture": "LlamaForCausalLM",
    "hidden_size": "8", "num_layers": "2", "layer": "1", "recommended_alpha": "4.0",
    "model_fingerprint": "fp1:abc",
}


def _raw(tmp_path, vector, **meta_overrides):
    meta = {**META, **meta_overrides}
    meta = {k: v for k, v in meta.items() if v is not None}
    path = tmp_path / "d.safetensors"
    save_file({"direction": vector}, str(path), metadata=meta)
    return path


def test_round_trip_keeps_vector_and_metadata(tmp_path):
    vec = torch.randn(8)
    d = DirectionFile(vec, "LlamaForCausalLM", 8, 2, 1, 4.5, "fp1:abc", {"method": "test", "system_prompt": "be safe"})
    loaded = load_direction(save_direction(tmp_path / "x.safetensors", d))
    assert torch.equal(loaded.direction, vec)
    assert (loaded.architecture, loaded.hidden_size, loaded.num_layers, loaded.layer) == ("LlamaForCausalLM", 8, 2, 1)
    assert loaded.recommended_alpha == 4.5 and loaded.model_fingerprint == "fp1:abc"
    assert loaded.provenance == {"method": "test", "system_prompt": "be safe"}
    assert loaded.direction_id == d.direction_id and len(d.direction_id) == 12
    assert torch.allclose(loaded.unit.norm(), torch.tensor(1.0))


def test_unnormalised_vector_is_normalised_by_consumer(tmp_path):
    loaded = load_direction(_raw(tmp_path, torch.full((8,), 3.0)))
    assert torch.allclose(loaded.unit, torch.full((8,), 8 ** -0.5))


@pytest.mark.parametrize(
    "vector, overrides, message",
    [
        (torch.randn(8), {"format_version": "4"}, "format_version '4'; this rosi-vllm reads versions 1, 2, 3"),
        (torch.randn(8), {"format_version": "2", "read": "gated", "window": "[1]"}, "has no read vectors"),
        (torch.randn(8), {"read": "gated"}, "format_version 1 but carries version-2/3 keys \\['read'\\]"),
        (torch.randn(8), {"format": "other"}, "not a ROSI direction file"),
        (torch.randn(8), {"layer": None}, "lacks metadata \\['layer'\\]"),
        (torch.randn(8), {"hidden_size": "eight"}, "malformed numeric metadata"),
        (torch.tensor([float("nan")] + [1.0] * 7), {}, "NaN or inf"),
        (torch.tensor([float("inf")] + [1.0] * 7), {}, "NaN or inf"),
        (torch.zeros(8), {}, "zero norm"),
        (torch.randn(6), {}, "metadata says hidden_size=8"),
        (torch.randn(8).to(torch.float16), {}, "stores float32"),
    ],
)
def test_defects_refused(tmp_path, vector, overrides, message):
    with pytest.raises(RosiError, match=message):
        load_direction(_raw(tmp_path, vector, **overrides))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(RosiError, match="not found"):
        load_direction(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(RosiError, match="not a valid safetensors"):
        load_direction(bad)
    other = tmp_path / "other.safetensors"
    save_file({"vector": torch.randn(8)}, str(other), metadata=META)
    with pytest.raises(RosiError, match="no tensor 'direction'"):
        load_direction(other)


def test_save_refuses_invalid_vector(tmp_path):
    d = DirectionFile(torch.zeros(8), "LlamaForCausalLM", 8, 2, 1, 4.0, "fp1:abc")
    with pytest.raises(RosiError, match="zero norm"):
        save_direction(tmp_path / "z.safetensors", d)
    assert not (tmp_path / "z.safetensors").exists()
