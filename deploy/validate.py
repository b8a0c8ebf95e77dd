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
- compose: check-jsonschema's vendored compose-spec;
- every ``vllm serve`` command line in a manifest or the compose file: parsed by
  the installed vLLM's own CLI parser (a misspelt or retired flag is an error)
  and, with ``--load-format rosi``, its ``--model-loader-extra-config`` by
  rosi-vllm's strict loader-config parser. Skipped, and said so, where vLLM is
  not installed.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shlex
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


def compose_interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` forms (unset required → placeholder)."""
    def one(match):
        name, op, word = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        return word if op == ":-" else f"<{name}>"
    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, text)


def vllm_command_lines(k8s_root: Path = DEPLOY / "k8s", compose: Path = DEPLOY / "compose/docker-compose.yml"):
    """(where, argv after ``vllm serve``) of every vLLM container in the recipes.

    A container without ``command`` runs the image entrypoint, ``vllm serve``, on
    its ``args``; a shell ``command`` is searched for ``vllm serve``.
    """
    found = []

    def from_container(where: str, container: dict) -> None:
        if "command" not in container:
            if any(str(a).startswith("--model") for a in container.get("args", [])):
                found.append((where, [str(a) for a in container["args"]]))
            return
        words = shlex.split(" ".join(str(c) for c in container["command"] + container.get("args", [])))
        for i in range(len(words) - 1):
            if words[i] == "vllm" and words[i + 1] == "serve":
                argv = []
                for word in words[i + 2:]:
                    if word in ("&&", ";", "||", "|"):
                        break
                    argv.append(word)
                found.append((where, argv))

    for path in manifest_files(k8s_root):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            spec = doc.get("spec") or {}
            templates = [spec.get("template")] + [(spec.get("leaderWorkerTemplate") or {}).get(k)
                                                  for k in ("leaderTemplate", "workerTemplate")]
            for template in filter(None, templates):
                for container in template["spec"].get("containers", []):
                    from_container(f"{path.relative_to(DEPLOY)} {doc['kind']}/{doc['metadata']['name']}/"
                                   f"{container['name']}", container)
    services = yaml.safe_load(compose_interpolate(compose.read_text(), {}))["services"]
    for name, service in services.items():
        if not any(str(a).startswith("--model") for a in service.get("command", [])):
            continue  # prometheus, grafana
        found.append((f"{compose.relative_to(DEPLOY)} service {name}", [str(a) for a in service["command"]]))
    return found


def vllm_argv_errors(where: str, argv: list[str]) -> list[str]:
    """Parse one ``vllm serve`` argv as the installed vLLM would, and the rosi loader config as the loader would."""
    import contextlib
    import io

    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from rosi_vllm.core.errors import RosiError
    from rosi_vllm.core.loader_config import RosiLoaderConfig

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(argv)
    except SystemExit:
        return [f"{where}: vllm serve rejects the arguments: {stderr.getvalue().strip().splitlines()[-1]}"]
    if args.load_format != "rosi":
        return [f"{where}: --load-format is {args.load_format!r}, not rosi"]
    try:
        RosiLoaderConfig.from_extra_config(args.model_loader_extra_config)
    except RosiError as exc:
        return [f"{where}: {exc}"]
    return []


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
        try:
            import vllm  # noqa: F401
        except ImportError:
            print("vllm is not installed: `vllm serve` command lines not checked", file=sys.stderr)
        else:
            for where, command_line in vllm_command_lines():
                errors += vllm_argv_errors(where, command_line)
                checked += 1
    for line in errors:
        print(line)
    print(f"{checked} file(s) and command line(s) checked, {len(errors)} problem(s)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
