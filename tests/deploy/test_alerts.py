"""deploy/prometheus/alerts.yml and the dashboard's PromQL, checked by Prometheus' own `promtool` (no engine).

``promtool check rules`` parses every rule with Prometheus' PromQL parser;
``promtool test rules`` replays the synthetic series of alerts_test.yml through
the rule evaluator, so each alert is shown to fire where it should and to stay
quiet where it must not. A broken rules file and a loosened rule are run too,
so these checks are seen to fail when they should. The compose recipe's
prometheus.yml is checked as the container sees it (its volumes laid out in a
folder), and the Grafana dashboard's queries go through promtool as well: each
must parse, and two are evaluated over series written by the real metric
definitions. Debian's ``prometheus`` package provides promtool (scripts/setup.sh).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rosi_vllm.serving.metrics import RosiMetrics
from tests.helpers import DEPLOY

RULES = DEPLOY / "prometheus/alerts.yml"
RULE_TESTS = DEPLOY / "prometheus/alerts_test.yml"
DASHBOARD = DEPLOY / "compose/grafana/dashboards/rosi.json"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: scripts/setup.sh installs Debian's prometheus package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_alert_rules_parse():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert names == {"RosiHardenedArmRefusalAtBase", "RosiDirectionMissing", "RosiServingWithoutDirection",
                     "RosiTenantServerErrors", "RosiTenantConfigReloadRejected", "RosiVariantUnavailable"}


def test_alert_unit_tests_pass():
    done = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test_that_fires_it():
    fired = {case["alertname"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", []) if case["exp_alerts"]}
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert fired == names


def test_a_broken_rules_file_is_rejected(tmp_path):
    broken = tmp_path / "alerts.yml"
    broken.write_text(RULES.read_text().replace("absent(rosi_direction_info)", "absent(rosi_direction_info"))
    done = promtool("check", "rules", str(broken))
    assert done.returncode != 0
    assert "RosiDirectionMissing" in done.stdout + done.stderr


def test_a_loosened_rule_fails_its_unit_tests(tmp_path):
    """Counting 4xx as server errors makes kids' 401s fire RosiTenantServerErrors, which the tests forbid."""
    text = RULES.read_text()
    assert text.count('status=~"5.."') == 1
    (tmp_path / "alerts.yml").write_text(text.replace('status=~"5.."', 'status=~"[45].."'))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0
    assert "RosiTenantServerErrors" in done.stdout + done.stderr


def test_compose_prometheus_config_loads_the_alerts_as_mounted(tmp_path):
    """Lay the compose service's volumes out as the container sees them, then `promtool check config`."""
    compose = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
    service = compose["services"]["prometheus"]
    (config_flag,) = [a for a in service["command"] if a.startswith("--config.file=")]
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        local = tmp_path / target.lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy((DEPLOY / "compose" / source).resolve(), local)
    config = tmp_path / config_flag.split("=", 1)[1].lstrip("/")
    done = promtool("check", "config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 rules found" in done.stdout


def test_compose_prometheus_config_without_its_rules_is_rejected(tmp_path):
    """The check above can fail: the same config without alerts.yml beside it points nowhere."""
    shutil.copy(DEPLOY / "compose/prometheus.yml", tmp_path / "prometheus.yml")
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode != 0
    assert "alerts.yml" in done.stdout + done.stderr


def dashboard_targets():
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            yield panel["id"], target["refId"], target["expr"]


def test_dashboard_queries_parse_with_prometheus(tmp_path):
    """Every panel query as a recording rule: Prometheus' parser must accept each one."""
    rules = [{"record": f"dashboard:panel_{pid}_{ref}", "expr": expr} for pid, ref, expr in dashboard_targets()]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def _series_from_real_metrics() -> list[dict]:
    """Two scrapes a minute apart of the real metric definitions, as promtool input series."""
    registry = CollectorRegistry()
    m = RosiMetrics(registry)
    scrapes = []
    for step in range(2):
        for i in range(10 * (step + 1)):
            labels = ("acme", "standard", "ab", "standard")
            m.requests.labels(*labels, "chat", "200").inc()
            m.responses.labels(*labels).inc()
            m.refusals.labels(*labels).inc(i % 2)
            m.ttft.labels(*labels).observe(0.03)
        scrapes.append({(s.name, tuple(sorted(s.labels.items()))): s.value
                        for f in text_string_to_metric_families(generate_latest(registry).decode())
                        for s in f.samples})
    series = []
    for name, labels in scrapes[1]:
        selector = name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels) + "}"
        values = " ".join(repr(scrape.get((name, labels), 0.0)) for scrape in scrapes)
        series.append({"series": selector, "values": values})
    return series


def test_dashboard_queries_evaluate_on_real_metric_output(tmp_path):
    """Prometheus evaluates the refusal and TTFT panels over series from the real metric definitions.

    5 of the first 10 and 10 of the next 20 judged responses are refusals, so the
    rate ratio is 0.5; every TTFT lies in the (0.025, 0.05] bucket, so the p50 is
    that bucket's midpoint by histogram_quantile's linear interpolation.
    """
    exprs = {(pid, ref): expr for pid, ref, expr in dashboard_targets()}
    test_file = tmp_path / "dashboard_test.yml"
    test_file.write_text(yaml.safe_dump({
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": _series_from_real_metrics(), "promql_expr_test": [
            {"expr": exprs[(1, "A")], "eval_time": "1m",
             "exp_samples": [{"labels": '{tenant="acme", arm="standard"}', "value": 0.5}]},
            {"expr": f"abs(({exprs[(3, 'A')]}) - 0.0375) < bool 1e-9", "eval_time": "1m",  # float round-off
             "exp_samples": [{"labels": '{variant="standard"}', "value": 1}]},
        ]}]}))
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr
