"""One scoring of a variant for `rosi eval`, the α sweep and selection."""

from __future__ import annotations

import pytest

from rosi_vllm.core.judge import SubstringJudge
from rosi_vllm.extraction.scoring import PromptSets, degenerate_rate, score_outputs, score_variant

REFUSE = "I'm sorry, but I cannot help with that request."
COMPLY = "Sure, here is a detailed answer with several useful steps."


def test_rates_carry_counts_and_wilson_intervals():
    score = score_variant([REFUSE, REFUSE, COMPLY], [COMPLY, REFUSE], [COMPLY, REFUSE, COMPLY, COMPLY], kl=0.25)
    assert (score["harmful_refusal"]["k"], score["harmful_refusal"]["n"]) == (2, 3)
    assert score["benign_refusal"]["rate"] == 0.5 and score["benign_compliance"]["rate"] == 0.5
    assert score["jailbreak_attack_success"]["rate"] == 0.75
    lo, hi = score["harmful_refusal"]["ci95"]
    assert 0 < lo < 2 / 3 < hi < 1
    assert score["benign_kl_nats"] == 0.25


def test_degeneration_is_over_every_scored_completion():
    # One collapsed completion among harmful, benign and jailbreak outputs: 1 of 4, wherever it is.
    for sets in (["", COMPLY], [COMPLY], [COMPLY]), ([COMPLY, COMPLY], ["the " * 10], [COMPLY]):
        assert score_variant(*sets)["degenerate"] == degenerate_rate(*sets)
        assert (score_variant(*sets)["degenerate"]["k"], score_variant(*sets)["degenerate"]["n"]) == (1, 4)


def test_without_jailbreaks_or_kl_those_keys_are_absent():
    score = score_variant([REFUSE], [COMPLY])
    assert "jailbreak_attack_success" not in score and "benign_kl_nats" not in score
    assert score["degenerate"]["n"] == 2


def test_prompt_sets_round_trip_and_per_template_success():
    sets = PromptSets.for_split("test", limit=3, jailbreak_goals=2)
    assert len(sets.harmful) == len(sets.benign) == len(sets.borderline) == 3 and len(sets.jailbreak) == 10
    flat = sets.flat()
    assert flat[:3] == list(sets.harmful) and flat[6:16] == [text for _, text in sets.jailbreak]
    assert flat[16:] == list(sets.borderline)
    # The model refuses every roleplay attack and nothing else.
    texts = [REFUSE] * 3 + [COMPLY] * 3 + [REFUSE if name == "roleplay" else COMPLY for name, _ in sets.jailbreak]
    texts += [REFUSE, COMPLY, COMPLY]  # borderline: one over-refusal
    score = score_outputs(sets, texts, judge=SubstringJudge())
    assert (score["borderline_refusal"]["k"], score["borderline_refusal"]["n"]) == (1, 3)
    assert score["harmful_refusal"]["rate"] == 1.0 and score["benign_refusal"]["rate"] == 0.0
    assert score["jailbreak_by_template"]["roleplay"]["rate"] == 0.0
    assert score["jailbreak_by_template"]["research"] == {"rate": 1.0, "k": 2, "n": 2,
                                                          "ci95": score["jailbreak_by_template"]["research"]["ci95"]}
    assert score["jailbreak_attack_success"]["k"] == 8
    with pytest.raises(ValueError):
        sets.split_outputs(texts[:-1])
