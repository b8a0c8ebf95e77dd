"""Layer/alpha selection: ranking rules, and a full run on a tiny model."""

from __future__ import annotations

import json

import pytest

from rosi_vllm.core.fingerprint import fingerprint_checkpoint
from rosi_vllm.extraction.extract import extract_directions, load_hf_model
from rosi_vllm.extraction.selection import CandidateScore, plot_selection, select
from tests.unit.extraction.test_extract import HARMFUL, HARMLESS


def _score(harm, benign, kl, deg=0.0, layer=1, alpha=8.0, stage=1, base_benign=0.0):
    return CandidateScore(layer, alpha, stage, harm, benign, kl, deg, 10, 10, base_benign_refusal=base_benign)


def test_feasible_beats_infeasible_even_with_less_refusal():
    feasible = _score(0.3, 0.0, 0.05)
    too_costly = _score(0.9, 0.3, 0.05)
    too_far = _score(0.9, 0.0, 0.5)
    assert feasible.feasible and not too_costly.feasible and not too_far.feasible
    assert max([too_costly, feasible, too_far], key=CandidateScore.rank_key) is feasible


def test_among_feasible_highest_refusal_then_lowest_kl():
    a, b, c = _score(0.5, 0.0, 0.09), _score(0.6, 0.05, 0.08), _score(0.6, 0.0, 0.02)
    assert max([a, b, c], key=CandidateScore.rank_key) is c


def test_budget_is_relative_to_the_base_models_own_over_refusal():
    # The unedited model already refuses 10% of benign prompts: 12% is within a 5-point budget, 20% is not.
    assert _score(0.6, 0.12, 0.05, base_benign=0.10).feasible
    assert not _score(0.6, 0.20, 0.05, base_benign=0.10).feasible
    assert not _score(0.6, 0.12, 0.05, base_benign=0.0).feasible


def test_infeasible_ranked_by_tradeoff():
    a, b = _score(0.9, 0.4, 0.5), _score(0.5, 0.1, 0.2)
    assert a.tradeoff == pytest.approx(0.9 - 0.8 - 0.4)
    assert max([a, b], key=CandidateScore.rank_key) is b


def test_select_end_to_end_on_tiny_model(tiny_model, tmp_path):
    model = tiny_model("llama")
    loaded = load_hf_model(model)
    extraction = extract_directions(loaded, HARMFUL, HARMLESS, progress=False)
    assert extraction.directions[0].abs().max() == 0
    report = select(loaded, extraction, HARMFUL, HARMLESS, fingerprint=fingerprint_checkpoint(model),
                    layers=[1], alphas=[4.0, 16.0, 64.0], stage1_n=2, finalists=2, max_new_tokens=4,
                    stage1_tokens=2, progress=False)
    stage1 = [c for c in report.candidates if c.stage == 1]
    stage2 = [c for c in report.candidates if c.stage == 2]
    assert {(c.layer, c.alpha) for c in stage1} == {(1, 4.0), (1, 16.0), (1, 64.0)}
    assert len(stage2) == 2 and report.best in stage2
    assert all(c.n_harmful == 2 for c in stage1) and all(c.n_harmful == 4 for c in stage2)
    # Layer 0's input is the embedding of the last prompt token, identical for every chat
    # prompt, so its difference of means is exactly zero and is refused as a direction.
    # Larger alpha moves the benign first-token distribution further (KL is exact, not sampled).
    kl = {(c.layer, c.alpha): c.kl for c in stage1}
    assert kl[(1, 64.0)] > kl[(1, 4.0)] > 0
    payload = json.dumps(report.to_dict())
    assert '"best"' in payload and '"constraints"' in payload
    plot_selection(report, tmp_path / "selection.png")
    assert (tmp_path / "selection.png").stat().st_size > 1000


class _CollapsesOnHarmful:
    """Every variant, the unedited model included, returns nothing for harmful prompts."""

    def __init__(self, harmful):
        self.harmful = set(harmful)

    def generate(self, jobs, max_new_tokens):
        return [["" if p in self.harmful else "Sure, here is a helpful and complete answer." for p in prompts]
                for _, prompts in jobs]


def test_degeneration_budget_compares_the_same_prompts(tiny_model):
    """The base model's degeneration is measured on the candidate's prompts (harmful and harmless): a
    collapse the unedited model shares is not charged to the edit, in either stage."""
    model = tiny_model("llama")
    loaded = load_hf_model(model)
    extraction = extract_directions(loaded, HARMFUL, HARMLESS, progress=False)
    report = select(loaded, extraction, HARMFUL, HARMLESS, fingerprint=fingerprint_checkpoint(model),
                    generator=_CollapsesOnHarmful(HARMFUL), layers=[1], alphas=[4.0], stage1_n=2, finalists=1,
                    max_new_tokens=4, stage1_tokens=2, progress=False)
    assert {c.stage for c in report.candidates} == {1, 2}
    for c in report.candidates:
        assert c.degenerate == c.base_degenerate == 0.5
    assert report.baseline["degenerate"] == 0.5
