"""Per-tenant admission limits (`serving/limits.py`): concurrency, token bucket, reconciliation, reload."""

from __future__ import annotations

import pytest

from rosi_vllm.serving.limits import UNLIMITED, Admission, Refusal, TenantLimiter, TenantLimits, estimate_tokens


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_unlimited_tenants_are_not_counted():
    limiter = TenantLimiter()
    assert limiter.admit("a", TenantLimits(), 10**9) is UNLIMITED
    assert limiter.in_flight == {}


def test_concurrency_limit_refuses_until_a_request_ends():
    limiter = TenantLimiter()
    limits = TenantLimits(max_concurrent_requests=2)
    first, second = limiter.admit("a", limits, 1), limiter.admit("a", limits, 1)
    assert isinstance(first, Admission) and isinstance(second, Admission)
    third = limiter.admit("a", limits, 1)
    assert isinstance(third, Refusal) and third.reason == "concurrency" and third.openai_type == "requests"
    assert third.retry_after >= 1 and "2 concurrent requests" in third.message
    assert isinstance(limiter.admit("b", limits, 1), Admission)  # other tenants are counted apart
    first.done()
    first.done()  # a second call must not free a second slot
    assert isinstance(limiter.admit("a", limits, 1), Admission)
    assert isinstance(limiter.admit("a", limits, 1), Refusal)


def test_token_bucket_refuses_with_the_time_until_it_holds_the_request():
    clock = Clock()
    limiter = TenantLimiter(clock)
    limits = TenantLimits(tokens_per_minute=600)  # 10 tokens per second
    for _ in range(6):
        assert isinstance(limiter.admit("a", limits, 100), Admission)
    refused = limiter.admit("a", limits, 100)
    assert isinstance(refused, Refusal) and refused.reason == "tokens" and refused.openai_type == "tokens"
    assert refused.retry_after == 10  # 100 tokens at 10/s
    clock.now += 9.5
    assert isinstance(limiter.admit("a", limits, 100), Refusal)
    clock.now += 0.5
    assert isinstance(limiter.admit("a", limits, 100), Admission)


def test_usage_reconciles_the_estimate():
    clock = Clock()
    limiter = TenantLimiter(clock)
    limits = TenantLimits(tokens_per_minute=600)
    admission = limiter.admit("a", limits, 600)  # estimated a full minute
    assert isinstance(limiter.admit("a", limits, 50), Refusal)
    admission.done(used_tokens=100)  # but used 100: 500 come back
    assert isinstance(limiter.admit("a", limits, 450), Admission)
    assert isinstance(limiter.admit("a", limits, 100), Refusal)


def test_a_request_larger_than_the_budget_waits_for_a_full_bucket_not_forever():
    clock = Clock()
    limiter = TenantLimiter(clock)
    limits = TenantLimits(tokens_per_minute=60)
    assert isinstance(limiter.admit("a", limits, 1000), Admission)  # full bucket: admitted, bucket in debt
    refused = limiter.admit("a", limits, 1000)
    assert isinstance(refused, Refusal) and refused.retry_after == 1000  # debt 940 + a full 60, at 1/s


def test_new_limits_apply_to_the_next_request():
    clock = Clock()
    limiter = TenantLimiter(clock)
    running = [limiter.admit("a", TenantLimits(max_concurrent_requests=3), 1) for _ in range(2)]
    assert isinstance(limiter.admit("a", TenantLimits(max_concurrent_requests=1), 1), Refusal)  # lowered on reload
    assert isinstance(limiter.admit("a", TenantLimits(), 1), Admission)  # limit removed
    limiter.admit("b", TenantLimits(tokens_per_minute=1000), 100)
    assert isinstance(limiter.admit("b", TenantLimits(tokens_per_minute=50), 30), Admission)
    assert isinstance(limiter.admit("b", TenantLimits(tokens_per_minute=50), 30), Refusal)  # 900 left, clamped to 50
    for admission in running:
        admission.done()


@pytest.mark.parametrize(("payload", "expected"), [
    ({}, 25), ({"max_tokens": 8}, 33), ({"max_completion_tokens": 8, "max_tokens": 4}, 33),
    ({"max_tokens": 8, "n": 3}, 49), ({"max_tokens": True}, 25), ({"max_tokens": -5}, 25),
    ({"max_tokens": "9"}, 25), ({"max_tokens": 8, "n": 10**9}, 33),
])
def test_estimate_is_prompt_bytes_over_four_plus_the_completion_budget(payload, expected):
    assert estimate_tokens(100, payload) == expected
