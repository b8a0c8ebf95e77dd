"""A read-only or full adapter cache folder: a clear 503 for the variants that need an adapter, the others serve.

Real parts: the adapters are built by the real `VariantAdapterStore` from a
tiny checkpoint, into a real read-only or real full filesystem (a small tmpfs,
mounted when the test may mount: root; else a chmod'ed folder for read-only,
and "full" is skipped). Downstream is the *fake* engine of test_middleware.py.
"""

from __future__ import annotations

import logging
import os
import subprocess
import uuid

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rosi_vllm.serving import service as service_module
from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware
from rosi_vllm.serving.tenant_config import key_digest
from tests.helpers import write_direction
from tests.unit.serving.test_middleware import KEY, RAW_ALLOWED, FakeEngineApp, call, fake_vllm_state


def _mount(path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, f"rosi-test-{uuid.uuid4().hex[:6]}", str(path)],
                          capture_output=True)
    return done.returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


@pytest.fixture
def cache(tmp_path, request):
    """(folder, make_writable): the adapter cache, read-only or full as the test's param asks."""
    folder = tmp_path / "cache"
    kind = request.param
    if kind == "full":
        if not _mount(folder, "size=4k"):
            pytest.skip("a full filesystem needs a tmpfs mount (root)")
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(folder)], check=True)
        _umount(folder)
    elif _mount(folder, "ro,size=64m"):
        yield folder, lambda: subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        _umount(folder)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folder modes, and this machine does not let it mount")
        folder.mkdir(exist_ok=True)
        folder.chmod(0o555)
        yield folder, lambda: folder.chmod(0o755)
        folder.chmod(0o755)


@pytest.mark.parametrize("cache", ["read-only", "full"], indirect=True)
def test_unwritable_adapter_cache_fails_only_the_adapter_variant(tiny_model, tmp_path, monkeypatch, caplog, cache):
    folder, make_writable = cache
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "true")
    monkeypatch.setenv("ROSI_ADAPTER_CACHE", str(folder))
    monkeypatch.setattr(service_module, "ADAPTER_RETRY_S", 0.0)
    model = tiny_model("llama")
    direction = write_direction(model, tmp_path / "d.safetensors", alpha=8.0)
    config = tmp_path / "tenants.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1, "policies": RAW_ALLOWED, "variants": {"standard": "baked", "strict": 16},
        "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
                             "allowed_variants": ["standard", "strict"]}}}))
    registry = CollectorRegistry()
    downstream = FakeEngineApp("Sure")
    mw = RosiTenantMiddleware(downstream, config_path=str(config), metrics=RosiMetrics(registry))
    state = fake_vllm_state(model, direction, lora=True)
    with caplog.at_level(logging.ERROR, logger="vllm.rosi.tenants"):
        status, headers, body = call(mw, "/v1/completions", {"model": "strict", "prompt": "x"}, state=state)
        assert status == 503 and b"variant 'strict' is unavailable" in body
        assert str(folder).encode() not in body  # the reason (with server paths) is for the operator's log
        assert call(mw, "/v1/completions", {"model": "standard", "prompt": "x"}, state=state)[0] == 200
    assert registry.get_sample_value("rosi_rejected_requests_total", {"reason": "variant_unavailable"}) >= 1
    assert [r["model"] for r in downstream.requests] == ["served"]  # the failing variant never reached the engine
    logged = caplog.text
    assert "adapter for alpha 16 unavailable" in logged and str(folder) in logged
    assert "No space left" in logged or "Read-only" in logged or "Permission denied" in logged
    leftovers = [p.name for p in folder.rglob("*.tmp")]
    assert leftovers == []  # no half-written adapter folder stays behind
    make_writable()  # the operator fixes the folder: the variant serves again, without a restart
    status, _, _ = call(mw, "/v1/completions", {"model": "strict", "prompt": "x"}, state=state)
    assert status == 200 and downstream.requests[-1]["model"] == "rosi-alpha-16"
