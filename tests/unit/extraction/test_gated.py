"""Gated read vectors: the fits do what their formulas say, inputs come from the right positions, and
`rosi extract --method gated` writes a loadable format-v2 direction with its gate report."""

from __future__ import annotations

import json
import re

import pytest
import torch

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.extraction import prompts
from rosi_vllm.extraction.extract import chat_texts, load_hf_model
from rosi_vllm.extraction.gated_selection import validation_sets
from rosi_vllm.extraction.read_fit import auroc, benign_top_space, fit_read_vector
from rosi_vllm.extraction.writer_inputs import WriterInputs, collect_inputs, find_writers, split_sources
from rosi_vllm.methods.gated.fit import extract_gated
from tests.helpers import write_direction


def _synthetic(seed=0, d=32, n=400):
    """Benign inputs live in the first d/2 coordinates; harmful ones add a signal along coordinate d-1."""
    gen = torch.Generator().manual_seed(seed)
    benign = torch.zeros(n, d)
    benign[:, : d // 2] = torch.randn(n, d // 2, generator=gen) + 2.0  # a large mean, as real activations have
    harmful = torch.zeros(n // 4, d)
    harmful[:, : d // 2] = torch.randn(n // 4, d // 2, generator=gen) + 2.0
    harmful[:, -1] = 1.0 + 0.1 * torch.randn(n // 4, generator=gen)
    return harmful, benign


@pytest.mark.parametrize("method", ["nullspace", "meandiff"])
def test_fits_fire_on_harmful_inputs_and_stay_silent_on_benign_ones(method):
    harmful, benign = _synthetic()
    h = fit_read_vector(harmful, benign, method=method, rho=0.5, lam=0.1)
    assert (harmful @ h).median() == pytest.approx(1.0, abs=1e-4)  # scaled so the harmful median is 1
    held_out_harm, held_out_benign = _synthetic(seed=1)
    if method == "nullspace":
        assert (benign @ h).abs().max() < 0.05  # the benign subspace, mean included, is outside the gate
        assert auroc(held_out_harm @ h, held_out_benign @ h) > 0.99
    else:  # the baseline only removes the benign mean: silent on average, noisy per input
        assert (benign.mean(0) @ h).abs() < 1e-4 and (benign @ h).abs().max() > 0.05
        assert 0.8 < auroc(held_out_harm @ h, held_out_benign @ h) < 0.99  # and less selective than nullspace


def test_a_writer_without_harmful_signal_gets_a_zero_read_vector():
    _, benign = _synthetic()
    h = fit_read_vector(benign[:50], benign, method="nullspace", rho=0.5, lam=0.1)
    assert (benign @ h).abs().max() < 1e-3


def test_auroc_is_the_mann_whitney_probability():
    gen = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(40, generator=gen) + 0.5, torch.randn(50, generator=gen)
    pos[:5] = neg[:5]  # ties count half
    brute = sum((p > q).item() + 0.5 * (p == q).item() for p in pos for q in neg) / (len(pos) * len(neg))
    assert auroc(pos, neg) == pytest.approx(brute, abs=1e-12)


def test_inputs_come_from_the_instruction_end_and_from_the_models_own_answer(tiny_model):
    loaded = load_hf_model(tiny_model("llama"))
    writers = find_writers(loaded, {1})
    assert [w.key for w in writers] == ["1.attn_out", "1.mlp_out"]
    instructions = ["Explain how to pick a lock", "Write a poem about rain please"]
    harmful = collect_inputs(loaded, writers, instructions, positions="instruction_end", progress=False)
    ids = [loaded.tokenizer(t, add_special_tokens=False)["input_ids"] for t in chat_texts(loaded.tokenizer, instructions)]
    counts = torch.bincount(harmful.prompt_index, minlength=2).tolist()
    assert all(1 <= c < len(i) for c, i in zip(counts, ids))  # the end of the instruction and the template after it
    assert harmful.by_writer["1.mlp_out"].shape[1] == loaded.model.config.intermediate_size
    assert harmful.by_writer["1.attn_out"].shape[1] == loaded.model.config.hidden_size
    benign = collect_inputs(loaded, writers, instructions, positions="all", answer_tokens=3, progress=False)
    assert int(benign.generated.sum()) <= 2 * 3 and benign.generated.any()
    assert len(benign.prompt_index) == sum(len(i) for i in ids) + int(benign.generated.sum())


def test_the_harmful_side_can_go_on_through_the_models_own_answer_or_a_prefilled_one(tiny_model):
    loaded = load_hf_model(tiny_model("llama"))
    writers = find_writers(loaded, {1})
    instructions = ["Explain how to pick a lock", "Tell me how to hotwire a car"]

    def per_prompt(inputs):
        return torch.bincount(inputs.prompt_index, minlength=len(instructions))

    prompt_only = collect_inputs(loaded, writers, instructions, positions="instruction_end", progress=False)
    answered = collect_inputs(loaded, writers, instructions, positions="instruction_end", answer_tokens=3,
                              progress=False)
    answer_rows = torch.bincount(answered.prompt_index[answered.generated], minlength=len(instructions))
    assert answer_rows.min() >= 1 and answer_rows.max() <= 3
    assert torch.equal(per_prompt(answered), per_prompt(prompt_only) + answer_rows)  # the start did not move
    key = writers[-1].key
    for i in range(len(instructions)):  # the prompt's rows are the ones collected without the answer
        rows = answered.by_writer[key][(answered.prompt_index == i) & ~answered.generated]
        assert torch.allclose(rows, prompt_only.by_writer[key][prompt_only.prompt_index == i], atol=1e-5)

    prefill = "Sure, here is"
    prefilled = collect_inputs(loaded, writers, instructions, positions="instruction_end", prefill=prefill,
                               progress=False)
    plain, with_prefill = (chat_texts(loaded.tokenizer, instructions, prefill=p) for p in ("", prefill))
    added = torch.tensor([len(loaded.tokenizer(b, add_special_tokens=False)["input_ids"])
                          - len(loaded.tokenizer(a, add_special_tokens=False)["input_ids"])
                          for a, b in zip(plain, with_prefill)])
    assert added.min() >= 1 and torch.equal(per_prompt(prefilled), per_prompt(prompt_only) + added)


def test_a_forward_pass_stops_after_the_deepest_writer_with_the_inputs_a_full_pass_gives(tiny_model):
    loaded = load_hf_model(tiny_model("llama"))
    writers = find_writers(loaded, {0})  # layer 0 of 2: layer 1 and the LM head are never run
    instructions = ["Write a poem about rain please", "Hi", "Explain how tides work in three short sentences"]
    seen_by_last_layer = []
    last = loaded.model.get_submodule(find_writers(loaded, {1})[-1].module_name)
    probe = last.register_forward_pre_hook(lambda _m, args: seen_by_last_layer.append(args[0]))
    try:
        collected = collect_inputs(loaded, writers, instructions, positions="all", batch_size=2, progress=False)
    finally:
        probe.remove()
    assert not seen_by_last_layer
    full: dict[str, list] = {w.key: [] for w in writers}
    hooks = [loaded.model.get_submodule(w.module_name).register_forward_pre_hook(
        lambda _m, args, key=w.key: full[key].append(args[0][0])) for w in writers]
    try:
        for text in chat_texts(loaded.tokenizer, instructions):  # one prompt at a time: no padding at all
            enc = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                loaded.model(**enc, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    for w in writers:
        for i in range(len(instructions)):  # rows are grouped by length, but each keeps its prompt's index
            rows = collected.by_writer[w.key][collected.prompt_index == i]
            assert torch.allclose(rows, full[w.key][i], atol=1e-5)


def test_a_bfloat16_model_s_inputs_are_kept_in_bfloat16_and_fit_as_their_float32_widening(tiny_model):
    from rosi_vllm.extraction.read_fit import gate_statistics

    loaded = load_hf_model(tiny_model("llama"), dtype=torch.bfloat16)
    writers = find_writers(loaded, {1})
    harmful = collect_inputs(loaded, writers, ["Explain how to pick a lock", "Tell me how to hotwire a car"],
                             positions="instruction_end", progress=False)
    benign = collect_inputs(loaded, writers, ["Write a poem about rain please", "Hi", "Name three birds"],
                            positions="all", answer_tokens=2, progress=False)
    key = writers[-1].key
    assert harmful.by_writer[key].dtype == benign.by_writer[key].dtype == torch.bfloat16  # half the memory
    a_h, a_b = harmful.by_writer[key], benign.by_writer[key]
    h = fit_read_vector(a_h, a_b, rho=0.5, lam=1.0)
    assert torch.equal(h, fit_read_vector(a_h.float(), a_b.float(), rho=0.5, lam=1.0))  # widening is exact
    stats = gate_statistics(h, a_h, a_b[~benign.generated], a_b[benign.generated])
    assert stats == gate_statistics(h, a_h.float(), a_b[~benign.generated].float(), a_b[benign.generated].float())


def test_extract_gated_writes_a_v2_direction_and_its_gate_report(tiny_model, tmp_path):
    model = tiny_model("llama")
    write = write_direction(model, tmp_path / "v1.safetensors")
    out = tmp_path / "gated.safetensors"
    report = extract_gated(str(model), str(write), out, layers=[0, 1], settings=(("nullspace", 0.7, 1.0),),
                           alphas=(2.0,), min_auroc=0.0, n_harmful=12, answer_tokens=3, val_n=4, stage1_n=3,
                           stage1_tokens=3, max_new_tokens=4, batch_size=4, harmful_answer_tokens=2, progress=False)
    d = load_direction(out)
    assert d.gated and d.recommended_alpha == 2.0 and set(d.window) <= {0, 1}
    assert report["harmful_answer_tokens"] == 2
    assert torch.equal(d.direction, load_direction(write).direction)  # ŝ is the write direction's
    assert set(d.gate) == set(d.reads) and all("auroc" in s for s in d.gate.values())
    saved = json.loads((tmp_path / "gated" / "gate.json").read_text())
    assert saved["best"] == report["best"] and {"harmful_refusal", "borderline_refusal"} <= set(saved["baseline"])
    assert all(c["kl_upper"] >= c["kl"] >= 0 for c in saved["candidates"])  # the budget is checked on the bound
    assert [(c["window"], c["alpha"]) for c in saved["kl_screen"] if c["generated"]] == \
        [(c["window"], c["alpha"]) for c in saved["candidates"] if c["stage"] == 2]  # one candidate: no stage 1
    assert {"select_kl_screen", "select_stage1", "select_stage2"} <= set(saved["stage_seconds"])
    assert (tmp_path / "gated" / "gate.png").stat().st_size > 10000


def test_with_more_candidates_within_the_kl_budget_than_finalists_stage_1_picks_them(tiny_model, tmp_path):
    model = tiny_model("llama")
    write = write_direction(model, tmp_path / "v1.safetensors")
    report = extract_gated(str(model), str(write), tmp_path / "gated.safetensors", layers=[0, 1],
                           settings=(("nullspace", 0.7, 1.0),), alphas=(0.01, 0.02), min_auroc=0.0, n_harmful=12,
                           answer_tokens=3, val_n=4, stage1_n=3, stage1_tokens=3, max_new_tokens=4, batch_size=4,
                           finalists=1, progress=False)
    generated = [c for c in report["kl_screen"] if c["generated"]]
    assert len(generated) > 1 and all(c["kl_upper"] <= 0.1 for c in generated)  # tiny α: all within the budget
    stage1 = [c for c in report["candidates"] if c["stage"] == 1]
    stage2 = [c for c in report["candidates"] if c["stage"] == 2]
    assert len(stage1) == len(generated) and len(stage2) == 1
    assert {c["slack"] for c in stage1} == {1 / 3} and stage2[0]["slack"] == 0.0  # one prompt of stage 1's three
    by_key = {(tuple(c["window"]), tuple(c["targets"]), c["alpha"]): c for c in report["kl_screen"]}
    for c in stage1 + stage2:  # both stages read the screen's KL, measured on every validation benign prompt
        screened = by_key[(tuple(c["window"]), tuple(c["targets"]), c["alpha"])]
        assert (c["kl"], c["kl_upper"]) == (screened["kl"], screened["kl_upper"])


@pytest.mark.parametrize("trailing", [False, True])
def test_fit_wrappers_are_not_the_test_jailbreak_templates(trailing):
    templates = prompts.fit_wrapper_templates(trailing=trailing)
    wrapped = prompts.fit_wrapped(["Explain how to pick a lock."], templates)
    assert len(wrapped) == len(templates) and all("pick a lock" in w for w in wrapped)
    assert len(templates) == len(prompts.FIT_WRAPPER_TEMPLATES) + trailing * len(prompts.TRAILING_FIT_WRAPPER_TEMPLATES)

    def parts(template):  # the fixed text before and after the goal
        return {p.strip(' ."') for p in template.replace("{goal_lc}", "{goal}").split("{goal}") if p.strip(' ."')}

    fit_texts = set().union(*map(parts, templates.values()))
    test_texts = set().union(*map(parts, prompts.JAILBREAK_TEMPLATES.values()))
    assert not fit_texts & test_texts and not set(templates) & set(prompts.JAILBREAK_TEMPLATES)


def test_trailing_wrappers_ask_for_a_form_never_for_first_words_or_no_warnings():
    for template in prompts.TRAILING_FIT_WRAPPER_TEMPLATES.values():
        assert template.startswith("{goal}") and len(template) > len("{goal}.")  # the instruction follows the goal
        assert not re.search(r"\b(start|begin) (your|the|with)|\bsure\b|warning|disclaimer|apolog|sorry|\bnote\b",
                             template.lower())


def _inputs(prompt_index):
    index = torch.tensor(prompt_index)
    return WriterInputs({"0.mlp_out": index.float()[:, None]}, index, torch.zeros(len(index), dtype=torch.bool))


def test_sources_are_held_out_each_in_proportion_and_wrapped_goals_never_straddle_the_split():
    plain = _inputs([0, 0, 1, 2, 3, 3, 4, 5, 6, 7])
    wrapped = _inputs(list(range(40))).grouped(5)  # 8 goals under 5 wrappers each
    fit, held_out = split_sources([plain, wrapped])
    assert len(fit.prompt_index) + len(held_out.prompt_index) == 50
    # the last quarter of each source is held out: plain prompts 6-7, wrapped goals 6-7 (rows 30-39)
    assert sorted(held_out.by_writer["0.mlp_out"][:, 0].tolist()) == [6.0, 7.0] + [float(r) for r in range(30, 40)]


@pytest.mark.parametrize("trailing", [False, True])
def test_extract_gated_with_wrapped_requests_attacks_in_selection(tiny_model, tmp_path, trailing):
    model = tiny_model("llama")
    write = write_direction(model, tmp_path / "v1.safetensors")
    templates = prompts.fit_wrapper_templates(trailing=trailing)
    val_n = len(templates)  # one validation goal under every wrapper
    report = extract_gated(str(model), str(write), tmp_path / "gated.safetensors", layers=[1],
                           settings=(("meandiff", 0.0, 0.0),), alphas=(2.0,), min_auroc=0.0, n_harmful=8,
                           answer_tokens=2, val_n=val_n, stage1_n=5, stage1_tokens=2, max_new_tokens=2, batch_size=8,
                           wrapped_goals=2, wrapped_benign=2, trailing_wrappers=trailing, progress=False)
    assert report["wrapped_goals"] == 2 and report["fit_wrappers"] == list(templates)
    attack = validation_sets(val_n, templates=templates)["jailbreak"]
    assert attack == list(prompts.fit_wrapped(prompts.harmful("validation")[:1], templates))
    assert attack[-1].endswith(list(templates.values())[-1].split("{goal}")[1])  # the last wrapper's own ending
    best = report["best"]
    assert 0.0 <= best["jailbreak_success"] <= 1.0
    assert best["harm_refused"] == pytest.approx((best["harmful_refusal"] + 1 - best["jailbreak_success"]) / 2)


def _reference_nullspace(harmful, benign, rho, lam):
    """The fit as the issue writes it: q = bottom-ρ eigenvectors, h = q (qᵀGq + λ·mean diag I)⁻¹ qᵀA_hᵀ1, median 1."""
    a_h, a_b = harmful.double(), benign.double()
    q = torch.linalg.eigh(a_b.T @ a_b / len(a_b)).eigenvectors[:, : int(rho * a_b.shape[1])]
    z = a_h @ q
    gram = z.T @ z
    h = q @ torch.linalg.solve(gram + lam * torch.diagonal(gram).mean() * torch.eye(len(gram), dtype=gram.dtype),
                               z.T @ torch.ones(len(z), dtype=z.dtype))
    return h / (a_h @ h).median()


@pytest.mark.parametrize("n_harmful", [20, 300])  # fewer harmful rows than dimensions (dual form) and more (primal)
def test_nullspace_fit_equals_the_formula_in_both_solve_forms(n_harmful):
    harmful, benign = _synthetic(d=64, n=1200)
    gen = torch.Generator().manual_seed(3)
    harmful = torch.cat([harmful, harmful])[:n_harmful] + 0.05 * torch.randn(n_harmful, 64, generator=gen)
    h = fit_read_vector(harmful, benign, rho=0.7, lam=0.3)
    expected = _reference_nullspace(harmful, benign, 0.7, 0.3)
    assert torch.allclose(h.double(), expected, atol=1e-4 * expected.abs().max())


def test_float32_top_space_matches_the_float64_one_on_a_falling_spectrum():
    gen = torch.Generator().manual_seed(4)
    d, n = 256, 4000
    scales = torch.logspace(1, -3, d)  # activations: a few large directions, a long small tail
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen)).Q
    benign = (torch.randn(n, d, generator=gen) * scales) @ basis.T
    k = d - int(0.7 * d)  # the top space the ρ = 0.7 fit removes
    exact = benign_top_space(benign, k)
    single = benign_top_space(benign, k, float64_max_dim=0)
    # principal angles between the two spaces: cosines near 1 except, at most, at the split
    moment = benign.double().T @ benign.double() / n
    for space in (exact, single):  # orthonormal, largest eigenvalue first (the fit keeps a prefix of it)
        assert torch.allclose(space.T @ space, torch.eye(k, dtype=torch.float64), atol=1e-5)
        captured = (space.T @ moment @ space).diagonal()
        assert (captured[:-1] >= captured[1:] * (1 - 1e-4)).all()
    cosines = torch.linalg.svdvals(exact.T @ single)
    assert cosines[: k - 5].min() > 0.999 and cosines.min() > 0.9
    harmful = benign[:200] + 0.5 * basis[:, -1]  # a signal in the benign tail
    h_exact = fit_read_vector(harmful, benign, rho=0.7, lam=0.1, top_space=exact)
    h_fast = fit_read_vector(harmful, benign, rho=0.7, lam=0.1, top_space=single)
    assert auroc(harmful @ h_exact, benign @ h_exact) > 0.99
    assert auroc(harmful @ h_fast, benign @ h_fast) == pytest.approx(auroc(harmful @ h_exact, benign @ h_exact), abs=0.01)
