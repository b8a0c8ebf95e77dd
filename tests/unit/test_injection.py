"""The injection math on every architecture in the table, against an independent reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from rosi_vllm.core.architectures import Layout, SandwichNormPolicy
from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.fingerprint import fingerprint_checkpoint
from rosi_vllm.core.injection import inject, rank_one_delta, unit_direction
from rosi_vllm.core.injection_plan import build_plan
from rosi_vllm.testing.tiny_models import TINY_FAMILIES
from tests.reference import expected_names, reference_tensor

ALPHA = 12.5


def _plan(model_dir, direction_path, **kwargs):
    return build_plan(
        load_direction(direction_path),
        model_shape(model_dir),
        checkpoint_fingerprint=fingerprint_checkpoint(model_dir),
        alpha=ALPHA,
        **kwargs,
    )


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_residual_writer_edited_exactly_as_reference(family, tiny_model, direction_for):
    model_dir = tiny_model(family, dtype=torch.float32, with_tokenizer=False)
    direction_path = direction_for(model_dir)
    extra = {"sandwich_norm": SandwichNormPolicy.THROUGH_NORM} if family == "gemma2" else {}
    plan = _plan(model_dir, direction_path, **extra)
    original = load_file(str(model_dir / "model.safetensors"))
    run = plan.start()
    edited = dict(plan.apply(original.items(), run=run))

    expected = expected_names(family, model_shape(model_dir).num_layers)
    changed = {n for n in original if not torch.equal(original[n], edited[n])}
    assert changed == set(expected), f"edited {sorted(changed ^ set(expected))} unexpectedly"
    assert run.stats.total == len(expected)
    direction = load_direction(direction_path).direction
    for name, layout in expected.items():
        ref = reference_tensor(original[name], layout, direction, ALPHA)
        torch.testing.assert_close(edited[name].double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "phi3"])
def test_edited_module_adds_alpha_wbar_x_along_direction(family, tiny_model, direction_for):
    """Through the real transformers module: output gains exactly α (w̄·x) ŝ."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model(family, dtype=torch.float32, with_tokenizer=False)
    direction_path = direction_for(model_dir)
    plan = _plan(model_dir, direction_path)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    state = model.state_dict()
    s_hat = unit_direction(load_direction(direction_path).direction).double()
    checked = 0
    for name in expected_names(family, model.config.num_hidden_layers):
        module = model.get_submodule(name.rsplit(".", 1)[0])
        # transformers' Conv1D (GPT-2) computes x @ W; nn.Linear computes x @ W.T.
        is_conv1d = type(module).__name__ == "Conv1D"
        effective = (module.weight.T if is_conv1d else module.weight).detach().double().clone()
        x = torch.randn(3, effective.shape[1])
        with torch.no_grad():
            before = module(x).double()
            module.weight.copy_(plan.start().edit(name, state[name].clone()))
            after = module(x).double()
        expected_delta = ALPHA * (x.double() @ effective.mean(0))[:, None] * s_hat[None, :]
        torch.testing.assert_close(after - before, expected_delta, rtol=1e-4, atol=1e-4)
        checked += 1
    assert checked == 2 * model.config.num_hidden_layers


def test_embedding_target_transposed_layout(tiny_model, direction_for):
    model_dir = tiny_model("llama", dtype=torch.float32, with_tokenizer=False)
    plan = _plan(model_dir, direction_for(model_dir), targets=("attn_out", "mlp_out", "embed"))
    tensors = load_file(str(model_dir / "model.safetensors"))
    emb = tensors["model.embed_tokens.weight"]
    edited = plan.start().edit("model.embed_tokens.weight", emb)
    s_hat = plan.unit_dir.double()
    # Each token row gains α · mean(row) · ŝ.
    expected = emb.double() + ALPHA * emb.double().mean(dim=1, keepdim=True) * s_hat[None, :]
    torch.testing.assert_close(edited.double(), expected, rtol=1e-5, atol=1e-5)


def test_embedding_refused_when_tied(tiny_model, direction_for):
    model_dir = tiny_model("llama", tie_word_embeddings=True, with_tokenizer=False)
    with pytest.raises(RosiError, match="tied word embeddings"):
        _plan(model_dir, direction_for(model_dir), targets=("embed",))


def test_sandwich_norm_refused_by_default(tiny_model, direction_for):
    model_dir = tiny_model("gemma2", with_tokenizer=False)
    with pytest.raises(RosiError, match="sandwich norms"):
        _plan(model_dir, direction_for(model_dir))


def test_bf16_single_rounding(tiny_model):
    torch.manual_seed(0)
    w = torch.randn(128, 64).to(torch.bfloat16)
    s = unit_direction(torch.randn(128))
    out = inject(w, s, 3.0, Layout.OUT_IN)
    assert out.dtype == torch.bfloat16
    exact = w.float() + rank_one_delta(w, s, 3.0, Layout.OUT_IN)
    assert torch.equal(out, exact.to(torch.bfloat16))


def test_quantized_tensor_refused():
    with pytest.raises(RosiError, match="pre-quantized"):
        inject(torch.zeros(4, 4, dtype=torch.int8), unit_direction(torch.ones(4)), 1.0, Layout.OUT_IN)


def test_partial_stream_fails_closed(tiny_model, direction_for):
    """A stream missing one layer's writer (e.g. renamed tensors) must not pass."""
    model_dir = tiny_model("llama", dtype=torch.float32, with_tokenizer=False)
    plan = _plan(model_dir, direction_for(model_dir))
    tensors = load_file(str(model_dir / "model.safetensors"))
    stream = [(n, t) for n, t in tensors.items() if n != "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(RosiError, match="missing \\[1\\]"):
        list(plan.apply(stream))




def test_a_reused_plan_still_fails_closed_on_an_incomplete_second_stream(tiny_model, direction_for):
    """Each pass has its own counts: a complete first stream does not vouch for a partial second one."""
    model_dir = tiny_model("llama", dtype=torch.float32, with_tokenizer=False)
    plan = _plan(model_dir, direction_for(model_dir))
    tensors = load_file(str(model_dir / "model.safetensors"))
    first = plan.start()
    list(plan.apply(tensors.items(), run=first))
    assert first.stats.total == 4
    partial = [(n, t) for n, t in tensors.items() if n != "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(RosiError, match="missing \\[1\\]"):
        list(plan.apply(partial))
    assert first.stats.total == 4  # the first pass's record is its own
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.alpha = 1.0

def test_pipeline_stage_edits_only_the_layers_it_keeps(tiny_model, direction_for):
    """A stage passes other stages' writers on untouched, and still requires every layer in the stream."""
    model_dir = tiny_model("llama", dtype=torch.float32, with_tokenizer=False)
    tensors = load_file(str(model_dir / "model.safetensors"))
    full = dict(_plan(model_dir, direction_for(model_dir)).apply(tensors.items()))
    plan = _plan(model_dir, direction_for(model_dir))
    run = plan.start()
    stage = dict(plan.apply(tensors.items(), kept=lambda name: not name.startswith("model.layers.1."), run=run))
    for name, tensor in tensors.items():
        expected = tensor if name.startswith("model.layers.1.") else full[name]
        assert torch.equal(stage[name], expected), name
    assert run.stats.total == 2 and run.stats.left_to_other_stages == 2
    assert "(+2 in other pipeline stages' layers, edited there)" in run.summary()
    partial = [(n, t) for n, t in tensors.items() if n != "model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(RosiError, match="missing \\[1\\]"):
        list(_plan(model_dir, direction_for(model_dir)).apply(partial, kept=lambda name: "layers.1." not in name))

def test_no_target_matched_fails_closed(tiny_model, direction_for):
    model_dir = tiny_model("llama", dtype=torch.float32, with_tokenizer=False)
    plan = _plan(model_dir, direction_for(model_dir))
    renamed = [(n.replace("self_attn", "attention"), t) for n, t in load_file(str(model_dir / "model.safetensors")).items()]
    with pytest.raises(RosiError, match="no checkpoint tensor matched target 'attn_out'"):
        list(plan.apply(renamed))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_alpha_zero_leaves_every_tensor_bit_identical(dtype, tiny_model, direction_for):
    """The canary recipe's base deployment runs the rosi loader at α = 0 and claims bit-identical weights."""
    model_dir = tiny_model("llama", dtype=dtype, with_tokenizer=False)
    plan = build_plan(load_direction(direction_for(model_dir)), model_shape(model_dir),
                      checkpoint_fingerprint=fingerprint_checkpoint(model_dir), alpha=0.0)
    original = load_file(str(model_dir / "model.safetensors"))
    run = plan.start()
    edited = dict(plan.apply(original.items(), run=run))
    assert run.stats.total == 4  # the loader still edits (α = 0) every writer
    for name, tensor in original.items():
        assert edited[name].dtype == tensor.dtype and torch.equal(edited[name], tensor), name
