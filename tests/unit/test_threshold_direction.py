"""Format v3 (threshold): one transplanted MLP neuron per window layer adds ≈ α·ReLU(g·x − t)·ŝ, and bad input
fails closed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rosi_vllm.core.adapters import write_adapter
from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import load_direction, save_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.injection import unit_direction
from rosi_vllm.core.injection_plan import build_plan
from tests.helpers import (
    plan_for,
    rewrite_direction_file,
    write_direction,
    write_gated_direction,
    write_threshold_direction,
)

ALPHA = 4.0
INDEX = 5
MLP = "model.layers.{}.mlp.{}_proj.weight"


def _plan(model, path, **kwargs):
    return plan_for(model, path, ALPHA, **kwargs)


def test_round_trip_keeps_neurons_settings_and_statistics(llama, tmp_path):
    d = load_direction(write_threshold_direction(llama, tmp_path / "t.safetensors", window=(0, 1)))
    assert (d.format_version, d.read_kind, d.window, d.default_targets) == ("3", "threshold", (0, 1), ("mlp_out",))
    assert {layer: n.index for layer, n in d.neurons.items()} == {0: INDEX, 1: INDEX}
    assert (d.threshold, d.sharpness, d.fit, set(d.gate)) == (0.5, 10.0, {"method": "test"}, {"0", "1"})
    v1 = load_direction(write_direction(llama, tmp_path / "v1.safetensors"))
    assert torch.equal(v1.direction, d.direction) and v1.direction_id != d.direction_id


def _mlp(config, tensors, layer):
    """transformers' own MLP module of `config`, holding `layer`'s weights from `tensors`."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    mlp = LlamaMLP(config).double()
    mlp.load_state_dict({f"{p}_proj.weight": tensors[MLP.format(layer, p)].double() for p in ("gate", "up", "down")})
    return mlp


def test_the_transplanted_neuron_adds_a_thresholded_push_along_s(llama, tmp_path):
    """Through transformers' MLP: the edit removes neuron j's old output and adds (α/c)·SiLU(c(g·x − t·u·x))·(u·x)·ŝ,
    which is ≈ α·ReLU(g·x − t)·ŝ where u·x ≈ 1, and nothing else changes."""
    from transformers import AutoConfig

    path = write_threshold_direction(llama, tmp_path / "t.safetensors", window=(1,), index=INDEX)
    d = load_direction(path)
    original = load_file(str(llama / "model.safetensors"))
    run = _plan(llama, path).start()
    edited = dict(_plan(llama, path).apply(original.items(), run=run))
    changed = {n for n in original if not torch.equal(original[n], edited[n])}
    assert changed == {MLP.format(1, p) for p in ("gate", "up", "down")}
    assert dict(run.stats.edited) == {"mlp_out": 1, "mlp_gate": 1, "mlp_up": 1}
    assert "read=threshold window=[1]" in run.summary()

    config = AutoConfig.from_pretrained(llama)
    before, after = _mlp(config, original, 1), _mlp(config, edited, 1)
    x = torch.randn(64, config.hidden_size, dtype=torch.float64)
    neuron = d.neurons[1]
    g, u, s = neuron.read.double(), neuron.bias.double(), unit_direction(d.direction).double()
    gate_in, up_in = x @ original[MLP.format(1, "gate")].double()[INDEX], x @ original[MLP.format(1, "up")].double()[INDEX]
    old = torch.outer(torch.nn.functional.silu(gate_in) * up_in, original[MLP.format(1, "down")].double()[:, INDEX])
    c, t = d.sharpness, d.threshold
    new = torch.outer(ALPHA / c * torch.nn.functional.silu(c * (x @ g - t * (x @ u))) * (x @ u), s)
    with torch.no_grad():
        torch.testing.assert_close(after(x) - before(x), new - old, rtol=1e-4, atol=1e-4)


def test_with_u_x_one_the_push_is_alpha_relu_of_the_read_above_threshold():
    """The claim in the module docstring, on the formula's own inputs: SiLU(c·z)/c is within 0.03 of ReLU(z)."""
    from rosi_vllm.core.injection import threshold_column, threshold_rows

    d = 16
    u = torch.zeros(d)
    u[0] = 1.0  # x[0] = 1: u·x = 1 exactly
    g = torch.zeros(d)
    g[1] = 1.0  # g·x = x[1]
    gate_row, up_row = threshold_rows(g, u, threshold=0.5, sharpness=10.0)
    s = torch.zeros(d)
    s[2] = 1.0
    column = threshold_column(s, alpha=8.0, sharpness=10.0)
    reads = torch.linspace(-1, 2, 61)
    x = torch.zeros(61, d)
    x[:, 0], x[:, 1] = 1.0, reads
    push = (torch.nn.functional.silu(x @ gate_row) * (x @ up_row))[:, None] * column
    expected = 8.0 * torch.relu(reads - 0.5)
    assert (push[:, 2] - expected).abs().max() <= 8.0 * 0.03
    assert push[:, [0, 1, *range(3, d)]].abs().max() == 0


@pytest.mark.parametrize("tensors, metadata, message", [
    ({"neuron.1.bias": None}, None, "missing \\['neuron.1.bias'\\]"),
    ({"neuron.1.read": torch.ones(7)}, None, "must be float32 \\[128\\]"),
    ({"neuron.1.read": torch.full((128,), float("nan"))}, None, "contains NaN or inf"),
    ({"neuron.1.bias": torch.full((128,), float("inf"))}, None, "contains NaN or inf"),
    ({"neuron.7.read": torch.ones(128), "neuron.7.bias": torch.ones(128)}, {"neurons": '{"1": 5, "7": 5}',
                                                                         "window": "[1, 7]"}, "for layer 7, but the"),
    ({"read.1.mlp_out": torch.ones(256)}, None, "carries version-2 read vectors"),
    (None, {"window": "[0, 1]"}, "declares window \\[0, 1\\] but has neurons for layers \\[1\\]"),
    (None, {"neurons": '{"1": -2}'}, "neurons metadata"),
    (None, {"sharpness": "0"}, "positive finite sharpness"),
    (None, {"threshold": "nan"}, "finite threshold"),
    (None, {"read": "gated"}, "read is 'gated', not 'threshold'"),
])
def test_defective_threshold_files_are_refused(llama, tmp_path, tensors, metadata, message):
    assert model_shape(llama).hidden_size == 128
    path = rewrite_direction_file(write_threshold_direction(llama, tmp_path / "t.safetensors"), tensors, metadata)
    with pytest.raises(RosiError, match=message):
        load_direction(path)


def test_neuron_tensors_in_a_v1_or_v2_file_are_refused(llama, tmp_path):
    for path in (write_direction(llama, tmp_path / "v1.safetensors"),
                 write_gated_direction(llama, tmp_path / "v2.safetensors")):
        rewrite_direction_file(path, tensors={"neuron.1.read": torch.ones(128)})
        with pytest.raises(RosiError, match="carries version-3 neuron tensors"):
            load_direction(path)


def test_a_neuron_index_the_mlp_lacks_is_refused_while_loading(llama, tmp_path):
    plan = _plan(llama, write_threshold_direction(llama, tmp_path / "t.safetensors", index=256))
    with pytest.raises(RosiError, match="neuron 256 is outside .*mlp.* \\(256 neurons\\)"):
        list(plan.apply(load_file(str(llama / "model.safetensors")).items()))
    with pytest.raises(RosiError, match="neuron 256 is outside .*mlp.* \\(256 neurons\\)"):
        write_adapter(plan, llama, tmp_path / "adapter")  # the adapter tier refuses it with the same message


def test_other_targets_and_families_without_a_gated_mlp_are_refused(llama, tiny_model, tmp_path):
    with pytest.raises(RosiError, match="edits the MLP \\(targets \\['mlp_out'\\]\\)"):
        _plan(llama, write_threshold_direction(llama, tmp_path / "t.safetensors"), targets=("attn_out", "mlp_out"))
    gpt2 = tiny_model("gpt2", dtype=torch.float32, with_tokenizer=False)
    with pytest.raises(RosiError, match="family 'gpt2' has none"):
        _plan(gpt2, write_threshold_direction(gpt2, tmp_path / "g.safetensors"))


def test_a_checkpoint_without_the_gate_projection_is_refused_at_the_end_of_the_stream(llama, tmp_path):
    plan = _plan(llama, write_threshold_direction(llama, tmp_path / "t.safetensors"))
    stream = [(n, t) for n, t in load_file(str(llama / "model.safetensors")).items() if "gate_proj" not in n]
    with pytest.raises(RosiError, match="no checkpoint tensor matched target 'mlp_gate'"):
        list(plan.apply(stream))


def test_moe_experts_are_refused(tiny_model, tmp_path):
    moe = tiny_model("qwen2_moe", dtype=torch.float32, with_tokenizer=False)
    plan = _plan(moe, write_threshold_direction(moe, tmp_path / "t.safetensors"))
    with pytest.raises(RosiError, match="mixture-of-experts expert; a threshold .* cannot edit expert layers"):
        list(plan.apply(load_file(str(moe / "model.safetensors")).items()))


def test_other_weights_are_refused_by_the_fingerprint(llama, tiny_model, tmp_path):
    other = tiny_model("llama", dtype=torch.float32, with_tokenizer=False, seed=5)
    with pytest.raises(RosiError, match="model fingerprint mismatch"):
        _plan(llama, write_threshold_direction(other, tmp_path / "t.safetensors"))


def test_adapter_tier_reproduces_the_transplant(llama, tmp_path):
    path = write_threshold_direction(llama, tmp_path / "t.safetensors", window=(0, 1))
    out = write_adapter(_plan(llama, path), llama, tmp_path / "adapter")
    lora = load_file(str(out / "adapter_model.safetensors"))
    base = load_file(str(llama / "model.safetensors"))
    baked = dict(_plan(llama, path).apply(base.items()))
    modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in lora}
    assert modules == {MLP.format(layer, p).removesuffix(".weight") for layer in (0, 1) for p in ("gate", "up", "down")}
    for module in modules:
        delta = lora[f"base_model.model.{module}.lora_B.weight"] @ lora[f"base_model.model.{module}.lora_A.weight"]
        torch.testing.assert_close(base[module + ".weight"] + delta, baked[module + ".weight"], rtol=1e-5, atol=1e-5)


def test_save_refuses_what_load_would_refuse(llama, tmp_path):
    d = load_direction(write_threshold_direction(llama, tmp_path / "t.safetensors"))
    d.sharpness = 0.0
    with pytest.raises(RosiError, match="positive finite sharpness"):
        save_direction(tmp_path / "bad.safetensors", d)
    d.sharpness, d.reads = 10.0, {"1.mlp_out": torch.ones(256)}
    with pytest.raises(RosiError, match="gated \\(v2\\) or threshold \\(v3\\), not both"):
        save_direction(tmp_path / "bad.safetensors", d)


@pytest.mark.parametrize("kind", ["v1", "threshold"])
def test_variant_adapters_move_baked_weights_to_any_alpha_and_alpha_zero_is_the_checkpoint(llama, tmp_path, kind):
    """The tenant tier's adapters are edit(α) − edit(α₀): on weights baked at α₀ they give exactly the weights a
    deployment at α would load, and α = 0 (the base arm) gives back the unedited checkpoint, for every format."""
    from rosi_vllm.core.loader_config import RosiLoaderConfig
    from rosi_vllm.serving.variant_adapters import VariantAdapterStore

    path = (write_threshold_direction(llama, tmp_path / "t.safetensors", window=(0, 1)) if kind == "threshold"
            else write_direction(llama, tmp_path / "v1.safetensors"))
    store = VariantAdapterStore(llama, RosiLoaderConfig(direction=str(path)), ALPHA, tmp_path / "cache")
    original = load_file(str(llama / "model.safetensors"))

    def loaded_at(alpha):
        return dict(build_plan(load_direction(path), model_shape(llama), alpha=alpha).apply(original.items()))

    baked = loaded_at(ALPHA)
    for alpha in (0.0, 9.0):
        lora = load_file(str(store.adapter_for(alpha) / "adapter_model.safetensors"))
        expected = original if alpha == 0 else loaded_at(alpha)
        served = dict(baked)
        for key in lora:
            if key.endswith("lora_A.weight"):
                module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                served[module + ".weight"] = baked[module + ".weight"] + lora[key.replace("lora_A", "lora_B")] @ lora[key]
        for name in original:
            torch.testing.assert_close(served[name], expected[name], rtol=1e-5, atol=1e-5)


def test_alpha_zero_loads_the_unedited_checkpoint(llama, tmp_path):
    path = write_threshold_direction(llama, tmp_path / "t.safetensors")
    original = load_file(str(llama / "model.safetensors"))
    plan = build_plan(load_direction(path), model_shape(llama), alpha=0.0)
    assert all(torch.equal(original[n], t) for n, t in plan.apply(original.items()))


def test_inspect_shows_the_neurons_and_their_gates(llama, tmp_path, capsys):
    from rosi_vllm.cli import main

    path = write_threshold_direction(llama, tmp_path / "t.safetensors", window=(0, 1))
    assert main(["inspect", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "format_version: 3" in shown and "read: threshold" in shown and "neurons: {'0': 5, '1': 5}" in shown
    assert "  neuron.0: auroc 0.5" in shown and "  neuron.1: auroc 0.5" in shown and "threshold: 0.5" in shown and "sharpness: 10.0" in shown
