"""Validate deploy/ offline: every Kubernetes manifest against a schema, the compose file against the compose-spec.

``python deploy/validate.py`` (no arguments: everything under deploy/k8s and the
compose file; or name YAML files). Exit status 1 with one line per problem.
Nothing is fetched from the network:

- core kinds (Deployment, Service, ConfigMap, Secret, ...): kubernetes-validate's
  bundled schemas, strict (unknown fields are errors), for ``--k8s-version``;
- ServiceMonitor and HTTPRoute: the CRD schemas vendored in ``deploy/schemas``
  (see ``deploy/schemas/vendor.py``), made strict the way ``kubectl apply``'s
  default server-side field validation is: an unknown field is an error;
- LeaderWorkerSet: a hand-written schema of its own fields (no package bundles
  that CRD), and its pod templates as ``PodTemplateSpec`` by kubernetes-validate;
- the ``metadata`` of every custom resource: kubernetes-validate's ObjectMeta;
- compose: check-jsonschema's vendored compose-spec.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
SCHEMAS = DEPLOY / "schemas"
DEFAULT_K8S_VERSION = "1.30.0"
NOT_MANIFESTS = {"kustomization.yaml", "tenants-single-variant.yaml"}
CUSTOM_SCHEMAS = {  # (apiVersion, kind) → vendored or hand-written schema file
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway.networking.k8s.io-v1.json",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset-leaderworkerset.x-k8s.io-v1.json",
}


def strict(schema: dict) -> dict:
    """Every object schema that lists its properties rejects unlisted ones (kubectl's strict field validation)."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


@cache
def custom_validator(filename: str) -> jsonschema.protocols.Validator:
    schema = strict(json.loads((SCHEMAS / filename).read_text()))
    return jsonschema.Draft7Validator(schema)


def _core_errors(doc: dict, version: str, where: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        path = "/".join(str(p) for p in error.path)
        return [f"{where}: {path or '(root)'}: {error.message}"]
    return []


def manifest_errors(doc: dict, version: str = DEFAULT_K8S_VERSION) -> list[str]:
    """All schema problems of one manifest, as readable lines (empty when it is valid)."""
    where = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in CUSTOM_SCHEMAS:
        try:
            return _core_errors(doc, version, where)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"{where}: no schema for {key[0]} {key[1]} (core kinds, or {sorted(CUSTOM_SCHEMAS)})"]
    errors = [f"{where}: {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
              for e in custom_validator(CUSTOM_SCHEMAS[key]).iter_errors(doc)]
    # ObjectMeta, checked by the core schema of a ConfigMap that carries it
    errors += _core_errors({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc.get("metadata") or {}},
                           version, f"{where} metadata")
    if doc.get("kind") == "LeaderWorkerSet":
        lwt = (doc.get("spec") or {}).get("leaderWorkerTemplate") or {}
        for field in ("leaderTemplate", "workerTemplate"):
            if field in lwt:
                errors += _core_errors({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": field.lower()},
                                        "template": lwt[field]}, version, f"{where} {field}")
        for claim in lwt.get("volumeClaimTemplates", []):
            errors += _core_errors({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim},
                                   version, f"{where} volumeClaimTemplates")
    return errors


def manifest_files(root: Path = DEPLOY / "k8s") -> list[Path]:
    return [p for p in sorted(root.rglob("*.yaml")) if p.name not in NOT_MANIFESTS]


def file_errors(path: Path, version: str = DEFAULT_K8S_VERSION) -> list[str]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    except yaml.YAMLError as error:
        return [f"{path}: not YAML: {error}"]
    return [f"{path}: {line}" for doc in docs for line in manifest_errors(doc, version)]


def compose_errors(path: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], check=False, capture_output=True, text=True, timeout=120)
    return [] if done.returncode == 0 else [f"{path}: {(done.stdout + done.stderr).strip()}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="manifests (default: all of deploy/k8s and compose)")
    parser.add_argument("--k8s-version", default=DEFAULT_K8S_VERSION)
    args = parser.parse_args(argv)
    errors, checked = [], 0
    for path in args.files or manifest_files():
        if path.name.startswith("docker-compose"):
            errors += compose_errors(path)
        else:
            errors += file_errors(path, args.k8s_version)
        checked += 1
    if not args.files:
        errors += compose_errors(DEPLOY / "compose/docker-compose.yml")
        checked += 1
    for line in errors:
        print(line)
    print(f"{checked} file(s) checked, {len(errors)} problem(s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
