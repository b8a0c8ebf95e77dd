"""The gated selection: which candidates are generated for, how α is pushed to the KL budget, how the budget
is checked, and that `rosi extract --method gated` records every probe it measured."""

from __future__ import annotations

import math

import pytest

from rosi_vllm.extraction.gated_selection import GatedCandidate, alphas_at_budget, worth_generating
from rosi_vllm.extraction.selection import MAX_KL
from rosi_vllm.methods.gated.fit import extract_gated
from tests.helpers import write_direction


def test_only_candidates_within_the_kl_budget_are_generated_for_unless_none_is():
    bounds = [(0.02, 0.05), (0.2, 0.3), (0.08, MAX_KL), (0.09, 0.15)]
    assert worth_generating(bounds, keep=2) == [0, 2]
    over = [(0.2, 0.3), (0.1, 0.12), (0.5, 0.6), (0.1, 0.11)]
    assert worth_generating(over, keep=2) == [3, 1]  # the nearest to the budget: where it bites


def test_the_kl_budget_is_checked_on_the_upper_bound_not_the_mean():
    def candidate(kl, kl_upper):
        return GatedCandidate((9,), ("mlp_out",), 16.0, 2, harmful_refusal=0.8, benign_refusal=0.0,
                              borderline_refusal=0.0, degenerate=0.0, kl=kl, kl_upper=kl_upper,
                              base={"benign_refusal": 0.0, "borderline_refusal": 0.0, "degenerate": 0.0})

    lucky = candidate(MAX_KL * 0.94, MAX_KL * 1.3)  # a mean just inside, an interval well over the budget
    safe = candidate(MAX_KL * 0.5, MAX_KL * 0.8)
    assert not lucky.feasible and safe.feasible and max([lucky, safe], key=GatedCandidate.rank_key) is safe
    assert candidate(MAX_KL * 0.94, None).feasible  # reports from before the bound: the mean, as then
    assert lucky.to_dict()["kl_upper"] == MAX_KL * 1.3


def _quadratic_kl(scale):
    """A KL bound that grows like α², as the recorded screens do (Qwen: 0.06 at α = 3, 0.11 at α = 4)."""
    def bounds_at(spec):
        _, _, alpha = spec
        return scale * alpha ** 2 * 0.7, scale * alpha ** 2
    return bounds_at


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_bisection_finds_the_largest_alpha_within_the_budget_between_the_grid_points_that_straddle_it(steps):
    window = ((10, 12), ("attn_out", "mlp_out"))
    grid = [(*window, a) for a in (2.0, 4.0, 8.0)]
    kl = _quadratic_kl(0.01)  # the budget's edge: α = √10 ≈ 3.16
    probed = alphas_at_budget(grid, [kl(s) for s in grid], kl, steps=steps)
    alphas = [spec[2] for spec, _ in probed]
    assert len(probed) == steps and all(2.0 < a < 4.0 for a in alphas)
    assert all(bounds == kl(spec) for spec, bounds in probed)  # every point returned was measured
    edge = math.sqrt(MAX_KL / 0.01)
    best = max((a for a in alphas if kl((*window, a))[1] <= MAX_KL), default=2.0)
    assert best <= edge < best + 2.0 / 2 ** steps  # within one bisection interval below the edge


def test_only_windows_whose_grid_straddles_the_budget_are_probed_and_a_grid_over_it_is_probed_from_zero():
    inside, over = ((9,), ("mlp_out",)), ((10,), ("mlp_out",))
    kl = {inside: _quadratic_kl(0.001), over: _quadratic_kl(1.0)}
    grid = [(*w, a) for w in (inside, over) for a in (1.0, 2.0)]  # inside: 0.001 and 0.004; over: 1 and 4
    probed = alphas_at_budget(grid, [kl[s[:2]](s) for s in grid], lambda s: kl[s[:2]](s), steps=4)
    assert {spec[:2] for spec, _ in probed} == {over}
    assert [spec[2] for spec, _ in probed] == [0.5, 0.25, 0.375, 0.3125]  # edge √0.1 ≈ 0.316, bisected from 0
    assert alphas_at_budget(grid, [kl[s[:2]](s) for s in grid], lambda s: kl[s[:2]](s), steps=0) == []


def test_a_kl_that_does_not_rise_with_alpha_never_puts_a_point_over_the_budget_into_generation():
    window = ((3,), ("mlp_out",))
    grid = [(*window, a) for a in (1.0, 2.0)]
    jagged = {1.0: 0.05, 2.0: 0.2, 1.5: 0.3, 1.25: 0.04, 1.375: 0.5}  # over, within, over: not monotone

    def bounds_at(spec):
        return jagged[spec[2]] / 2, jagged[spec[2]]

    probed = alphas_at_budget(grid, [bounds_at(s) for s in grid], bounds_at, steps=3)
    specs = grid + [spec for spec, _ in probed]
    bounds = [bounds_at(s) for s in grid] + [b for _, b in probed]
    kept = [specs[i] for i in worth_generating(bounds, keep=2)]
    assert kept == [(*window, 1.0), (*window, 1.25)] and all(bounds_at(s)[1] <= MAX_KL for s in kept)


def test_extract_gated_records_each_probe_between_the_grid_points_that_straddle_the_budget(tiny_model, tmp_path,
                                                                                           monkeypatch):
    budget = 0.01  # a random model's next token is nearly uniform: its KL saturates near 0.05, under 0.1
    monkeypatch.setattr("rosi_vllm.extraction.gated_selection.MAX_KL", budget)
    model = tiny_model("llama")
    write = write_direction(model, tmp_path / "v1.safetensors")
    report = extract_gated(str(model), str(write), tmp_path / "gated.safetensors", layers=[1],
                           settings=(("nullspace", 0.7, 1.0),), alphas=(0.01, 1e4), min_auroc=0.0, n_harmful=12,
                           answer_tokens=3, val_n=4, stage1_n=3, stage1_tokens=3, max_new_tokens=4, batch_size=4,
                           budget_steps=2, progress=False)
    grid = [c for c in report["kl_screen"] if not c["probe"]]
    probes = [c for c in report["kl_screen"] if c["probe"]]
    windows = {(tuple(c["window"]), tuple(c["targets"])) for c in grid}
    straddling = {w for w in windows
                  if {c["kl_upper"] <= budget for c in grid if (tuple(c["window"]), tuple(c["targets"])) == w}
                  == {True, False}}
    assert straddling, "α = 0.01 and 10⁴ straddle this budget"
    assert len(probes) == 2 * len(straddling) and all(0.01 < c["alpha"] < 1e4 for c in probes)
    assert all(c["generated"] == (c["kl_upper"] <= budget) for c in report["kl_screen"])
    assert report["budget_steps"] == 2 and "select_budget" in report["stage_seconds"]
    chosen = (report["best"]["window"], report["best"]["targets"], report["best"]["alpha"])
    assert chosen in [(c["window"], c["targets"], c["alpha"]) for c in report["kl_screen"] if c["generated"]]


def test_stage_1_tolerates_one_prompt_over_the_refusal_budgets_and_stage_2_none():
    def candidate(benign_refusal, stage, slack):
        return GatedCandidate((10, 12), ("attn_out", "mlp_out"), 3.75, stage, harmful_refusal=0.9,
                              benign_refusal=benign_refusal, borderline_refusal=0.375, degenerate=0.0, kl=0.07,
                              kl_upper=0.098, slack=slack,
                              base={"benign_refusal": 0.125, "borderline_refusal": 0.375, "degenerate": 0.0})

    one_prompt = 1 / 16  # what 16 prompts can resolve: coarser than the 5-point budget
    assert candidate(0.125 + one_prompt, 1, one_prompt).feasible  # one prompt's verdict does not drop it
    assert not candidate(0.125 + 2 * one_prompt, 1, one_prompt).feasible
    assert not candidate(0.125 + 0.075, 2, 0.0).feasible  # the full split: the budget itself
    assert candidate(0.125 + 0.05, 2, 0.0).feasible
    assert candidate(0.2, 1, one_prompt).to_dict()["slack"] == one_prompt
    # the progress line says which it is: a selection that found nothing within the budgets says so
    base = {"harmful_refusal": 0.4, **candidate(0, 2, 0).base}
    within, over = candidate(0.125 + 0.05, 2, 0.0), candidate(0.125 + 0.075, 2, 0.0)
    within.base = over.base = base
    assert within.summary().endswith("within every budget") and "OVER a budget" in over.summary()


def test_each_window_sends_its_best_to_the_finalists_before_any_window_sends_a_second():
    from rosi_vllm.extraction.gated_selection import pick_finalists

    def candidate(window, alpha, harmful, benign):
        return GatedCandidate(window, ("mlp_out",), alpha, 1, harmful_refusal=harmful, benign_refusal=benign,
                              borderline_refusal=0.0, degenerate=0.0, kl=0.05, kl_upper=0.08, slack=1 / 16,
                              base={"benign_refusal": 0.0625, "borderline_refusal": 0.0, "degenerate": 0.0})

    wide = [candidate((8, 9, 10), a, h, 0.0625) for a, h in ((2.0, 0.8), (2.5, 0.85), (2.75, 0.875))]
    narrow = [candidate((10, 12), a, h, 0.1875) for a, h in ((3.0, 0.9), (3.75, 0.95))]  # 2 over on 16: infeasible
    picked = pick_finalists(wide + narrow, 3)
    assert [(c.window, c.alpha) for c in picked] == [((8, 9, 10), 2.75), ((10, 12), 3.75), ((8, 9, 10), 2.5)]
    assert [(c.window, c.alpha) for c in pick_finalists(wide + narrow, 1)] == [((8, 9, 10), 2.75)]


def test_a_window_whose_whole_grid_is_within_the_budget_grows_alpha_past_the_grid_then_bisects():
    window = ((9,), ("mlp_out",))
    kl = _quadratic_kl(0.0001)  # the budget's edge: α = √1000 ≈ 31.6, far past the grid's top of 2
    grid = [(*window, a) for a in (1.0, 2.0)]
    probed = alphas_at_budget(grid, [kl(s) for s in grid], kl, steps=2, grow=5)
    alphas = [spec[2] for spec, _ in probed]
    assert alphas == [4.0, 8.0, 16.0, 32.0, 24.0, 28.0]  # doubled until over the budget, then bisected
    assert all(bounds == kl(spec) for spec, bounds in probed)
    within = [a for a in alphas if kl((*window, a))[1] <= MAX_KL]
    assert max(within) == 28.0 < math.sqrt(MAX_KL / 0.0001) < 32.0


def test_growth_stops_after_its_steps_and_never_runs_without_them():
    window = ((9,), ("mlp_out",))
    kl = _quadratic_kl(1e-9)  # never reaches the budget
    grid = [(*window, a) for a in (1.0, 2.0)]
    assert [s[2] for s, _ in alphas_at_budget(grid, [kl(s) for s in grid], kl, steps=3, grow=3)] == [4.0, 8.0, 16.0]
    assert alphas_at_budget(grid, [kl(s) for s in grid], kl, steps=3, grow=0) == []


def test_stage_2_budgets_are_at_least_one_prompt_of_a_small_split():
    def candidate(benign_refusal, borderline_refusal, resolution):
        return GatedCandidate((9,), ("mlp_out",), 2.0, 2, harmful_refusal=0.5, benign_refusal=benign_refusal,
                              borderline_refusal=borderline_refusal, degenerate=0.0, kl=0.01, kl_upper=0.02,
                              resolution=resolution,
                              base={"benign_refusal": 0.0, "borderline_refusal": 0.125, "degenerate": 0.0})

    eight = 1 / 8  # rosi harden's smallest validation: 8 prompts a set
    assert not candidate(eight, 0.125, 0.0).feasible  # a 5-point budget rejects any single refusal of 8
    assert candidate(eight, 0.125, eight).feasible  # one prompt of 8 is the finest step it can measure
    assert not candidate(2 * eight, 0.125, eight).feasible
    assert candidate(0.0, 0.125 + eight, eight).feasible and not candidate(0.0, 0.125 + 2 * eight, eight).feasible
    # a split fine enough for the budgets: unchanged (the full validation split has 40 borderline prompts)
    assert not candidate(0.075, 0.125, 1 / 40).feasible and candidate(0.05, 0.125, 1 / 40).feasible
