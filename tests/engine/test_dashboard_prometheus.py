"""The dashboard renderer's pipeline, for real: `vllm serve` with the tenant layer, scraped by a real Prometheus.

The server is the session's shared tenant server (tests/engine/tenant_stack.py), with the render's tenants as
its section of the config; `python deploy/render_dashboard.py` starts one of its own.

deploy/render_dashboard.py draws deploy/dashboard.png from Prometheus' own
answers to the Grafana dashboard's PromQL. This runs the same functions at a
smaller size (two traffic workers, 12 s of traffic) and checks what would make
a rendered dashboard lie: that Prometheus really scraped the server (``up`` is
1), that every panel's query has data (a renamed metric or a label the server
does not export would come back empty), and that the alert rules of
deploy/prometheus/alerts.yml, loaded into that Prometheus, react to the run's
rejected tenant-config edit on real series and stay quiet about the direction,
which is loaded.
"""

from __future__ import annotations

import shutil

import pytest

from tests.engine.tenant_stack import section
from tests.helpers import deploy_script

pytestmark = pytest.mark.engine

render = deploy_script("render_dashboard")


section(render.tenant_section)  # the render's tenants join the session's shared tenant server


@pytest.fixture(scope="module")
def outcome(tenant_server, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.fail("no prometheus binary: scripts/setup.sh installs Debian's prometheus package")
    work = tmp_path_factory.mktemp("dashboard")
    out = work / "dashboard.png"
    served = (tenant_server.server, tenant_server.model,
              lambda **options: tenant_server.write_section(render.tenant_section.__module__, **options))
    try:
        result = render.run(work, out, seconds=12, workers=2, step=1.0, startup_timeout=300, served=served)
    finally:
        tenant_server.restore()
    return result, out


def test_prometheus_scraped_the_server(outcome):
    result, _ = outcome
    (up,) = result["up"]
    assert up["metric"]["job"] == render.JOB
    assert up["value"][1] == "1"


def test_every_panel_query_returned_data(outcome):
    result, _ = outcome
    dashboard = render.load_dashboard()
    expected = {(p["id"], t["refId"]) for p in dashboard["panels"] for t in p["targets"]}
    assert set(result["results"]) == expected
    empty = {key: next(t["expr"] for p in dashboard["panels"] if p["id"] == key[0]
                       for t in p["targets"] if t["refId"] == key[1])
             for key, matrix in result["results"].items() if not any(s["values"] for s in matrix)}
    assert not empty, empty
    # the refusal panel is split by the experiment's arms and the tenants, as the labels promise
    refusal = {(s["metric"]["tenant"], s["metric"]["arm"]) for s in result["results"][(1, "A")]}
    assert {("acme", "base"), ("acme", "standard")} <= refusal, refusal
    # the run's config edits: one rejected reload, then the next generation (the shared server's counters may
    # have counted other tests' edits before the run began: the change over the run is the render's)
    def change(key):
        values = result["results"][key][0]["values"]
        # a counter no test has touched yet only appears at its first increment: then it started from 0
        existed_at_start = float(values[0][0]) <= result["start"] + 2
        return float(values[-1][1]) - (float(values[0][1]) if existed_at_start else 0.0)

    assert change((8, "B")) == 1
    assert change((8, "A")) == 1


def test_alert_rules_evaluate_on_the_real_series(outcome):
    result, _ = outcome
    firing = {a["metric"]["alertname"] for a in result["alerts"] if a["metric"]["alertstate"] == "firing"}
    active = {a["metric"]["alertname"] for a in result["alerts"]}
    assert "RosiTenantConfigReloadRejected" in firing, result["alerts"]
    assert not active & {"RosiDirectionMissing", "RosiServingWithoutDirection"}, result["alerts"]


def test_png_was_written(outcome):
    _, out = outcome
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000  # nine drawn panels, not an empty canvas
