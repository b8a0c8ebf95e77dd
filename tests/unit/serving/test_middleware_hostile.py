"""Hostile requests through the middleware in-process (hypothesis): keys, headers, user ids, models, bodies.

Downstream is the *fake* engine of test_middleware.py (named so), which records
every request that reaches it; the same properties against the real server's
OpenAPI schema are in tests/engine/test_tenant_reliability.py (schemathesis).
"""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware
from rosi_vllm.serving.routing import adapter_name
from rosi_vllm.serving.tenant_config import key_digest
from tests.helpers import write_direction
from tests.unit.serving.test_middleware import RAW_ALLOWED, FakeEngineApp, call, fake_vllm_state

KEYS = {"acme": "sk-acme-hostile", "beta": "sk-beta-hostile"}
CONFIG = {
    "version": 1, "policies": RAW_ALLOWED, "max_body_bytes": 4096,
    "variants": {"base": 0, "standard": "baked", "strict": 16, "other": 24},
    "tenants": {
        "acme": {"api_key_sha256": [key_digest(KEYS["acme"])], "default_variant": "standard",
                 "allowed_variants": ["standard", "strict"]},
        "beta": {"api_key_sha256": [key_digest(KEYS["beta"])], "default_variant": "strict",
                 "experiment": {"name": "exp", "arms": {"base": 30, "strict": 70}}},
    },
}
#: what each tenant may be served: its default, the variants it may name, its experiment's arms
USABLE = {"acme": {"standard", "strict"}, "beta": {"strict", "base"}}
ALPHA = {"base": 0.0, "standard": 8.0, "strict": 16.0, "other": 24.0}


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    model = tiny_model("llama")
    direction = write_direction(model, tmp / "d.safetensors", alpha=8.0)
    config = tmp / "tenants.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    engine = FakeEngineApp("Sure")
    registry = CollectorRegistry()
    mw = RosiTenantMiddleware(engine, config_path=str(config), metrics=RosiMetrics(registry))
    state = fake_vllm_state(model, direction, lora=True)
    pytest.MonkeyPatch().setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    assert call(mw, "/health", method="GET", state=state)[0] == 200
    return mw, engine, state, registry


_TEXT = st.text(max_size=40) | st.sampled_from(["standard", "strict", "base", "other", "served", "rosi-alpha-0",
                                                "rosi-alpha-24", "STRICT", "strict\n"])
_HEADER_VALUE = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
_JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | _TEXT,
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
                        max_leaves=8)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([*KEYS.values(), None, "", "sk-wrong", KEYS["acme"] + " ", KEYS["acme"].upper()]),
       auth_scheme=st.sampled_from(["Bearer ", "bearer ", "Basic ", "", "Bearer  "]),
       model=st.none() | _TEXT | _JSONISH, user=st.none() | _TEXT | _JSONISH,
       headers=st.lists(st.tuples(st.sampled_from([b"x-rosi-user", b"X-Rosi-User", b"x-rosi-tenant",
                                                   b"x-rosi-variant", b"authorization", b"content-length"]),
                                  _HEADER_VALUE), max_size=4),
       extra=st.dictionaries(_TEXT, _JSONISH, max_size=3))
def test_hostile_requests_never_reach_a_variant_the_key_may_not_use(server, key, auth_scheme, model, user, headers,
                                                                   extra):
    mw, engine, state, _ = server
    body = {**extra, "prompt": "x"}
    if model is not None:
        body["model"] = model
    if user is not None:
        body["user"] = user
    auth = [(b"authorization", (auth_scheme + key).encode())] if key is not None else []
    before = len(engine.requests)
    try:
        raw = json.dumps(body).encode()
    except (ValueError, TypeError):
        return
    status, out_headers, payload = call(mw, "/v1/completions", raw=raw, key=None, state=state,
                                        headers=[*auth, *headers])
    assert status in (200, 400, 401, 404, 413), (status, payload)
    if status != 200:
        assert len(engine.requests) == before  # refused requests never reach the engine
        assert json.loads(payload)["error"]["message"]
        return
    tenant = out_headers[b"x-rosi-tenant"].decode()
    # only the key (the first authorization header, exactly "Bearer <key>") decides the tenant
    first_auth = next(v for k, v in [*auth, *headers] if k.lower() == b"authorization").decode("latin-1")
    assert first_auth[7:].strip() == KEYS[tenant] and first_auth[:7].lower() == "bearer "
    variant = out_headers[b"x-rosi-variant"].decode()
    assert variant in USABLE[tenant]
    sent = engine.requests[-1]["model"]
    assert sent == ("served" if ALPHA[variant] == 8.0 else adapter_name(ALPHA[variant]))


def test_the_property_is_not_vacuous(server):
    """Each tenant is served through the property's code path (the checks above ran on 200s)."""
    mw, engine, state, _ = server
    for tenant, key in KEYS.items():
        status, headers, _ = call(mw, "/v1/completions", {"prompt": "x", "user": "u1"}, key=key, state=state)
        assert status == 200 and headers[b"x-rosi-tenant"] == tenant.encode()
