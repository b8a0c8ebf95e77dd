"""Tenant config validation, arm assignment and response capture: pure code, no engine."""

from __future__ import annotations

import collections
import json

import pytest

from rosi_vllm.errors import RosiError
from rosi_vllm.serving.response_capture import ResponseCapture
from rosi_vllm.serving.routing import EXPLICIT_ARM, NO_ARM, RouteDenied, assign_arm, route
from rosi_vllm.serving.tenant_config import BAKED, key_digest, parse_tenant_config

KEY_A = key_digest("key-a")


def config(**overrides):
    data = {
        "version": 1,
        "alpha_bounds": {"min": 0, "max": 64},
        "variants": {"base": 0, "standard": BAKED, "strict": 32},
        "tenants": {
            "acme": {"api_key_sha256": [KEY_A], "default_variant": "standard",
                     "allowed_variants": ["standard", "strict"]},
            "beta": {"api_key_env": ["BETA_KEY"], "default_variant": "strict",
                     "experiment": {"name": "exp1", "arms": {"base": 50, "strict": 50}}},
        },
    }
    data.update(overrides)
    return data


ENV = {"BETA_KEY": "key-b"}


def test_valid_config_maps_keys_to_tenants():
    cfg = parse_tenant_config(config(), environ=ENV)
    assert cfg.tenant_for_key("key-a").name == "acme"
    assert cfg.tenant_for_key("key-b").name == "beta"
    assert cfg.tenant_for_key("key-c") is None and cfg.tenant_for_key(None) is None
    assert cfg.alpha_of("standard", 8.0) == 8.0 and cfg.alpha_of("strict", 8.0) == 32.0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["variants"].update(evil=-4), "negative, which ablates"),
    (lambda d: d["variants"].update(huge=65), "outside alpha_bounds"),
    (lambda d: d["variants"].update(bad="x"), "must be a number or 'baked'"),
    (lambda d: d.update(alpha_bounds={"min": -1, "max": 8}), "needs allow_negative_alpha"),
    (lambda d: d["tenants"]["acme"].update(default_variant="nope"), "default_variant 'nope'"),
    (lambda d: d["tenants"]["acme"].update(allowed_variants=["nope"]), "allowed_variants must list"),
    (lambda d: d["tenants"]["acme"].pop("api_key_sha256"), "has no API key"),
    (lambda d: d["tenants"]["acme"].update(api_key_sha256=["abc"]), "64 hex"),
    (lambda d: d["tenants"]["beta"].update(api_key_env=["MISSING_KEY"]), "MISSING_KEY (API key) is not set"),
    (lambda d: d["tenants"]["beta"]["experiment"].update(arms={"base": 50, "strict": 40}), "sum to 90"),
    (lambda d: d["tenants"]["beta"]["experiment"].update(arms={"base": 100}), "at least two arms"),
    (lambda d: d["tenants"]["acme"].update(alowed_variants=[]), "unknown key(s) ['alowed_variants']"),
    (lambda d: d.update(version=2), "version must be 1"),
])
def test_invalid_configs_are_refused_with_the_reason(mutate, message):
    data = config()
    mutate(data)
    with pytest.raises(RosiError, match="rosi: invalid tenant config") as err:
        parse_tenant_config(data, environ=ENV)
    assert message in str(err.value)


def test_negative_alpha_needs_explicit_opt_in():
    data = config(allow_negative_alpha=True, alpha_bounds={"min": -8, "max": 64})
    data["variants"]["ablate"] = -8
    assert parse_tenant_config(data, environ=ENV).variants["ablate"] == -8


def test_shared_key_is_refused_without_printing_it():
    data = config()
    data["tenants"]["beta"]["api_key_sha256"] = [KEY_A]
    with pytest.raises(RosiError) as err:
        parse_tenant_config(data, environ=ENV)
    assert "shares an API key with tenant 'acme'" in str(err.value)
    assert KEY_A not in str(err.value) and "key-a" not in str(err.value)


def test_baked_alpha_must_fit_the_bounds():
    cfg = parse_tenant_config(config(), environ=ENV)
    cfg.check_baked_alpha(8.0)
    with pytest.raises(RosiError, match="outside alpha_bounds"):
        cfg.check_baked_alpha(100.0)


def test_routing_rules():
    cfg = parse_tenant_config(config(), environ=ENV)
    acme, beta = cfg.tenants["acme"], cfg.tenants["beta"]
    kw = dict(served_model="m", baked_alpha=8.0)
    r = route(cfg, acme, "m", None, **kw)
    assert (r.variant, r.arm, r.engine_model) == ("standard", NO_ARM, "m")  # baked: no adapter
    r = route(cfg, acme, "strict", "u", **kw)
    assert (r.variant, r.arm, r.engine_model, r.alpha) == ("strict", EXPLICIT_ARM, "rosi-alpha-32", 32.0)
    for forbidden in ("base", "rosi-alpha-0", "rosi-alpha-32", "other-model"):
        with pytest.raises(RouteDenied):
            route(cfg, acme, forbidden, None, **kw)
    with pytest.raises(RouteDenied):  # beta may not name the base arm even though it is in its experiment
        route(cfg, beta, "base", "u", **kw)
    assert route(cfg, beta, None, None, **kw).variant == "strict"  # no user: default, not in experiment
    arm = route(cfg, beta, "m", "user-7", **kw)
    assert arm.experiment == "exp1" and arm.arm in ("base", "strict")
    if arm.arm == "base":
        assert arm.engine_model == "rosi-alpha-0"


def test_arm_assignment_is_sticky_and_follows_the_split():
    cfg = parse_tenant_config(config(), environ=ENV)
    exp = cfg.tenants["beta"].experiment
    arms = [assign_arm(exp, f"user-{i}") for i in range(20000)]
    assert arms == [assign_arm(exp, f"user-{i}") for i in range(20000)]
    share = collections.Counter(arms)["base"] / len(arms)
    assert abs(share - 0.5) < 0.02  # 7 sigma at n=20000
    skewed = type(exp)("exp2", (("base", 10.0), ("strict", 90.0)))
    share = collections.Counter(assign_arm(skewed, f"user-{i}") for i in range(20000))["base"] / 20000
    assert abs(share - 0.1) < 0.015
    # experiments shuffle independently: the same users do not land in the same arms
    other = type(exp)("exp3", exp.arms)
    agree = sum(assign_arm(exp, f"user-{i}") == assign_arm(other, f"user-{i}") for i in range(4000)) / 4000
    assert abs(agree - 0.5) < 0.05


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_streaming_capture_collects_text_and_strips_injected_usage():
    cap = ResponseCapture(streaming=True, strip_usage_event=True)
    stream = (_sse({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
              + _sse({"choices": [{"index": 0, "delta": {"content": "I can"}}]})
              + _sse({"choices": [{"index": 0, "delta": {"content": "not help"}}]})
              + _sse({"choices": [], "usage": {"completion_tokens": 2}}) + b"data: [DONE]\n\n")
    out = b""
    for i in range(0, len(stream), 7):  # events split across arbitrary chunk boundaries
        out += cap.feed(stream[i:i + 7])
    out += cap.finish()
    assert cap.texts == {0: "I cannot help"} and cap.completion_tokens == 2 and cap.tokens_exact
    assert b"usage" not in out and out.endswith(b"data: [DONE]\n\n") and b"not help" in out


def test_streaming_capture_keeps_usage_the_client_asked_for():
    cap = ResponseCapture(streaming=True, strip_usage_event=False)
    event = _sse({"choices": [], "usage": {"completion_tokens": 3}})
    assert cap.feed(event) == event


def test_json_capture_reads_completion_and_chat_bodies():
    body = json.dumps({"choices": [{"index": 0, "text": "a"}, {"index": 1, "text": "b"}],
                       "usage": {"completion_tokens": 5}}).encode()
    cap = ResponseCapture(streaming=False)
    assert cap.feed(body[:10]) + cap.feed(body[10:]) == body
    cap.finish()
    assert cap.texts == {0: "a", 1: "b"} and cap.completion_tokens == 5
    cap = ResponseCapture(streaming=False)
    cap.feed(json.dumps({"choices": [{"index": 0, "message": {"content": "hi"}}]}).encode())
    cap.finish()
    assert cap.texts == {0: "hi"}


def test_shipped_example_config_is_valid():
    from pathlib import Path

    from rosi_vllm.serving.tenant_config import load_tenant_config

    path = Path(__file__).resolve().parents[1] / "deploy" / "tenants.example.yaml"
    cfg = load_tenant_config(path, environ={"ACME_API_KEY": "a", "KIDS_APP_API_KEY": "b"})
    cfg.check_baked_alpha(64.0)
    assert cfg.tenants["acme"].experiment.name == "acme-hardening-1"


def test_long_streams_keep_the_opening_and_exact_counts_without_decoding_every_event():
    cap = ResponseCapture(streaming=True, strip_usage_event=True, text_limit=20)
    events = [_sse({"choices": [{"index": 0, "text": f"word{i} "}]}) for i in range(50)]
    events.append(_sse({"choices": [], "usage": {"completion_tokens": 50}}))
    out = b"".join(cap.feed(e) for e in events) + cap.feed(b"data: [DONE]\n\n") + cap.finish()
    assert cap.texts[0] == "word0 word1 word2 wo" and cap.completion_tokens == 50 and cap.tokens_exact
    assert b'"usage"' not in out and out.count(b"word") == 50
    fallback = ResponseCapture(streaming=True, text_limit=20)
    for e in events[:50]:
        fallback.feed(e)
    fallback.finish()
    assert fallback.completion_tokens == 50 and not fallback.tokens_exact  # counted past the text limit
