"""Engine fixtures shared across modules: one tenant server for the session."""

from __future__ import annotations

import pytest

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.testing.serve_process import wait_until
from tests.helpers import write_direction

from .engine_runs import ALPHA, build_case, job_logs, run_probe
from .tenant_stack import BAKED, start_tenant_server


@pytest.fixture(scope="session")
def tenant_server(tiny_model, tmp_path_factory):
    """`vllm serve --load-format rosi` (baked α=8) with the tenant middleware and every module's tenants."""
    work = tmp_path_factory.mktemp("tenant-server")
    model = tiny_model("llama")
    direction = write_direction(model, work / "d.safetensors", alpha=BAKED)
    srv = start_tenant_server(model, direction, work)
    try:
        up, _ = wait_until(srv.server, timeout=400)
        assert up, srv.log()[-3000:]
        yield srv
    finally:
        srv.server.stop()


@pytest.fixture(scope="session")
def engines(tiny_model, tmp_path_factory):
    """Every single-worker engine the loader tests compare, in one probe process (tests/engine_probe.py): base, and rosi + reference per kind (v1 on
    the tiny Llama and on GPT-2's transposed layout), and the v3 direction as the adapter tier on the base."""
    from rosi_vllm.core.adapters import write_adapter
    from rosi_vllm.core.checkpoint import model_shape
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan

    work = tmp_path_factory.mktemp("engines")
    llama = tiny_model("llama")
    cases = {}
    for family, kind in (("llama", "v1"), ("llama", "gated"), ("llama", "threshold"), ("gpt2", "v1")):
        folder = work / f"{family}-{kind}"
        folder.mkdir()
        direction, reference = build_case(tiny_model(family), family, kind, folder)
        cases[f"{family}-{kind}"] = {"model": tiny_model(family), "direction": direction, "kind": kind,
                                     "reference": reference}
    threshold = cases["llama-threshold"]
    plan = build_plan(load_direction(threshold["direction"]), model_shape(llama), alpha=ALPHA,
                      checkpoint_fingerprint=fingerprint_checkpoint(llama))
    adapter = write_adapter(plan, llama, work / "adapter")
    jobs = {"base": {"model": llama}, "adapter": {"model": llama, "lora": adapter}}
    for name, case in cases.items():
        jobs[f"{name}-rosi"] = {"model": case["model"], "load_format": "rosi",
                                "extra": {"direction": str(case["direction"])}}
        jobs[f"{name}-reference"] = {"model": case["reference"]}
    outputs = run_probe(work / "engines.json", jobs=jobs)
    logs = job_logs((work / "engines.log").read_text())
    return {"cases": cases, "outputs": outputs, "logs": logs, "work": work}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``kills_engine`` end the shared server's engine: run them after everything else."""
    items.sort(key=lambda item: item.get_closest_marker("kills_engine") is not None)
