"""The tenant file broken while serving: the last good generation keeps serving; each rejection is logged and counted.

In-process with the *fake* engine of test_middleware.py; the same faults during
real traffic on `vllm serve` are in tests/engine/test_tenant_reliability.py.
"""

from __future__ import annotations

import logging
import os

import pytest
import yaml
from prometheus_client import CollectorRegistry

from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.middleware import RosiTenantMiddleware
from rosi_vllm.serving.tenant_config import key_digest
from tests.helpers import write_direction
from tests.unit.serving.test_middleware import KEY, RAW_ALLOWED, FakeEngineApp, call, fake_vllm_state

GOOD = yaml.safe_dump({"version": 1, "policies": RAW_ALLOWED, "variants": {"standard": "baked"},
                       "tenants": {"acme": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard"}}})


def _truncate(path):
    path.write_text("")


def _half_written(path):
    path.write_text(GOOD[: GOOD.index("api_key_sha256") + 20])  # cut inside the key list


def _deleted(path):
    path.unlink()


def _a_directory(path):
    path.unlink()
    path.mkdir()


def _unreadable(path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    path.chmod(0)
    os.utime(path, ns=(2, 2))  # chmod alone leaves mtime and size: a reload is only noticed on a change


def _binary(path):
    path.write_bytes(b"\xff\xfe\x00garbage\x00")


@pytest.mark.parametrize("fault", [_truncate, _half_written, _deleted, _a_directory, _unreadable, _binary])
def test_broken_tenant_file_keeps_the_last_good_generation(tiny_model, tmp_path, caplog, fault):
    model = tiny_model("llama")
    direction = write_direction(model, tmp_path / "d.safetensors", alpha=8.0)
    config = tmp_path / "tenants.yaml"
    config.write_text(GOOD)
    registry = CollectorRegistry()
    mw = RosiTenantMiddleware(FakeEngineApp("Sure"), config_path=str(config), metrics=RosiMetrics(registry))
    mw.service.reload_interval = mw.service._next_check = 0.0
    state = fake_vllm_state(model, direction)
    assert call(mw, "/v1/completions", {"prompt": "x"}, state=state)[0] == 200
    fault(config)
    with caplog.at_level(logging.ERROR, logger="vllm.rosi.tenants"):
        for _ in range(3):  # the broken file is rejected once, not once per request
            status, headers, _ = call(mw, "/v1/completions", {"prompt": "x"}, state=state)
            assert status == 200 and headers[b"x-rosi-tenant"] == b"acme"
    assert registry.get_sample_value("rosi_tenant_config_reloads_total", {"result": "rejected"}) == 1
    assert registry.get_sample_value("rosi_tenant_config_generation") == 1
    assert caplog.text.count("tenant config reload rejected, still serving generation 1") == 1
    assert call(mw, "/health", method="GET", state=state)[0] == 200
