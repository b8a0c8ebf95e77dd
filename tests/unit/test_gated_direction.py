"""Format v2 (gated): read vectors h replace w̄ in ``W + α·ŝ·hᵀ`` for the window's writers, and bad input fails closed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rosi_vllm.core.adapters import write_adapter
from rosi_vllm.core.direction_file import load_direction, save_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.injection import unit_direction
from tests.helpers import gated_reads, plan_for, rewrite_direction_file, write_direction, write_gated_direction

ALPHA = 4.0


def _plan(model, path, **kwargs):
    return plan_for(model, path, ALPHA, **kwargs)


def test_round_trip_keeps_read_vectors_window_and_statistics(llama, tmp_path):
    path = write_gated_direction(llama, tmp_path / "g.safetensors", window=(1,))
    d = load_direction(path)
    assert d.format_version == "2" and d.gated and d.window == (1,)
    assert set(d.reads) == {"1.attn_out", "1.mlp_out"} and d.default_targets == ("attn_out", "mlp_out")
    assert d.fit == {"method": "test"} and set(d.gate) == set(d.reads)
    v1 = load_direction(write_direction(llama, tmp_path / "v1.safetensors"))
    assert v1.format_version == "1" and not v1.gated and torch.equal(v1.direction, d.direction)
    assert v1.direction_id != d.direction_id  # the id covers the read vectors too


def test_window_writers_get_h_and_the_others_are_untouched(llama, tmp_path):
    direction = load_direction(write_gated_direction(llama, tmp_path / "g.safetensors", window=(1,)))
    plan = _plan(llama, tmp_path / "g.safetensors")
    original = load_file(str(llama / "model.safetensors"))
    run = plan.start()
    edited = dict(plan.apply(original.items(), run=run))
    s_hat = unit_direction(direction.direction).double()
    for name, key in (("model.layers.1.self_attn.o_proj.weight", "1.attn_out"),
                      ("model.layers.1.mlp.down_proj.weight", "1.mlp_out")):
        expected = original[name].double() + ALPHA * torch.outer(s_hat, direction.reads[key].double())
        torch.testing.assert_close(edited[name].double(), expected, rtol=1e-5, atol=1e-5)
    unchanged = [n for n in original if not n.startswith(("model.layers.1.self_attn.o_proj",
                                                          "model.layers.1.mlp.down_proj"))]
    assert all(torch.equal(original[n], edited[n]) for n in unchanged)
    assert run.stats.total == 2 and run.stats.outside_window == 2
    assert "read=gated window=[1]" in run.summary()


def test_one_target_direction_edits_only_that_target_by_default(llama, tmp_path):
    reads = {k: v for k, v in gated_reads(llama, (0, 1)).items() if k.endswith("mlp_out")}
    plan = _plan(llama, write_gated_direction(llama, tmp_path / "g.safetensors", window=(0, 1), reads=reads))
    assert plan.targets == ("mlp_out",)
    run = plan.start()
    list(plan.apply(load_file(str(llama / "model.safetensors")).items(), run=run))
    assert dict(run.stats.edited) == {"mlp_out": 2}
    with pytest.raises(RosiError, match="no read vector for 2 writer"):
        _plan(llama, tmp_path / "g.safetensors", targets=("attn_out", "mlp_out"))


def test_a_writer_in_the_window_without_its_read_vector_is_refused(llama, tmp_path):
    reads = gated_reads(llama, (0, 1))
    del reads["1.attn_out"]
    with pytest.raises(RosiError, match="no read vector for 1 writer.*read.1.attn_out"):
        _plan(llama, write_gated_direction(llama, tmp_path / "g.safetensors", window=(0, 1), reads=reads))


def test_a_read_vector_of_the_wrong_length_is_refused_while_loading(llama, tmp_path):
    reads = gated_reads(llama, (1,))
    reads["1.mlp_out"] = reads["1.mlp_out"][:-3]
    plan = _plan(llama, write_gated_direction(llama, tmp_path / "g.safetensors", reads=reads))
    with pytest.raises(RosiError, match="read vector .*down_proj.* elements, the writer's input has"):
        list(plan.apply(load_file(str(llama / "model.safetensors")).items()))
    from rosi_vllm.core.adapters import writer_read_vectors

    with pytest.raises(RosiError, match="read vector .*down_proj.* elements, the writer's input has"):
        writer_read_vectors(plan, llama)  # the adapter tier refuses it with the same message


@pytest.mark.parametrize("edit, message", [
    (lambda r: {"read.1.mlp_out": torch.full_like(r["1.mlp_out"], float("nan"))}, "contains NaN or inf"),
    (lambda r: {"read.1.mlp_out": torch.full_like(r["1.mlp_out"], float("inf"))}, "contains NaN or inf"),
    (lambda r: {"read.7.mlp_out": r["1.mlp_out"]}, "for layer 7, but the model has 2 layers"),
    (lambda r: {"read.1.o_proj": r["1.mlp_out"]}, "malformed read vector name 'read.1.o_proj'"),
    (lambda r: {"read.1.mlp_out": r["1.mlp_out"].half()}, "must be a 1-D float32 tensor"),
    (lambda r: {"stray": r["1.mlp_out"]}, "unexpected tensors \\['stray'\\]"),
])
def test_defective_read_vectors_are_refused(llama, tmp_path, edit, message):
    path = write_gated_direction(llama, tmp_path / "g.safetensors")
    rewrite_direction_file(path, tensors=edit(load_direction(path).reads))
    with pytest.raises(RosiError, match=message):
        load_direction(path)


def test_mixing_v1_and_v2_is_refused(llama, tmp_path):
    v1 = write_direction(llama, tmp_path / "v1.safetensors")
    rewrite_direction_file(v1, tensors={"read.1.mlp_out": torch.ones(8)})
    with pytest.raises(RosiError, match="format_version 1 but carries version-2/3 keys \\['read.1.mlp_out'\\]"):
        load_direction(v1)
    v2 = write_gated_direction(llama, tmp_path / "v2.safetensors")
    rewrite_direction_file(v2, metadata={"window": "[0, 1]"})
    with pytest.raises(RosiError, match="declares window \\[0, 1\\] but has read vectors for layers \\[1\\]"):
        load_direction(v2)
    rewrite_direction_file(v2, metadata={"read": "mean", "window": "[1]"})
    with pytest.raises(RosiError, match="read is 'mean', not 'gated'"):
        load_direction(v2)


def test_read_vectors_for_other_weights_are_refused_by_the_fingerprint(llama, tiny_model, tmp_path):
    other = tiny_model("llama", dtype=torch.float32, with_tokenizer=False, seed=5)
    path = write_gated_direction(other, tmp_path / "g.safetensors")
    with pytest.raises(RosiError, match="model fingerprint mismatch"):
        _plan(llama, path)


def test_embed_is_refused_in_gated_mode(llama, tmp_path):
    with pytest.raises(RosiError, match="target 'embed' has no read vector"):
        _plan(llama, write_gated_direction(llama, tmp_path / "g.safetensors"), targets=("attn_out", "mlp_out", "embed"))


def test_moe_experts_need_a_read_vector_each(tiny_model, tmp_path):
    moe = tiny_model("qwen2_moe", dtype=torch.float32, with_tokenizer=False)
    full = gated_reads(moe, (1,))
    assert any(".expert." in k for k in full)
    plan = _plan(moe, write_gated_direction(moe, tmp_path / "full.safetensors", reads=full))
    run = plan.start()
    list(plan.apply(load_file(str(moe / "model.safetensors")).items(), run=run))
    assert run.stats.edited["mlp_out"] == sum(1 for k in full if k.startswith("1.mlp_out"))
    missing = dict(full)
    del missing[next(k for k in full if ".expert." in k)]
    plan = _plan(moe, write_gated_direction(moe, tmp_path / "missing.safetensors", reads=missing))
    with pytest.raises(RosiError, match="mixture-of-experts writer: gated mode needs a read vector for every expert"):
        list(plan.apply(load_file(str(moe / "model.safetensors")).items()))


def test_adapter_tier_uses_h_as_lora_a(llama, tmp_path):
    path = write_gated_direction(llama, tmp_path / "g.safetensors", window=(1,))
    out = write_adapter(_plan(llama, path), llama, tmp_path / "adapter")
    lora = load_file(str(out / "adapter_model.safetensors"))
    base = load_file(str(llama / "model.safetensors"))
    baked = dict(_plan(llama, path).apply(base.items()))
    modules = {k.split(".lora_")[0].removeprefix("base_model.model.") for k in lora}
    assert modules == {"model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"}
    for module in modules:
        delta = (lora[f"base_model.model.{module}.lora_B.weight"] @ lora[f"base_model.model.{module}.lora_A.weight"])
        torch.testing.assert_close(base[module + ".weight"] + delta, baked[module + ".weight"], rtol=1e-5, atol=1e-5)


def test_save_refuses_what_load_would_refuse(llama, tmp_path):
    d = load_direction(write_gated_direction(llama, tmp_path / "g.safetensors"))
    d.reads["1.mlp_out"] = torch.full_like(d.reads["1.mlp_out"], float("nan"))
    with pytest.raises(RosiError, match="NaN or inf"):
        save_direction(tmp_path / "bad.safetensors", d)
