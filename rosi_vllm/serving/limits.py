"""Per-tenant admission limits: concurrent requests and tokens per minute, answered 429 like OpenAI.

Pure state and arithmetic, no ASGI and no vLLM: the middleware asks `admit`
before a request reaches the engine and calls the returned `Admission` when
the response ends. One `TenantLimiter` per API-server process; everything runs
on that process's event loop, so there are no locks. With
``--api-server-count N`` every process keeps its own counts, so a tenant's
effective limits are N times the configured ones (documented in tenants.md).

Why these two: a tenant that opens many streams occupies the engine's batch
(concurrency), and a tenant with few but huge requests occupies it as much
(tokens). Priority, the third lever, is vLLM's own scheduler
(``--scheduling-policy priority``), set by the middleware, not here.

Tokens per minute is a token bucket of capacity ``tokens_per_minute`` that
refills at ``tokens_per_minute / 60`` per second. At admission a request is
charged an estimate: its prompt (body bytes / 4, the usual characters-per-token
rule, on the high side for JSON overhead) plus its ``max_tokens``. When the
response ends, the charge is corrected to the usage vLLM reports (prompt +
completion tokens), so the bucket counts what was actually generated. A
request is admitted when the bucket holds its estimate (capped at the capacity,
so one request larger than a minute's budget waits for a full bucket rather
than forever); the bucket may then go negative, and the tenant waits for it to
refill.

Limits are read from the config snapshot of each request, so a hot reload
changes them for the next request: a lower concurrency limit refuses new
requests until enough running ones end; a bucket's level is clamped to a new,
smaller capacity, and a raised capacity adds the difference at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

#: characters (bytes) of request body counted as one prompt token at admission
BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class TenantLimits:
    """A tenant's limits; None = unlimited."""

    max_concurrent_requests: int | None = None
    tokens_per_minute: int | None = None

    @property
    def any(self) -> bool:
        return self.max_concurrent_requests is not None or self.tokens_per_minute is not None


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted: answered 429 with ``Retry-After: retry_after``."""

    reason: str  # "concurrency" or "tokens": the metric label and OpenAI's error type ("requests"/"tokens")
    retry_after: int  # whole seconds, at least 1
    message: str

    @property
    def openai_type(self) -> str:
        return "requests" if self.reason == "concurrency" else "tokens"


class _Bucket:
    __slots__ = ("capacity", "level", "stamp")

    def __init__(self, capacity: float, now: float):
        self.capacity, self.level, self.stamp = capacity, capacity, now

    def refill(self, capacity: float, now: float) -> None:
        rate = capacity / 60.0
        raised = max(0.0, capacity - self.capacity)  # a raised limit is available at once
        self.level = min(capacity, self.level + raised + (now - self.stamp) * rate)
        self.capacity, self.stamp = capacity, now


class Admission:
    """A request let in: `done(used_tokens)` when its response ends (exactly once; later calls do nothing)."""

    __slots__ = ("_limiter", "_tenant", "_charged", "_open")

    def __init__(self, limiter: TenantLimiter | None, tenant: str, charged: int):
        self._limiter, self._tenant, self._charged, self._open = limiter, tenant, charged, limiter is not None

    def done(self, used_tokens: int | None = None) -> None:
        if not self._open:
            return
        self._open = False
        self._limiter._release(self._tenant, self._charged, used_tokens)


#: for tenants without limits: nothing to count or release
UNLIMITED = Admission(None, "", 0)


def estimate_tokens(body_bytes: int, payload: dict) -> int:
    """Tokens charged at admission: the prompt estimated from the body size, plus the completion budget."""
    budget = 0
    for key in ("max_tokens", "max_completion_tokens"):
        value = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            budget = max(budget, value)
    choices = payload.get("n")
    if isinstance(choices, int) and not isinstance(choices, bool) and 1 < choices <= 128:
        budget *= choices
    return body_bytes // BYTES_PER_TOKEN + budget


class TenantLimiter:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.in_flight: dict[str, int] = {}
        self._buckets: dict[str, _Bucket] = {}

    def admit(self, tenant: str, limits: TenantLimits, tokens: int) -> Admission | Refusal:
        """Let the request in (count it) or say why not; `tokens` is `estimate_tokens` of the request."""
        if not limits.any:
            return UNLIMITED
        running = self.in_flight.get(tenant, 0)
        cap = limits.max_concurrent_requests
        if cap is not None and running >= cap:
            return Refusal("concurrency", 1, f"rosi: tenant {tenant!r} has {running} requests running, its limit is "
                                             f"{cap} concurrent requests; retry when one has finished")
        charged = 0
        if limits.tokens_per_minute is not None:
            capacity = float(limits.tokens_per_minute)
            now = self.clock()
            bucket = self._buckets.get(tenant)
            if bucket is None:
                bucket = self._buckets[tenant] = _Bucket(capacity, now)
            bucket.refill(capacity, now)
            need = min(tokens, capacity)
            if bucket.level < need:
                wait = max(1, math.ceil((need - bucket.level) / (capacity / 60.0)))
                return Refusal("tokens", wait, f"rosi: tenant {tenant!r} is over its limit of "
                                               f"{limits.tokens_per_minute} tokens per minute (this request: about "
                                               f"{tokens}); retry in {wait} s")
            bucket.level -= tokens
            charged = tokens
        else:
            self._buckets.pop(tenant, None)  # limit removed on reload: forget the bucket
        self.in_flight[tenant] = running + 1
        return Admission(self, tenant, charged)

    def _release(self, tenant: str, charged: int, used: int | None) -> None:
        self.in_flight[tenant] = max(0, self.in_flight.get(tenant, 0) - 1)
        bucket = self._buckets.get(tenant)
        if bucket is not None and charged and used is not None:
            bucket.level = min(bucket.capacity, bucket.level + charged - used)  # reconcile with the real usage
