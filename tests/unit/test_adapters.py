"""ROSI deltas exported as PEFT rank-1 LoRA adapters equal the baked edit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rosi_vllm.core.adapters import write_adapter
from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.fingerprint import fingerprint_checkpoint
from rosi_vllm.core.injection_plan import build_plan


def _plan(model, direction, alpha):
    return build_plan(load_direction(direction), model_shape(model), alpha=alpha,
                      checkpoint_fingerprint=fingerprint_checkpoint(model))


@pytest.mark.parametrize("family", ["llama", "qwen2_moe"])
def test_lora_b_times_a_is_the_rank_one_delta(family, tiny_model, direction_for, tmp_path):
    model = tiny_model(family, dtype=torch.float32, with_tokenizer=False)
    direction = direction_for(model)
    out = write_adapter(_plan(model, direction, 12.0), model, tmp_path / "adapter")
    lora = load_file(str(out / "adapter_model.safetensors"))
    base = load_file(str(model / "model.safetensors"))
    baked = dict(_plan(model, direction, 12.0).apply(base.items()))
    modules = {k.split(".lora_")[0] for k in lora}
    for module in modules:
        name = module.removeprefix("base_model.model.") + ".weight"
        delta = lora[f"{module}.lora_B.weight"] @ lora[f"{module}.lora_A.weight"]
        torch.testing.assert_close(base[name] + delta, baked[name], rtol=1e-5, atol=1e-5)
    changed = {n for n in base if not torch.equal(base[n], baked[n])}
    assert {m.removeprefix("base_model.model.") + ".weight" for m in modules} == changed
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 1 and config["lora_alpha"] == 1
    assert set(config["target_modules"]) == {"o_proj", "down_proj"}


def test_conv1d_layout_refused(tiny_model, direction_for, tmp_path):
    model = tiny_model("gpt2", with_tokenizer=False)
    with pytest.raises(RosiError, match="nn.Linear layouts only"):
        write_adapter(_plan(model, direction_for(model), 4.0), model, tmp_path / "a")
