"""What the request-policy check adds to the tenant layer's API-server CPU per request (issue 28).

    python -m benchmarks.p5_policy_check 2000 9                           # in one process, arms interleaved
    python -m benchmarks.p5_policy_check 2000 3 --baseline-tree /tmp/main # this tree vs another, per round

One process: the fake engine of `benchmarks.p5_tenant_layer`, a do-nothing
middleware, the tenant layer with its policy check, and the same layer twice
with the check replaced by a no-op (the second shows the noise between two
identical arms); repetitions interleaved, process CPU per request, medians.
``--baseline-tree DIR`` (a folder holding another ``rosi_vllm``, e.g. from
``git archive main rosi_vllm benchmarks``) instead runs `p5_tenant_layer`'s
in-process measurement for this tree and DIR in fresh interpreters, in turns,
for raw-prompt and chat requests, and prints the CPU each adds per request.
"""
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer

import rosi_vllm.serving.middleware as mwmod
from benchmarks._passthrough import PassThroughMiddleware
from benchmarks._setup import BENCH_KEY as KEY
from benchmarks.p5_tenant_layer import _MODEL, _TOKENS, CHAT_MESSAGES, _FakeEngine
from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import direction_for_checkpoint, save_direction
from rosi_vllm.serving.metrics import RosiMetrics
from rosi_vllm.serving.tenant_config import key_digest
from rosi_vllm.testing.tiny_models import build_tiny_model


def compare_trees(n: int, rounds: int, baseline: str) -> None:
    from benchmarks.p5_tenant_layer import in_process_subprocess

    root = str(Path(__file__).resolve().parents[1])
    out: dict = {}
    for chat in ("0", "1"):
        os.environ["ROSI_P5_CHAT"] = chat
        for r in range(rounds):
            for arm, tree in (("this tree", root), ("baseline", baseline)):
                work = Path(tempfile.mkdtemp(prefix="rosi-p5-policy-"))
                res = in_process_subprocess(n, 64, work, tree=tree)
                out.setdefault(("chat" if chat == "1" else "completions", arm), []).append(res["cpu_us_added"])
    for (kind, arm), values in out.items():
        print(kind, arm, "median CPU added per request (us):", round(statistics.median(values), 1),
              [round(v, 1) for v in values])


def _noop(*args, **kwargs):
    return None


def in_process_ab(n: int, reps: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="rosi-p5-policy-"))
    model = build_tiny_model("llama", work / "tiny")
    direction = save_direction(work / "d.safetensors", direction_for_checkpoint(
        model, torch.ones(model_shape(model).hidden_size), alpha=8.0, layer=1, method="benchmark"))
    config = work / "t.yaml"
    config.write_text(yaml.safe_dump({
        "version": 1, "policies": {"raw_completions": "allow"}, "variants": {"also-baked": 8, "standard": "baked"},
        "tenants": {"t": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
                          "experiment": {"name": "e", "arms": {"also-baked": 50, "standard": 50}}}}}))
    state = SimpleNamespace(  # the fields of vLLM's app.state the middleware reads
        vllm_config=SimpleNamespace(
            load_config=SimpleNamespace(load_format="rosi", model_loader_extra_config={"direction": str(direction)}),
            lora_config=None, model_config=SimpleNamespace(model=str(model))),
        openai_serving_models=SimpleNamespace(base_model_paths=[SimpleNamespace(name=_MODEL)]),
        engine_client=SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(model)))

    def layer():
        return mwmod.RosiTenantMiddleware(_FakeEngine(), str(config), RosiMetrics(CollectorRegistry()))

    real = mwmod.denial
    arms = {"passthrough": (PassThroughMiddleware(_FakeEngine()), real), "rosi (check a no-op)": (layer(), _noop),
            "rosi (policy check)": (layer(), real), "rosi (check a no-op) #2": (layer(), _noop)}
    statuses = set()

    def run(app, count, chat):
        async def one(i):
            request = {"model": _MODEL, "max_tokens": _TOKENS, "ignore_eos": True, "stream": True, "user": f"u{i}",
                       "stream_options": {"include_usage": True}}
            request.update({"messages": CHAT_MESSAGES} if chat else {"prompt": "hello"})
            body = json.dumps(request).encode()
            scope = {"type": "http", "path": "/v1/chat/completions" if chat else "/v1/completions",
                     "method": "POST", "app": SimpleNamespace(state=state),
                     "headers": [(b"authorization", f"Bearer {KEY}".encode()), (b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode())]}

            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message):
                if message["type"] == "http.response.start":
                    statuses.add(message["status"])

            await app(scope, receive, send)

        async def main():
            semaphore = asyncio.Semaphore(64)

            async def bounded(i):
                async with semaphore:
                    await one(i)

            await asyncio.gather(*(bounded(i) for i in range(count)))

        asyncio.run(main())

    for chat in (False, True):
        for app, check in arms.values():  # warm-up
            mwmod.denial = check
            run(app, 300, chat)
        if statuses != {200}:
            raise RuntimeError(f"the arms answered {sorted(statuses)}, not only 200")
        cpu = {arm: [] for arm in arms}
        for _ in range(reps):
            for arm, (app, check) in arms.items():
                mwmod.denial = check
                tick = time.process_time()
                run(app, n, chat)
                cpu[arm].append((time.process_time() - tick) / n * 1e6)
        mwmod.denial = real
        med = {arm: statistics.median(v) for arm, v in cpu.items()}
        added = {arm: med[arm] - med["passthrough"] for arm in arms if arm != "passthrough"}
        print("chat" if chat else "completions", "CPU per request (us):", {a: round(v, 1) for a, v in med.items()},
              "added by the layer:", {a: round(v, 1) for a, v in added.items()},
              "policy check vs no-op: %+.1f %%" % (100 * (added["rosi (policy check)"] / added["rosi (check a no-op)"]
                                                          - 1)), flush=True)


def main() -> None:
    n, reps = int(sys.argv[1]), int(sys.argv[2])
    if "--baseline-tree" in sys.argv:
        compare_trees(n, reps, sys.argv[sys.argv.index("--baseline-tree") + 1])
    else:
        in_process_ab(n, reps)


if __name__ == "__main__":
    main()
