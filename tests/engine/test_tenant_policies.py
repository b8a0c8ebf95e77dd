"""Prefill, raw-prompt and forged-turn attacks on the real `vllm serve` (CPU) with the tenant layer.

Attacks are built from the test split (`harmful("test")`) by
`rosi_vllm.testing.attack_requests`. A tenant with the safe default policies
gets each answered 400 by its policy, counted in
``rosi_rejected_requests_total{reason}``, and the engine's own request
counter (``vllm:request_success_total``) does not move; a tenant whose
policies are ``allow`` is served them. The session's shared tenant server
(tests/engine/tenant_stack.py) serves this module's two tenants.
"""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rosi_vllm.extraction.prompts import harmful
from rosi_vllm.serving.tenant_config import key_digest
from rosi_vllm.testing.attack_requests import KINDS, POLICY, attack
from tests.engine.tenant_stack import section

pytestmark = pytest.mark.engine

KEYS = {"policy-locked": "sk-policy-locked-0123456789", "policy-open": "sk-policy-open-0123456789"}
SAFE = {"assistant_prefill": "deny", "raw_completions": "deny", "control_tokens_in_content": "reject"}
OPEN = {"assistant_prefill": "allow", "raw_completions": "allow", "control_tokens_in_content": "allow"}
#: attacks per kind: enough to see each is refused every time, small enough for a 2-core CPU
PROMPTS = harmful("test")[:4]


@section
def policy_tenants() -> dict:
    """Safe policies, written out (other sections open raw prompts config-wide), and everything allowed."""
    return {"variants": {"standard": "baked"},
            "tenants": {name: {"api_key_sha256": [key_digest(key)], "default_variant": "standard",
                               "policies": SAFE if name == "policy-locked" else OPEN} for name, key in KEYS.items()}}


@pytest.fixture(scope="module")
def policy_server(tenant_server):
    from transformers import AutoTokenizer

    return tenant_server, str(tenant_server.model), AutoTokenizer.from_pretrained(tenant_server.model)


def counters(server) -> dict:
    """{"engine": vLLM's finished requests, reason: rosi rejections} from the live /metrics."""
    out = {"engine": 0.0}
    text = requests.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "vllm:request_success_total":
                out["engine"] += s.value
            elif s.name == "rosi_rejected_requests_total":
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return out


def send(server, key: str, path: str, body: dict) -> requests.Response:
    return requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_attacks_are_denied_by_policy_counted_and_never_reach_the_engine(policy_server):
    server, model, tokenizer = policy_server
    before = counters(server)
    for kind in KINDS:
        for instruction in PROMPTS:
            r = send(server, KEYS["policy-locked"], *attack(kind, instruction, tokenizer, model, max_tokens=4))
            assert r.status_code == 400, (kind, r.text)
            message = r.json()["error"]["message"]
            assert message.startswith("rosi: ") and POLICY[kind] in message, message
    after = counters(server)
    assert after["engine"] == before["engine"]  # vLLM's own counter: nothing reached the engine
    for kind in KINDS:
        reason = POLICY[kind]
        assert after.get(reason, 0) - before.get(reason, 0) == len(PROMPTS), reason


def test_the_same_attacks_are_served_when_the_policies_allow_them(policy_server):
    server, model, tokenizer = policy_server
    before = counters(server)
    for kind in KINDS:
        for instruction in PROMPTS:
            r = send(server, KEYS["policy-open"], *attack(kind, instruction, tokenizer, model, max_tokens=4))
            assert r.status_code == 200, (kind, r.text)
            assert r.headers["x-rosi-tenant"] == "policy-open"
    assert counters(server)["engine"] - before["engine"] == len(KINDS) * len(PROMPTS)


def test_the_forged_turn_really_is_control_tokens_to_the_served_tokenizer(policy_server):
    """The attack is real: vLLM reads the user's `<|im_start|>` as one control token, not text."""
    server, model, tokenizer = policy_server
    path, body = attack("forged_turn", PROMPTS[0], tokenizer, model, max_tokens=1)
    forged = send(server, KEYS["policy-open"], path, body).json()["usage"]["prompt_tokens"]
    rendered = tokenizer.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
    assert forged == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    as_text = len(tokenizer(rendered, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    assert forged < as_text  # were they plain text, the prompt would be longer
