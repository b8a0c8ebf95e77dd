"""The middleware's admission rules in-process: body cap (413), tenant limits (429), priority, counted statuses.

Downstream is the *fake* engine of test_middleware.py (named so); what the
real server does with limits and priority is in tests/engine/test_tenant_reliability.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware
from rosi_vllm.serving.tenant_config import key_digest
from tests.helpers import write_direction
from tests.unit.serving.test_middleware import KEY, RAW_ALLOWED, FakeEngineApp, call, fake_vllm_state

OTHER = "sk-unit-other-key"


def write(config, **acme):
    data = {"version": 1, "policies": RAW_ALLOWED, "max_body_bytes": 2048, "variants": {"standard": "baked"},
            "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard", **acme},
                        "other": {"api_key_sha256": [key_digest(OTHER)], "default_variant": "standard"}}}
    config.write_text(yaml.safe_dump(data))


@pytest.fixture
def make(tiny_model, tmp_path):
    model = tiny_model("llama")
    direction = write_direction(model, tmp_path / "d.safetensors", alpha=8.0)
    config = tmp_path / "tenants.yaml"

    def build(downstream=None, policy="fcfs", **acme):
        write(config, **acme)
        registry = CollectorRegistry()
        downstream = downstream or FakeEngineApp("Sure")
        mw = RosiTenantMiddleware(downstream, config_path=str(config), metrics=RosiMetrics(registry))
        mw.service.reload_interval = mw.service._next_check = 0.0  # re-read the file on every request
        state = fake_vllm_state(model, direction, policy=policy)
        return mw, downstream, registry, state, config

    return build


def test_bodies_over_the_cap_are_refused_before_parsing(make):
    mw, downstream, registry, state, _ = make()
    big = json.dumps({"prompt": "x" * 4000}).encode()
    status, _, body = call(mw, "/v1/completions", raw=big, state=state)  # whole body, no content-length
    assert status == 413 and b"max_body_bytes" in body
    # declared too large: refused on the header alone, the body is never read
    status, _, _ = call(mw, "/v1/completions", chunks=[], state=state, headers=[(b"content-length", b"999999")])
    assert status == 413
    # streamed in small chunks (chunked upload): refused once the running total passes the cap
    status, _, _ = call(mw, "/v1/completions", chunks=[b"{" + b" " * 1000] * 5, state=state)
    assert status == 413
    assert downstream.requests == []
    assert registry.get_sample_value("rosi_rejected_requests_total", {"reason": "body_too_large"}) == 3
    status, _, _ = call(mw, "/v1/completions", {"prompt": "x" * 1000}, state=state)  # under the cap: served
    assert status == 200


def test_unauthenticated_large_bodies_are_refused_without_reading_them(make):
    mw, downstream, registry, state, _ = make()
    status, _, _ = call(mw, "/v1/completions", raw=b"x" * 100_000, key=None, state=state)
    assert status == 401 and downstream.requests == []


class HeldEngine(FakeEngineApp):
    """Fake engine whose completions wait until released: requests stay in flight."""

    def __init__(self):
        super().__init__("Sure")
        self.gate = asyncio.Event()

    async def __call__(self, scope, receive, send):
        if scope.get("path", "").startswith("/v1/c"):
            await self.gate.wait()
        await super().__call__(scope, receive, send)


def test_concurrency_limit_answers_429_with_retry_after_and_counts_it(make):
    engine = HeldEngine()
    mw, _, registry, state, _ = make(engine, limits={"max_concurrent_requests": 2})
    call(mw, "/health", method="GET", state=state)  # bind

    async def scenario():
        results = []

        async def one(key):
            sent = []

            async def receive():
                return {"type": "http.request", "body": b'{"prompt": "x", "max_tokens": 4}', "more_body": False}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "path": "/v1/completions", "method": "POST", "app": None,
                     "headers": [(b"authorization", f"Bearer {key}".encode())]}
            await mw(scope, receive, send)
            start = next(m for m in sent if m["type"] == "http.response.start")
            body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
            results.append((key, start["status"], dict(start["headers"]), body))

        tasks = [asyncio.create_task(one(KEY)) for _ in range(3)] + [asyncio.create_task(one(OTHER))]
        await asyncio.sleep(0.05)
        done_early = list(results)
        engine.gate.set()
        await asyncio.gather(*tasks)
        return done_early, results

    early, results = asyncio.run(scenario())
    assert [(k, s) for k, s, _, _ in early] == [(KEY, 429)]  # the third acme request, at once
    _, _, headers, body = early[0]
    assert headers[b"retry-after"] == b"1"
    error = json.loads(body)["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and "acme" in error["message"]
    assert sorted(s for _, s, _, _ in results) == [200, 200, 200, 429]  # other tenant unaffected
    assert registry.get_sample_value("rosi_limited_requests_total", {"tenant": "acme", "reason": "concurrency"}) == 1
    assert mw.limiter.in_flight["acme"] == 0  # every admitted request gave its slot back


def test_token_limit_is_reconciled_from_usage_and_changes_on_reload(make):
    mw, _, registry, state, config = make(limits={"tokens_per_minute": 100})
    body = {"prompt": "x", "max_tokens": 60}
    assert call(mw, "/v1/completions", body, state=state)[0] == 200  # charged ~66, used 9 (fake usage): reconciled
    assert call(mw, "/v1/completions", body, state=state)[0] == 200
    status, headers, payload = call(mw, "/v1/completions", {"prompt": "x", "max_tokens": 95}, state=state)
    assert status == 429 and int(headers[b"retry-after"]) >= 1
    assert json.loads(payload)["error"]["type"] == "tokens"
    assert registry.get_sample_value("rosi_limited_requests_total", {"tenant": "acme", "reason": "tokens"}) == 1
    write(config, limits={"tokens_per_minute": 100_000})  # hot reload: the next request sees the new limit
    assert call(mw, "/v1/completions", {"prompt": "x", "max_tokens": 95}, state=state)[0] == 200


def test_tenant_priority_replaces_the_clients_own(make):
    mw, downstream, _, state, _ = make(policy="priority", priority=5)
    for sent in ({}, {"priority": -100}, {"priority": "x"}, {"priority": True}):
        assert call(mw, "/v1/completions", {"prompt": "x", **sent}, state=state)[0] == 200
        assert downstream.requests[-1]["priority"] == 5
        assert type(downstream.requests[-1]["priority"]) is int


def test_a_client_cannot_set_priority_for_an_unprioritised_tenant(make):
    mw, downstream, _, state, _ = make()
    call(mw, "/v1/completions", {"prompt": "x", "priority": -100}, state=state)
    assert downstream.requests[-1]["priority"] == 0


def test_priorities_without_the_priority_scheduler_fail_closed(make):
    mw, _, _, state, _ = make(policy="fcfs", priority=5)
    status, _, body = call(mw, "/health", method="GET", state=state)
    assert status == 503 and b"--scheduling-policy priority" in body


def test_untouched_bodies_are_passed_on_byte_for_byte(make):
    """The served name, no stream, no priority: nothing to rewrite, so nothing is re-encoded."""
    raw = b'{"model":"served","prompt":"x" ,  "max_tokens":4}'
    seen = []

    class Raw(FakeEngineApp):
        async def __call__(self, scope, receive, send):
            message = await receive()
            seen.append(message["body"])

            async def again():
                return message
            await super().__call__(scope, again, send)

    mw, _, _, state, _ = make(Raw("Sure"))
    assert call(mw, "/v1/completions", raw=raw, state=state)[0] == 200
    assert seen == [raw]


class DyingEngine(FakeEngineApp):
    """Fake engine that streams one token, then vLLM's error event (what it sends when the engine dies) or nothing."""

    def __init__(self, error: bool):
        super().__init__("Sure")
        self.error = error

    async def __call__(self, scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = json.dumps({"model": "served", "choices": [{"index": 0, "text": "Su"}]})
        await send({"type": "http.response.body", "body": f"data: {chunk}\n\n".encode(), "more_body": True})
        if self.error:
            error = json.dumps({"error": {"message": "EngineCore encountered an issue", "type": "InternalServerError",
                                          "param": None, "code": 500}})
            await send({"type": "http.response.body", "body": f"data: {error}\n\ndata: [DONE]\n\n".encode()})
        else:
            raise RuntimeError("connection to the engine lost")


@pytest.mark.parametrize(("error", "status"), [(True, "500"), (False, "499")])
def test_a_stream_cut_by_an_engine_failure_is_counted_with_its_real_status(make, error, status):
    mw, _, registry, state, _ = make(DyingEngine(error))
    try:
        call(mw, "/v1/completions", {"prompt": "x", "stream": True}, state=state)
    except RuntimeError:
        assert not error
    labels = {"tenant": "acme", "variant": "standard", "experiment": "", "arm": "none", "endpoint": "completions"}
    assert registry.get_sample_value("rosi_requests_total", {**labels, "status": status}) == 1
    assert registry.get_sample_value("rosi_requests_total", {**labels, "status": "200"}) is None


def test_non_boolean_stream_is_refused(make):
    mw, downstream, _, state, _ = make()
    status, _, body = call(mw, "/v1/completions", {"prompt": "x", "stream": "false"}, state=state)
    assert status == 400 and b"stream must be true or false" in body and downstream.requests == []
