"""Prompt splits are disjoint, unique and sized; jailbreak templates wrap every goal."""

from __future__ import annotations

from rosi_vllm.extraction import prompts


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def test_splits_are_disjoint_and_sized():
    for kind in (prompts.harmful, prompts.harmless):
        sets = {s: {_norm(p) for p in kind(s)} for s in prompts.SPLITS}
        assert not sets["extraction"] & sets["validation"]
        assert not sets["extraction"] & sets["test"]
        assert not sets["validation"] & sets["test"]
    assert len(prompts.harmful("extraction")) >= 400 and len(prompts.harmful("test")) == 100
    assert len(prompts.harmless("extraction")) == 80 and len(prompts.harmless("test")) == 100


def test_no_near_duplicates_of_test_prompts_leak_into_extraction():
    test_words = [set(_norm(p).split()) for p in prompts.harmful("test")]
    for split in ("extraction", "validation"):
        for prompt in prompts.harmful(split):
            words = set(_norm(prompt).split())
            assert all(len(words & t) / len(words | t) < 0.7 for t in test_words), prompt


def test_harmless_prompts_are_unique_ascii():
    lines = [p for s in prompts.SPLITS for p in prompts.harmless(s)]
    assert len(lines) == len(set(lines)) == 240
    assert all(line.isascii() for line in lines)


def test_jailbreak_wraps_every_goal_in_every_template():
    wrapped = prompts.jailbreak("test")
    assert len(wrapped) == 100 * len(prompts.JAILBREAK_TEMPLATES)
    assert all(goal in text for (_, text), goal in zip(wrapped[:5], [prompts.harmful("test")[0]] * 5))


def test_jailbreak_can_take_the_first_goals_only():
    # `rosi eval --jailbreak-goals N` and the α sweep attack with exactly these prompts.
    wrapped = prompts.jailbreak("test", goals=2)
    goals = prompts.harmful("test")[:2]
    assert len(wrapped) == 2 * len(prompts.JAILBREAK_TEMPLATES)
    assert [name for name, _ in wrapped[:len(prompts.JAILBREAK_TEMPLATES)]] == list(prompts.JAILBREAK_TEMPLATES)
    assert all(goals[i // len(prompts.JAILBREAK_TEMPLATES)] in text for i, (_, text) in enumerate(wrapped))
    assert prompts.jailbreak("test", goals=0) == ()


def test_borderline_benign_set_is_split_by_category_and_sized():
    by_category = prompts.borderline_by_category()
    assert len(by_category) == 10 and all(len(rows) == 24 for rows in by_category.values())
    sizes = {split: len(prompts.borderline(split)) for split in prompts.SPLITS}
    assert sizes == {"extraction": 100, "validation": 40, "test": 100}
    sets = {s: {_norm(p) for p in prompts.borderline(s)} for s in prompts.SPLITS}
    assert not sets["extraction"] & sets["test"] and not sets["validation"] & sets["test"]
    everything = [p for rows in by_category.values() for p in rows]
    assert len({_norm(p) for p in everything}) == len(everything) and all(p.isascii() for p in everything)
    harmful = {_norm(p) for s in prompts.SPLITS for p in prompts.harmful(s)}
    assert not harmful & {_norm(p) for p in everything}


def test_form_rewrites_and_style_shift_sets_stay_out_of_the_fit_splits():
    # Rewrites of a goal stay in its split (forms.by_form); the written and Do-Not-Answer style-shift sets and
    # the public jailbreak artifacts are test only, and none of them repeats a fit prompt.
    from rosi_vllm.extraction import forms, jailbreak_artifacts

    fit = {_norm(p.text) for s in ("extraction", "validation") for kind in ("harmful", "benign")
           for p in forms.by_form(kind, s, forms.FORMS)}
    fit |= {_norm(p) for s in ("extraction", "validation") for p in (*prompts.harmful(s), *prompts.harmless(s))}
    harmful, benign = forms.eval_sets("test")
    assert not fit & {_norm(p.text) for p in harmful + benign}
    assert not fit & {_norm(t) for _, t in jailbreak_artifacts.jailbreak_families("test", None)}
    assert {p.base for p in harmful if p.source == "template"} <= set(prompts.harmful("test"))
    assert {p.base for p in benign if p.source == "template"} <= set(prompts.harmless("test"))


def test_interleave_is_round_robin_and_keeps_what_is_left():
    from rosi_vllm.extraction.prompts import interleave

    assert interleave([1, 2, 3], "ab") == [1, "a", 2, "b", 3]
    assert interleave([1], [], [2, 3, 4], [5, 6]) == [1, 2, 5, 3, 6, 4]
    assert interleave() == [] and interleave([], []) == []
