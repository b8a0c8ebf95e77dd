"""Per-tenant request policies: the attack paths a weight edit cannot close, refused before the engine.

The ROSI edit changes how the model answers a prompt; it cannot stop a caller
from writing part of the answer. Three request shapes do exactly that, so a
tenant's config decides whether each is served (defaults: refused, safe for an
untrusted tenant):

- ``assistant_prefill``: a chat request whose reply is already begun by the
  caller: the last message is the assistant's, ``continue_final_message: true``
  or ``add_generation_prompt: false``. The model then continues an answer the
  attacker started ("Sure, here is how to ...").
- ``raw_completions``: ``/v1/completions`` takes a raw prompt, so the caller
  writes the whole chat template, a half-written assistant turn included.
- ``control_tokens_in_content``: the served tokenizer turns its special/added
  token strings (``<|im_start|>``, ``<|assistant|>`` ...) found in rendered
  text into control tokens, so a user message containing them forges turns.
  The strings come from the served tokenizer (`ControlTokens.from_tokenizer`),
  never a hand list, and are matched in the *decoded* JSON strings (after
  ``json.loads``), so escapes such as ``\\u003c|im_start|>`` cannot hide them.

Pure functions on the parsed body, no ASGI and no vLLM: the middleware asks
`denial` once per request and answers 400 with the returned message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

DENY, ALLOW, REJECT = "deny", "allow", "reject"
#: the chat request fields whose strings the chat template renders into the prompt (``stop`` etc. are not)
RENDERED_CHAT_FIELDS = ("messages", "tools", "documents", "chat_template_kwargs")


@dataclass(frozen=True)
class RequestPolicies:
    """One tenant's policies, resolved (tenant key, else the config-level default, else the safe default)."""

    assistant_prefill: str = DENY  # deny | allow
    raw_completions: str = DENY  # deny | allow
    control_tokens_in_content: str = REJECT  # reject | allow

    def relaxed(self) -> list[str]:
        """The policies this tenant has opened (for `rosi tenants check`)."""
        return [name for name, value in vars(self).items() if value == ALLOW]


SAFE_DEFAULTS = RequestPolicies()


@dataclass(frozen=True)
class Denial:
    reason: str  # the rosi_rejected_requests_total label: the policy's name
    message: str


@dataclass(frozen=True)
class ControlTokens:
    """The served tokenizer's special and added token strings, compiled once into one matcher."""

    tokens: frozenset[str]
    pattern: re.Pattern | None = None
    #: every token's first two characters: a string containing none of them cannot contain a token, and these
    #: C-level substring tests are far cheaper than the alternation (which is tried at every position)
    openings: tuple[str, ...] = ()
    #: every token is written as itself inside a JSON string (no quote, backslash or control character)
    json_plain: bool = False
    #: in a UTF-8 body: a ``\\u`` or ``\\/`` escape, or a token's opening (one C-level scan of the bytes)
    suspect: re.Pattern | None = None

    @classmethod
    def of(cls, tokens: Iterable[str]) -> ControlTokens:
        # whitespace-only added tokens (some tokenizers add runs of spaces) are ordinary text, not turns
        kept = frozenset(t for t in tokens if isinstance(t, str) and t.strip())
        if not kept:
            return cls(kept)
        alternatives = sorted(kept, key=lambda t: (-len(t), t))  # longest first: report the whole token
        return cls(kept, re.compile("|".join(map(re.escape, alternatives))), tuple(sorted({t[:2] for t in kept})),
                   all(json.dumps(t, ensure_ascii=False)[1:-1] == t for t in kept),
                   re.compile(b"|".join([rb"\\[u/]", *(re.escape(o) for o in sorted({t[:2].encode() for t in kept}))])))

    def may_be_in(self, body: bytes) -> bool:
        """False only when no JSON string in `body` can *decode* to text holding a token: a cheap, sound skip.

        Detection itself is on decoded strings (`find`). This only spares the walk
        for the common body: UTF-8 (json.loads also reads UTF-16/32 bodies, whose
        bytes differ), and without ``\\u`` or ``\\/`` escapes, the only ones that
        decode to characters a plain token holds, a decoded string is its bytes
        minus other escapes, so a token's opening in it is an opening in the body.
        """
        if self.pattern is None:
            return False
        if not self.json_plain or not _utf8(body):
            return True
        return self.suspect.search(body) is not None

    @classmethod
    def from_tokenizer(cls, tokenizer) -> ControlTokens:
        """Every special token and every added-vocabulary string of a (vLLM or Hugging Face) tokenizer."""
        tokens = set(getattr(tokenizer, "all_special_tokens", None) or [])
        added = getattr(tokenizer, "get_added_vocab", None)
        if callable(added):
            tokens |= set(added())
        return cls.of(tokens)

    def find(self, value) -> str | None:
        """The first control token in any string inside `value` (strings, lists, mappings), else None."""
        if self.pattern is None:
            return None
        search, openings = self.pattern.search, self.openings
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if any(o in item for o in openings) and (found := search(item)) is not None:
                    return found.group(0)
            elif isinstance(item, dict):
                stack.extend(item.values())
                stack.extend(item.keys())
            elif isinstance(item, list):
                stack.extend(item)
        return None


def _utf8(body: bytes) -> bool:
    """Whether json.loads reads `body` as UTF-8 (`json.detect_encoding`, with a fast path for the usual ``{"``)."""
    if body[:1] == b"{" and body[1:2] != b"\x00":
        return True
    return json.detect_encoding(body[:4]) in ("utf-8", "utf-8-sig")


def denial(endpoint: str, payload: dict, policies: RequestPolicies, control_tokens: ControlTokens | None,
           body: bytes | None = None) -> Denial | None:
    """Why this request must not reach the engine under `policies`, or None when it may.

    `body`: the bytes `payload` was parsed from, if at hand (lets `ControlTokens.may_be_in` skip the walk).
    """
    if endpoint == "completions":
        if policies.raw_completions != ALLOW:
            return Denial("raw_completions", "rosi: /v1/completions (a raw prompt) is not served to this tenant "
                                             "(policy raw_completions: deny); use /v1/chat/completions")
        return None
    if policies.assistant_prefill != ALLOW and (why := _prefill(payload)):
        return Denial("assistant_prefill", f"rosi: {why}: the reply must be the model's own "
                                           "(policy assistant_prefill: deny)")
    if policies.control_tokens_in_content != ALLOW:
        if control_tokens is None:  # bind refuses this combination; should it happen anyway, fail closed
            return Denial("control_tokens_in_content", "rosi: the server cannot check messages for control "
                                                       "tokens (no tokenizer) (policy control_tokens_in_content: "
                                                       "reject)")
        if body is not None and not control_tokens.may_be_in(body):
            return None
        for field in RENDERED_CHAT_FIELDS:
            if field in payload and (token := control_tokens.find(payload[field])) is not None:
                return Denial("control_tokens_in_content",
                              f"rosi: {field} contains the model's control token {token!r}, which would forge "
                              "a turn of the chat template (policy control_tokens_in_content: reject)")
    return None


def _prefill(payload: dict) -> str | None:
    """How a chat request pre-writes the reply, if it does."""
    if payload.get("continue_final_message", False) is not False:
        return "continue_final_message continues a reply the caller wrote"
    if payload.get("add_generation_prompt", True) is not True:
        return "add_generation_prompt: false lets the caller write the start of the reply"
    messages = payload.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        role = messages[-1].get("role")
        if isinstance(role, str) and role.strip().lower() == "assistant":
            return "the last message is the assistant's"
    return None
