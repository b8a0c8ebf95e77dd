"""fp1 identifies the weights: stable, shard-independent, and changed by a fine-tune."""

from __future__ import annotations

import shutil

import torch
from safetensors.torch import load_file, save_file

from rosi_vllm.core.fingerprint import fingerprint_checkpoint


def test_stable_and_formatted(tiny_model):
    model = tiny_model("llama")
    fp = fingerprint_checkpoint(model)
    assert fp.startswith("fp1:") and len(fp) == 4 + 32
    assert fingerprint_checkpoint(model) == fp


def test_resharding_keeps_fingerprint(tiny_model, tmp_path):
    model = tiny_model("llama")
    tensors = load_file(str(model / "model.safetensors"))
    names = sorted(tensors)
    out = tmp_path / "resharded"
    out.mkdir()
    shutil.copy(model / "config.json", out)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, str(out / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[half:]}, str(out / "model-00002-of-00002.safetensors"))
    assert fingerprint_checkpoint(out) == fingerprint_checkpoint(model)


def test_fine_tune_changes_fingerprint(tiny_model, tmp_path):
    """A small update to one matrix (what a fine-tune or merged LoRA does) is detected."""
    model = tiny_model("llama")
    tensors = load_file(str(model / "model.safetensors"))
    name = "model.layers.1.mlp.down_proj.weight"
    torch.manual_seed(0)
    lora = (torch.randn(tensors[name].shape[0], 4) @ torch.randn(4, tensors[name].shape[1])) * 1e-3
    tensors[name] = (tensors[name].float() + lora).to(tensors[name].dtype)
    out = tmp_path / "finetuned"
    shutil.copytree(model, out)
    save_file(tensors, str(out / "model.safetensors"))
    assert fingerprint_checkpoint(out) != fingerprint_checkpoint(model)


def test_other_seed_same_architecture_differs(tiny_model):
    assert fingerprint_checkpoint(tiny_model("llama")) != fingerprint_checkpoint(tiny_model("llama", seed=7))
