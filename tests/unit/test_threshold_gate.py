"""The threshold-gate feasibility benchmark's edit: one MLP neuron transplanted, and the model restored exactly."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.threshold_gate import SHARPNESS, Neuron, fit_bias, parse_configs, transplanted
from rosi_vllm.extraction.extract import load_hf_model
from rosi_vllm.testing.tiny_models import build_tiny_model


def test_transplanted_neuron_adds_the_thresholded_push_and_the_model_comes_back_bit_for_bit(tmp_path):
    loaded = load_hf_model(build_tiny_model("llama", tmp_path / "tiny"))
    mlp = loaded.model.get_submodule("model.layers.1.mlp")
    gen = torch.Generator().manual_seed(0)
    d, j, alpha, t = mlp.gate_proj.in_features, 3, 4.0, 0.5
    g, u, write, x = (torch.randn(d, generator=gen), torch.randn(d, generator=gen), torch.randn(d, generator=gen),
                      torch.randn(6, d, generator=gen))
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    with torch.no_grad():
        unedited = mlp(x)
        removed = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))[:, j:j + 1] * mlp.down_proj.weight[:, j]
        with transplanted(loaded, [Neuron(1, j, g, u)], write, alpha, t):
            edited = mlp(x)
    z = SHARPNESS * (x @ g - t * (x @ u))
    added = (alpha / SHARPNESS) * (F.silu(z) * (x @ u))[:, None] * (write / write.norm())
    assert torch.allclose(edited - unedited, added - removed, atol=1e-4)
    assert not torch.allclose(edited, unedited, atol=1e-3)  # the edit did something
    after = loaded.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_bias_direction_reads_one_on_inputs_that_share_a_common_component():
    gen = torch.Generator().manual_seed(1)
    common = 5 * torch.randn(32, generator=gen)
    rows = common + 0.2 * torch.randn(400, 32, generator=gen)
    u = fit_bias(rows[:300])
    held_out = rows[300:] @ u
    assert abs(float(held_out.mean()) - 1) < 0.02 and float(held_out.std()) < 0.05


def test_configs_parse_layers_alpha_and_threshold():
    assert parse_configs("11,12:32:0.5; 12:48:0.25+2;") == [
        {"layers": [11, 12], "alpha": 32.0, "threshold": 0.5, "linear_alpha": None},
        {"layers": [12], "alpha": 48.0, "threshold": 0.25, "linear_alpha": 2.0}]
