"""Ask every prompt once per arm through the OpenAI API, with that arm's tenant key.

Requests go one at a time, interleaved and alternating which arm goes first
(base, hardened for one prompt; hardened, base for the next), so the latency
per arm is each request alone on the engine and neither arm is favoured by a
warm cache or by the other's load. Greedy decoding, chat template, no system
prompt: what `rosi eval` measured the shipped numbers with, shorter answers
(the refusal judge reads only the opening). A response that is not 200 stops
the demo with one line, since then the table would mean nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ...core.errors import RosiError
from ...core.judge import SubstringJudge


@dataclass(frozen=True)
class Answer:
    set: str  # "harmful" | "benign"
    prompt: str
    arm: str
    text: str
    refused: bool
    e2e_s: float  # client-side, request sent to body read
    variant: str  # the tenant layer's x-rosi-variant header: which variant really served it
    response_model: str  # the response's "model" field, as a client sees it


def order(prompts: list[tuple[str, str]], arms: tuple[str, ...]) -> list[tuple[int, str]]:
    """(prompt index, arm) in sending order: every prompt once per arm, the first arm alternating."""
    out = []
    for i in range(len(prompts)):
        turn = arms if i % 2 == 0 else tuple(reversed(arms))
        out += [(i, arm) for arm in turn]
    return out


def ask(url: str, key: str, model: str, prompt: str, max_tokens: int) -> tuple[str, float, str, str]:
    import requests

    started = time.perf_counter()
    try:
        response = requests.post(url + "/v1/chat/completions", timeout=300,
                                 headers={"Authorization": f"Bearer {key}"},
                                 json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                       "max_tokens": max_tokens, "temperature": 0})
    except requests.RequestException as exc:
        raise RosiError(f"rosi: the demo server stopped answering ({type(exc).__name__})") from None
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RosiError(f"rosi: the demo server answered {response.status_code}: {response.text[:200]}")
    body = response.json()
    text = body["choices"][0]["message"]["content"] or ""
    return text, elapsed, response.headers.get("x-rosi-variant", ""), str(body.get("model", ""))


def ask_all(url: str, model: str, keys: dict[str, str], prompts: list[tuple[str, str]], max_tokens: int,
            progress=None) -> list[Answer]:
    """Every prompt on every arm (keys: arm → API key); `progress()` is called after each answer."""
    judge = SubstringJudge()
    answers = []
    for i, arm in order(prompts, tuple(keys)):
        kind, prompt = prompts[i]
        text, elapsed, variant, response_model = ask(url, keys[arm], model, prompt, max_tokens)
        answers.append(Answer(kind, prompt, arm, text, judge.is_refusal(text), elapsed, variant, response_model))
        if progress:
            progress()
    return answers
