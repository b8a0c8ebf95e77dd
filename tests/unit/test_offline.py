"""`rosi inject` writes a hardened checkpoint identical to the reference edit."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.fingerprint import fingerprint_checkpoint
from rosi_vllm.core.offline import MANIFEST, inject_checkpoint
from tests.reference import expected_names, reference_tensor


def test_cli_inject_matches_reference(tiny_model, direction_for, tmp_path):
    model = tiny_model("llama")
    direction = direction_for(model, alpha=6.0)
    out = tmp_path / "hardened"
    run = subprocess.run(
        [sys.executable, "-m", "rosi_vllm.cli", "inject", "--model", str(model), "--direction", str(direction),
         "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "edited 4 matrices" in run.stdout
    src, dst = load_file(str(model / "model.safetensors")), load_file(str(out / "model.safetensors"))
    expected = expected_names("llama", 2)
    vec = load_direction(direction).direction
    for name in src:
        if name in expected:
            ref = reference_tensor(src[name], expected[name], vec, 6.0).to(torch.bfloat16)
            # float32 vs float64 before the bf16 cast: at most one bf16 ulp apart.
            torch.testing.assert_close(dst[name].float(), ref.float(), rtol=2 ** -7, atol=1e-6)
            assert not torch.equal(dst[name], src[name])
        else:
            assert torch.equal(dst[name], src[name])
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["alpha"] == 6.0 and manifest["source_fingerprint"] == fingerprint_checkpoint(model)
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    assert fingerprint_checkpoint(out) != fingerprint_checkpoint(model)


def test_failed_inject_leaves_nothing(tiny_model, direction_for, tmp_path):
    model = tiny_model("llama")
    other = tiny_model("llama", seed=3)
    direction = direction_for(other)  # fingerprint of a different model
    out = tmp_path / "hardened"
    with pytest.raises(RosiError, match="fingerprint mismatch"):
        inject_checkpoint(model, direction, out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rosi-inject-")]
