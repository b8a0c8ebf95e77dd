"""The tenant middleware at the ASGI level, in-process.

The downstream app here is a *fake* (named so): a few lines returning canned
OpenAI-style bodies, because the cases below need what a tiny random model
cannot produce (a refusal to count) or a server that must never start. Every
claim about real serving is in test_tenant_serving.py against `vllm serve`.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware
from rosi_vllm.serving.tenant_config import key_digest
from tests.helpers import write_direction

KEY = "sk-unit-test-key"
#: the tests send raw prompts to /v1/completions, which the safe default refuses (request_policy.py)
RAW_ALLOWED = {"raw_completions": "allow"}
#: the fake tokenizer's control tokens (ChatML's, Phi's, Llama 2's)
CONTROL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|assistant|>", "<|user|>", "<s>", "</s>")


class FakeTokenizer:
    """Stand-in for the served tokenizer: only what `ControlTokens.from_tokenizer` reads."""

    all_special_tokens = ["<|endoftext|>", "<s>", "</s>"]

    def get_added_vocab(self):
        return {token: 100 + i for i, token in enumerate(CONTROL_TOKENS)} | {"   ": 99}


def fake_vllm_state(model, direction, lora=False, policy="fcfs"):
    """Stand-in for vLLM's app.state with just the fields the middleware reads."""
    return SimpleNamespace(
        vllm_config=SimpleNamespace(
            scheduler_config=SimpleNamespace(policy=policy),
            load_config=SimpleNamespace(load_format="rosi", model_loader_extra_config={"direction": str(direction)}),
            lora_config=object() if lora else None,
            model_config=SimpleNamespace(model=str(model))),
        openai_serving_models=SimpleNamespace(base_model_paths=[SimpleNamespace(name="served")]),
        engine_client=SimpleNamespace(tokenizer=FakeTokenizer()))


class FakeEngineApp:
    """Fake downstream: records the request body, answers a canned completion (stream or not)."""

    def __init__(self, text="I'm sorry, but I cannot help with that.", state=None):
        self.text, self.requests = text, []
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return
        body = json.loads((await receive())["body"]) if scope["path"].startswith("/v1/c") else {}
        self.requests.append(body)
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for word in self.text.split(" "):
                chunk = {"model": body.get("model"), "choices": [{"index": 0, "text": word + " "}]}
                event = json.dumps(chunk, separators=(",", ":"))
                await send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(),
                            "more_body": True})
            usage = {"choices": [], "usage": {"completion_tokens": len(self.text.split(" "))}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(usage)}\n\n".encode(),
                        "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        out = json.dumps({"model": body.get("model"), "choices": [{"index": 0, "text": self.text}],
                          "usage": {"completion_tokens": 9}}, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})


def call(app, path, body=None, key=KEY, method="POST", state=None, raw=None, chunks=None, headers=()):
    """One request through `app`; `raw` sends these bytes as the body, `chunks` sends them in pieces."""
    headers = [*([(b"authorization", f"Bearer {key}".encode())] if key else []), *headers]
    scope = {"type": "http", "path": path, "method": method, "headers": headers,
             "app": SimpleNamespace(state=state)}
    pieces = list(chunks) if chunks is not None else [raw if raw is not None else json.dumps(body or {}).encode()]
    sent = []

    async def receive():
        if not pieces:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": pieces.pop(0), "more_body": bool(pieces)}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), payload


@pytest.fixture
def setup(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ROSI_ADAPTER_CACHE", str(tmp_path / "adapters"))
    model = tiny_model("llama")
    direction = write_direction(model, tmp_path / "d.safetensors", alpha=8.0)
    config = tmp_path / "tenants.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1, "policies": RAW_ALLOWED, "variants": {"standard": "baked", "strict": 16},
        "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard"}}}))
    return model, direction, config


def test_refusals_tokens_and_headers_are_recorded(setup, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    model, direction, config = setup
    registry = CollectorRegistry()
    downstream = FakeEngineApp()
    mw = RosiTenantMiddleware(downstream, config_path=str(config), metrics=RosiMetrics(registry))
    state = fake_vllm_state(model, direction, lora=True)
    status, headers, body = call(mw, "/v1/completions", {"model": "served", "prompt": "x"}, state=state)
    assert status == 200 and headers[b"x-rosi-variant"] == b"standard" and headers[b"x-rosi-alpha"] == b"8"
    status, _, body = call(mw, "/v1/completions", {"model": "served", "prompt": "x", "stream": True}, state=state)
    assert status == 200 and b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")
    assert downstream.requests[-1]["stream_options"] == {"include_usage": True}  # asked for, then stripped
    labels = {"tenant": "acme", "variant": "standard", "experiment": "", "arm": "none"}
    assert registry.get_sample_value("rosi_refusals_total", labels) == 2
    assert registry.get_sample_value("rosi_judged_responses_total", labels) == 2
    assert registry.get_sample_value("rosi_generated_tokens_total", labels) == 9 + 8
    assert registry.get_sample_value("rosi_ttft_seconds_count", labels) == 1


def test_compliant_text_is_not_counted_as_refusal(setup, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    model, direction, config = setup
    registry = CollectorRegistry()
    mw = RosiTenantMiddleware(FakeEngineApp("Sure, here is a bread recipe."), config_path=str(config),
                              metrics=RosiMetrics(registry))
    call(mw, "/v1/completions", {"prompt": "x"}, state=fake_vllm_state(model, direction, lora=True))
    labels = {"tenant": "acme", "variant": "standard", "experiment": "", "arm": "none"}
    assert registry.get_sample_value("rosi_judged_responses_total", labels) == 1
    assert registry.get_sample_value("rosi_refusals_total", labels) == 0


def test_judge_sample_rate_judges_that_share_and_still_counts_every_request(setup, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    model, direction, config = setup
    spec = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**spec, "judge_sample_rate": 0.25}))
    registry = CollectorRegistry()
    mw = RosiTenantMiddleware(FakeEngineApp(), config_path=str(config), metrics=RosiMetrics(registry))
    state = fake_vllm_state(model, direction, lora=True)
    n = 400
    for i in range(n):
        status, _, body = call(mw, "/v1/completions", {"prompt": "x", "stream": i % 2 == 0}, state=state)
        assert status == 200 and b"sorry" in body  # the client gets the whole answer whether judged or not
    labels = {"tenant": "acme", "variant": "standard", "experiment": "", "arm": "none"}
    judged = registry.get_sample_value("rosi_judged_responses_total", labels)
    assert 0.15 * n < judged < 0.35 * n  # binomial(400, 0.25): 100 ± 8.7, so ±5.8 sd
    assert registry.get_sample_value("rosi_refusals_total", labels) == judged  # every judged one is a refusal
    assert registry.get_sample_value("rosi_requests_total", {**labels, "endpoint": "completions", "status": "200"}) == n
    assert registry.get_sample_value("rosi_generated_tokens_total", labels) == n // 2 * (9 + 8)


def test_invalid_config_at_start_fails_closed_health_included(setup, tmp_path):
    model, direction, _ = setup
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nvariants: {evil: -3}\ntenants: {}\n")
    mw = RosiTenantMiddleware(FakeEngineApp(), config_path=str(bad), metrics=RosiMetrics(CollectorRegistry()))
    state = fake_vllm_state(model, direction)
    for path in ("/health", "/v1/completions", "/v1/models"):
        status, _, body = call(mw, path, {"prompt": "x"}, state=state)
        assert status == 503, path
        assert b"negative" in body


def test_adapter_variants_without_lora_fail_closed(setup):
    """strict (16) differs from the baked 8, so it needs LoRA; the fake state has it off."""
    model, direction, config = setup
    mw = RosiTenantMiddleware(FakeEngineApp(), config_path=str(config), metrics=RosiMetrics(CollectorRegistry()))
    status, _, body = call(mw, "/health", method="GET", state=fake_vllm_state(model, direction, lora=False))
    assert status == 503 and b"--enable-lora" in body


def test_non_rosi_server_fails_closed(setup):
    model, direction, config = setup
    state = fake_vllm_state(model, direction)
    state.vllm_config.load_config.load_format = "auto"
    mw = RosiTenantMiddleware(FakeEngineApp(), config_path=str(config), metrics=RosiMetrics(CollectorRegistry()))
    status, _, body = call(mw, "/health", method="GET", state=state)
    assert status == 503 and b"needs --load-format rosi" in body


def test_websockets_are_refused_not_passed_through(setup):
    model, direction, config = setup
    downstream = FakeEngineApp()
    mw = RosiTenantMiddleware(downstream, config_path=str(config), metrics=RosiMetrics(CollectorRegistry()))
    sent = []

    async def receive():
        return {"type": "websocket.connect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/realtime", "headers": [], "app": SimpleNamespace(state=None)}
    asyncio.run(mw(scope, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008}] and downstream.requests == []


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("asked", "answered", "engine"), [
    ("strict", "strict", "rosi-alpha-16"),  # a variant served as an adapter
    ("standard", "standard", "served"),     # the baked variant, named: the engine sees the served name
    ("served", "served", "served"),         # the served name: nothing to rewrite
    (None, "served", "served"),             # no model: OpenAI-compatible servers answer with the served name
])
def test_responses_name_the_model_the_client_asked_for(setup, monkeypatch, stream, asked, answered, engine):
    """The engine's internal name (adapter, checkpoint path) never reaches the client (JSON and every SSE event)."""
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    model, direction, config = setup
    config.write_text(yaml.safe_dump({
        "version": 1, "policies": RAW_ALLOWED, "variants": {"standard": "baked", "strict": 16},
        "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
                             "allowed_variants": ["standard", "strict"]}}}))
    downstream = FakeEngineApp("Sure thing")
    mw = RosiTenantMiddleware(downstream, config_path=str(config), metrics=RosiMetrics(CollectorRegistry()))
    body = {"prompt": "x", "stream": stream, **({"model": asked} if asked else {})}
    status, headers, payload = call(mw, "/v1/completions", body, state=fake_vllm_state(model, direction, lora=True))
    assert status == 200 and downstream.requests[-1]["model"] == engine
    if stream:
        events = [json.loads(e[6:]) for e in payload.decode().split("\n\n") if e.startswith("data: {")]
        assert len(events) == 2 and {e["model"] for e in events} == {answered}
    else:
        assert json.loads(payload)["model"] == answered
        assert int(headers[b"content-length"]) == len(payload)
    assert b"rosi-alpha" not in payload
