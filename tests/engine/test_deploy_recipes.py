"""The deploy recipes run: each container's own argv, env and mounts start a real `vllm serve` on this CPU.

A pod or compose service is materialised locally: every volume mount becomes a
folder (ConfigMaps from the kustomization's generators, compose bind mounts from
their source paths), every mount path in the container's args and env is
rewritten to that folder, and the entrypoint is vLLM's image entrypoint,
``vllm serve``. Two things are substituted and named here: the model volume
holds a tiny random Llama instead of SmolLM2 (no model download in CI), and the
direction file under the manifest's name is that tiny model's direction (a
SmolLM2 direction would fail its fingerprint check, as it should). The CPU
flags of every engine test (bf16, short context, small memory share, eager) and
a free port replace ``--port=8000``. The Kubernetes recipe keeps its
``--tensor-parallel-size=2``: two CPU workers, each of which must load the
plugin and inject its own copy.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import requests
import yaml

from rosi_vllm.testing.serve_process import Server, start_server, wait_until
from tests.helpers import DEPLOY, deploy_script, write_direction

pytestmark = pytest.mark.engine

validate = deploy_script("validate")
KEYS = {"ACME_API_KEY": "sk-acme-recipe-test", "KIDS_APP_API_KEY": "sk-kids-recipe-test"}


def rewrite(text: str, mounts: dict[str, Path]) -> str:
    for mount_path in sorted(mounts, key=len, reverse=True):
        text = re.sub(rf"{re.escape(mount_path)}(?=/|\b|$)", str(mounts[mount_path]), text)
    return text


def launch(args: list[str], env: dict[str, str], log: Path, tp: int) -> Server:
    """vLLM's image entrypoint (`vllm serve`) with the recipe's args, on a free local port."""
    args = [a for a in args if not a.startswith("--port")]
    cpu_env = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"} if tp == 2 else {}
    return start_server(None, log, load_format=None, args=args, env={**cpu_env, **env})


def kubernetes_single_node(tmp: Path, model: Path, direction: Path) -> tuple[list[str], dict, dict]:
    kust_dir = DEPLOY / "k8s/single-node"
    kust = yaml.safe_load((kust_dir / "kustomization.yaml").read_text())
    (deployment,) = [d for d in yaml.safe_load_all((kust_dir / "deployment.yaml").read_text()) if d]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volume_dirs = {}
    for volume in pod["volumes"]:
        folder = tmp / "volumes" / volume["name"]
        folder.mkdir(parents=True)
        if "configMap" in volume:
            (generator,) = [g for g in kust["configMapGenerator"] if g["name"] == volume["configMap"]["name"]]
            for entry in generator["files"]:
                key, source = entry.split("=", 1)
                source = direction if source.endswith(".safetensors") else (kust_dir / source).resolve()
                shutil.copy(source, folder / key)
        elif "persistentVolumeClaim" in volume:
            (folder / "model").symlink_to(model)
        volume_dirs[volume["name"]] = folder
    mounts = {m["mountPath"]: volume_dirs[m["name"]] for m in container["volumeMounts"]}
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            env[item["name"]] = KEYS[item["name"]]  # from the rosi-tenant-keys Secret
        else:
            env[item["name"]] = rewrite(item["value"], mounts)
    env["ROSI_ADAPTER_CACHE"] = str(mounts["/var/cache/rosi-adapters"])  # the image's ENV, on its mount
    args = [rewrite(a, mounts) for a in container["args"]]
    return args, env, container


def compose_service(tmp: Path, model: Path, direction: Path) -> tuple[list[str], dict]:
    compose_dir = DEPLOY / "compose"
    directions = tmp / "directions"
    directions.mkdir()
    shutil.copy(direction, directions / direction.name)
    host_env = {"MODEL_DIR": str(model), "DIRECTION": direction.name, **KEYS}
    service = yaml.safe_load(validate.compose_interpolate((compose_dir / "docker-compose.yml").read_text(), host_env))
    service = service["services"]["vllm"]
    mounts = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        local = directions if source.endswith("/directions") else (compose_dir / source).resolve()
        mounts[target] = local
    env = {k: rewrite(str(v), mounts) for k, v in service["environment"].items()}
    env["ROSI_ADAPTER_CACHE"] = str(tmp / "adapters")
    return [rewrite(a, mounts) for a in service["command"]], env


def served_name(args: list[str]) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith("--served-model-name="))


def check_tenant_traffic(server: Server, model_name: str) -> None:
    def complete(key, **extra):
        return requests.post(server.url + "/v1/completions", timeout=120,
                             headers={"Authorization": f"Bearer {key}"} if key else {},
                             json={"model": model_name, "prompt": "Hello", "max_tokens": 4, "temperature": 0, **extra})

    acme = complete(KEYS["ACME_API_KEY"], user="recipe-user")
    assert acme.status_code == 200, acme.text
    assert acme.headers["x-rosi-tenant"] == "acme" and acme.headers["x-rosi-experiment"] == "acme-hardening-1"
    # kids-app keeps the example's safe policies: no raw prompts, so it chats
    refused = complete(KEYS["KIDS_APP_API_KEY"])
    assert refused.status_code == 400 and "raw_completions" in refused.text, refused.text
    kids = requests.post(server.url + "/v1/chat/completions", timeout=120,
                         headers={"Authorization": f"Bearer {KEYS['KIDS_APP_API_KEY']}"},
                         json={"model": model_name, "messages": [{"role": "user", "content": "Hello"}],
                               "max_tokens": 4, "temperature": 0})
    # default variant strict: a rank-1 adapter on the baked weights
    assert kids.status_code == 200, kids.text
    assert kids.headers["x-rosi-variant"] == "strict" and kids.headers["x-rosi-alpha"] == "96"
    assert complete(None).status_code == 401
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert "rosi_direction_info{" in metrics and 'tenant="kids-app"' in metrics


@pytest.fixture(scope="module")
def recipe_inputs(tiny_model, tmp_path_factory):
    """(model, direction): the tiny model stands in for the model volume, its direction for the ConfigMap's."""
    model = tiny_model("llama")
    return model, write_direction(model, tmp_path_factory.mktemp("recipes") / "tiny-llama.safetensors", alpha=8.0)


@pytest.fixture(scope="module")
def recipe_servers(recipe_inputs, tmp_path_factory):
    """Both recipes' servers, started at once: most of a start-up is Python imports and the model load, which
    overlap on the two cores, so the pair comes up in less time than one after the other."""
    model, direction = recipe_inputs
    k8s, compose = tmp_path_factory.mktemp("k8s"), tmp_path_factory.mktemp("compose")
    k8s_args, k8s_env, container = kubernetes_single_node(k8s, model, direction)
    tp = int(next(a.split("=")[1] for a in k8s_args if a.startswith("--tensor-parallel-size=")))
    compose_args, compose_env = compose_service(compose, model, direction)
    servers = {"k8s": launch(k8s_args, k8s_env, k8s / "k8s.log", tp),
               "compose": launch(compose_args, compose_env, compose / "compose.log", tp=1)}
    try:
        yield {"k8s": (servers["k8s"], k8s_args, container, tp), "compose": (servers["compose"], compose_args)}
    finally:
        for server in servers.values():
            server.stop()


def test_kubernetes_single_node_deployment_serves_with_tp2_and_the_plugin_in_both_workers(recipe_servers):
    server, args, container, tp = recipe_servers["k8s"]
    assert tp == 2
    up, _ = wait_until(server, timeout=400)
    assert up, server.log()[-4000:]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert requests.get(server.url + path, timeout=10).status_code == 200, probe
    log = server.log()
    assert log.count("rosi: direction=") == tp, log[-4000:]  # each TP worker injected its own copy
    assert "fingerprint verified" in log
    check_tenant_traffic(server, served_name(args))
    assert KEYS["ACME_API_KEY"] not in server.log()


def test_compose_vllm_service_serves_tenants(recipe_servers):
    server, args = recipe_servers["compose"]
    up, _ = wait_until(server, timeout=400)
    assert up, server.log()[-4000:]
    assert server.log().count("rosi: direction=") == 1
    check_tenant_traffic(server, served_name(args))
