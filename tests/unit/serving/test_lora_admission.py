"""vLLM's LoRA resolver answers from the tenant config a request was admitted under, not the live one.

vLLM resolves a ``rosi-alpha-*`` adapter name after the middleware has admitted
the request; a hot reload in between that drops the α must not turn the
admitted request into vLLM's 404 ("model does not exist"). The fake engine
(test_middleware.py, named so) stands in for vLLM: while it holds the request
it reloads the config and asks the resolver's lookup, as vLLM would.
"""

from __future__ import annotations

import asyncio
import json

import yaml
from prometheus_client import CollectorRegistry

from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware, adapter_path_for
from rosi_vllm.serving.tenant_config import key_digest
from rosi_vllm.vllm_glue.lora_resolver import RosiVariantResolver
from tests.helpers import write_direction
from tests.unit.serving.test_middleware import KEY, RAW_ALLOWED, FakeEngineApp, call, fake_vllm_state


def _config(variants: dict) -> str:
    return yaml.safe_dump({
        "version": 1, "policies": RAW_ALLOWED, "variants": variants,
        "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
                             "allowed_variants": sorted(variants)}}})


class ReloadingEngine(FakeEngineApp):
    """Fake engine: before answering, the operator's reload lands, then vLLM resolves the request's adapter."""

    def __init__(self, config_path, service_of):
        super().__init__("Sure")
        self.config_path, self.service_of, self.resolved = config_path, service_of, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        request = await receive()
        self.config_path.write_text(_config({"standard": "baked"}))  # strict (α 16) dropped
        assert self.service_of().reload()
        model = json.loads(request["body"])["model"]
        resolved = await RosiVariantResolver(adapter_path_for).resolve_lora("served", model)
        self.resolved.append(resolved and resolved.lora_path)

        async def replay():  # the fake's own reading of the body
            return request

        return await super().__call__(scope, replay, send)

def test_an_adapter_admitted_before_a_reload_still_resolves(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    monkeypatch.setenv("ROSI_ADAPTER_CACHE", str(tmp_path / "adapters"))
    model = tiny_model("llama")
    direction = write_direction(model, tmp_path / "d.safetensors", alpha=8.0)
    config = tmp_path / "tenants.yaml"
    config.write_text(_config({"standard": "baked", "strict": 16}))
    engine = ReloadingEngine(config, lambda: mw.service)
    mw = RosiTenantMiddleware(engine, config_path=str(config), metrics=RosiMetrics(CollectorRegistry()))
    state = fake_vllm_state(model, direction, lora=True)

    status, headers, _ = call(mw, "/v1/completions", {"model": "strict", "prompt": "x"}, state=state)
    assert status == 200 and headers[b"x-rosi-variant"] == b"strict"
    assert engine.requests[-1]["model"] == "rosi-alpha-16"
    assert engine.resolved[-1] is not None, "admitted under a config serving alpha 16, yet the resolver refused it"
    # once no admitted request needs it, the dropped alpha is no longer served
    assert asyncio.run(RosiVariantResolver(adapter_path_for).resolve_lora("served", "rosi-alpha-16")) is None
