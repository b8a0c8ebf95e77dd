"""P5 tenant/A-B layer latency: what the rosi middleware adds per request, at 64 concurrent.

    python -m benchmarks.p5_tenant_layer           # full: 5,000 requests in-process + real vllm serve
    python -m benchmarks.p5_tenant_layer --smoke   # CI: 512 requests in-process only

1. In-process: the middleware wraps a *fake* instantaneous streaming engine
   (named so: the point is to isolate the layer's own work), 64 requests in
   flight; the middleware's own per-request time (auth, routing, body rewrite,
   SSE capture, judge, metrics) is recorded exactly, p50/p99. Target ≤ 1 ms p50.
2. With the real server (full run): the same tiny model served plain, with a
   do-nothing pass-through middleware (what vLLM's ``--middleware`` hook itself
   costs) and with the rosi middleware, 64 concurrent streamed requests, arms
   alternating; e2e p50 differences.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import yaml

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, median, percentile, write_with_plot
from ._setup import BENCH_KEY as KEY

_MODEL = "served"
#: the `judge_sample_rate` of the sampled arm (the refusal judge reads one response in ten)
SAMPLED_JUDGE_RATE = 0.1
_TOKENS = 8  # as the served arms: max_tokens 8, ignore_eos
#: ROSI_P5_CHAT=1: the in-process arms send chat requests (what the request policies read), not raw prompts
CHAT = os.environ.get("ROSI_P5_CHAT") == "1"
CHAT_MESSAGES = [{"role": "system", "content": "You are a helpful assistant. Answer briefly and politely."},
                 {"role": "user", "content": "How do I sort a list of numbers in Python, largest first? " * 4}]


def _vllm_event(obj) -> bytes:
    """One server-sent event as vLLM writes it (pydantic's compact JSON, one event per message)."""
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_EVENTS = [_vllm_event({"id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1764130000,
                        "model": _MODEL, "choices": [{"index": 0, "text": f" token{i}", "logprobs": None,
                                                      "finish_reason": None if i < _TOKENS - 1 else "length",
                                                      "stop_reason": None}]}) for i in range(_TOKENS)]
_USAGE = _vllm_event({"id": "cmpl-0123456789abcdef", "object": "text_completion", "created": 1764130000,
                      "model": _MODEL, "choices": [],
                      "usage": {"prompt_tokens": 9, "total_tokens": 9 + _TOKENS, "completion_tokens": _TOKENS}})


class _FakeEngine:
    """Fake downstream ASGI app (no model): streams what vLLM streams for an 8-token completion, at once."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})
        for event in (*_EVENTS, _USAGE, b"data: [DONE]\n\n"):
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Recorder:
    def __init__(self):
        self.values = []

    def observe(self, value):
        self.values.append(value)


def in_process(n: int, concurrency: int, work: Path, reps: int = 5) -> dict:
    """The layer's own cost without a server: its self-timed overhead, and CPU per request beside a do-nothing
    middleware around the same fake engine (process CPU time, repetitions interleaved, median)."""
    import torch
    from prometheus_client import CollectorRegistry

    from rosi_vllm.core.checkpoint import model_shape
    from rosi_vllm.core.direction_file import direction_for_checkpoint, save_direction
    from rosi_vllm.serving.metrics import RosiMetrics
    from rosi_vllm.serving.middleware import RosiTenantMiddleware
    from rosi_vllm.serving.tenant_config import key_digest
    from rosi_vllm.testing.tiny_models import build_tiny_model

    from ._passthrough import PassThroughMiddleware

    model = build_tiny_model("llama", work / "tiny")
    direction = save_direction(work / "d.safetensors", direction_for_checkpoint(
        model, torch.ones(model_shape(model).hidden_size), alpha=8.0, layer=1, method="benchmark"))
    from transformers import AutoTokenizer

    from rosi_vllm.serving.tenant_config import TenantFile

    config = work / "tenants.yaml"
    spec = {"version": 1, "variants": {"also-baked": 8, "standard": "baked"},  # both the baked alpha: no adapter
            "tenants": {"t": {"api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
                              "experiment": {"name": "e", "arms": {"also-baked": 50, "standard": 50}}}}}
    if "policies" in TenantFile.model_fields:  # raw prompts are refused by default; a baseline tree may predate it
        spec["policies"] = {"raw_completions": "allow"}
    config.write_text(yaml.safe_dump(spec))
    metrics = RosiMetrics(CollectorRegistry())
    recorder = metrics.overhead = _Recorder()
    mw = RosiTenantMiddleware(_FakeEngine(), config_path=str(config), metrics=metrics)
    sampled_config = work / "tenants-sampled.yaml"
    sampled_config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()),
                                              "judge_sample_rate": SAMPLED_JUDGE_RATE}))
    sampled = RosiTenantMiddleware(_FakeEngine(), config_path=str(sampled_config),
                                   metrics=RosiMetrics(CollectorRegistry()))
    state = SimpleNamespace(  # the fields of vLLM's app.state the middleware reads
        vllm_config=SimpleNamespace(
            load_config=SimpleNamespace(load_format="rosi", model_loader_extra_config={"direction": str(direction)}),
            lora_config=None, model_config=SimpleNamespace(model=str(model))),
        openai_serving_models=SimpleNamespace(base_model_paths=[SimpleNamespace(name=_MODEL)]),
        engine_client=SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(model)))  # its control tokens
    arms = {"passthrough": PassThroughMiddleware(_FakeEngine()), "rosi": mw, "rosi-sampled": sampled}

    statuses = set()

    async def one(app, i):
        request = {"model": _MODEL, "max_tokens": _TOKENS, "ignore_eos": True,
                   "stream": True, "stream_options": {"include_usage": True}, "user": f"user-{i}"}
        request.update({"messages": CHAT_MESSAGES} if CHAT else {"prompt": "hello"})
        body = json.dumps(request).encode()
        path = "/v1/chat/completions" if CHAT else "/v1/completions"
        scope = {"type": "http", "path": path, "method": "POST", "app": SimpleNamespace(state=state),
                 "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {KEY}".encode()),
                             (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.add(message["status"])

        await app(scope, receive, send)

    def run(app, count):
        async def main():
            semaphore = asyncio.Semaphore(concurrency)

            async def bounded(i):
                async with semaphore:
                    await one(app, i)

            await asyncio.gather(*(bounded(i) for i in range(count)))

        asyncio.run(main())

    for app in arms.values():  # warm-up (imports, first bind)
        run(app, min(n, 500))
    if statuses != {200}:  # a fail-closed layer answers 503 at once: measuring that would flatter it
        raise RuntimeError(f"p5: the in-process arms answered {sorted(statuses)}, not only 200")
    recorder.values.clear()
    cpu = {arm: [] for arm in arms}
    started = time.perf_counter()
    for _ in range(reps):
        for arm, app in arms.items():
            tick = time.process_time()
            run(app, n)
            cpu[arm].append((time.process_time() - tick) / n * 1e6)
    wall = time.perf_counter() - started
    values = recorder.values
    cpu_us = {arm: median(v) for arm, v in cpu.items()}
    return {"requests": n, "repetitions": reps, "concurrency": concurrency, "wall_s": wall,
            "events_per_request": len(_EVENTS) + 3,
            "overhead_p50_ms": median(values) * 1000, "overhead_p99_ms": percentile(values, 0.99) * 1000,
            "overhead_mean_ms": sum(values) / len(values) * 1000,
            "cpu_us_per_request": cpu_us, "cpu_us_added": cpu_us["rosi"] - cpu_us["passthrough"],
            "sampled_judge_rate": SAMPLED_JUDGE_RATE,
            "cpu_us_added_sampled": cpu_us["rosi-sampled"] - cpu_us["passthrough"]}


def in_process_subprocess(n: int, concurrency: int, work: Path, *, tree: str | None = None,
                          multiprocess_metrics: bool = False) -> dict:
    """`in_process` in a fresh interpreter: with another copy of ``rosi_vllm`` (`tree`, e.g. the baseline's),
    or with prometheus-client in multiprocess mode (what ``vllm serve --api-server-count N`` switches it to).

    The benchmark code is this one. `tree`: a folder holding just a link to the
    tree's ``rosi_vllm`` goes first on the path. `multiprocess_metrics`:
    ``PROMETHEUS_MULTIPROC_DIR`` is set before prometheus-client is imported
    (it picks its value class at import), so every metric update writes to a
    memory-mapped file as in vLLM's multi-API-server mode. Each run has its own
    do-nothing control, so runs are compared on CPU *added*.
    """
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    work.mkdir(parents=True, exist_ok=True)
    path = [root]
    env = dict(os.environ)
    if tree:
        shim = work / "package"
        shim.mkdir(exist_ok=True)
        if not (shim / "rosi_vllm").exists():
            (shim / "rosi_vllm").symlink_to(Path(tree).resolve() / "rosi_vllm")
        path.insert(0, str(shim))
    if multiprocess_metrics:
        (work / "prometheus").mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(work / "prometheus")
    env["PYTHONPATH"] = os.pathsep.join(path)
    code = ("import json, sys; from pathlib import Path; from benchmarks.p5_tenant_layer import in_process; "
            "import rosi_vllm; print('RESULT' + json.dumps({**in_process(int(sys.argv[1]), int(sys.argv[2]), "
            "Path(sys.argv[3])), 'package': str(Path(rosi_vllm.__file__).parent)}))")
    # cwd is the work folder: ``python -c`` puts the cwd first on the path, which would shadow the shim
    proc = subprocess.run([sys.executable, "-c", code, str(n), str(concurrency), str(work)],
                          env=env, cwd=work, capture_output=True, text=True, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _served_overhead_ms(url: str) -> float | None:
    """Mean of the middleware's own per-request time, from the live server's histogram."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.name.startswith("rosi_middleware_overhead_seconds_") and not s.labels}
    count = values.get("rosi_middleware_overhead_seconds_count")
    return values["rosi_middleware_overhead_seconds_sum"] / count * 1000 if count else None


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (the API server; the engine core is a child, not counted)."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def served(requests: int, concurrency: int, rounds: int, work: Path, baseline_tree: str | None = None) -> dict:
    """The same load against plain / pass-through / rosi servers, all up at once, measured in turn, round by round.

    `baseline_tree`: a folder holding another copy of ``rosi_vllm`` (e.g. ``git archive <commit> rosi_vllm``)
    served as one more arm, so a change is compared with its predecessor side by side in the same run.
    Besides latency, each arm records the API-server process's CPU time per request: on a CPU-bound API
    server every added microsecond of work becomes queueing delay for all streams.
    """
    from rosi_vllm.testing.serve_process import start_server, wait_until

    from ._load import run_load, summarise
    from ._setup import direction_for, resolve_model, served_tenant_config, unique_prompts

    model = resolve_model("tiny", work)
    direction, _ = direction_for(model, work)
    config = served_tenant_config(work / "served-tenants.yaml")
    sampled = served_tenant_config(work / "served-tenants-sampled.yaml", judge_sample_rate=SAMPLED_JUDGE_RATE)
    root = str(Path(__file__).resolve().parents[1])
    rosi = "rosi_vllm.serving.middleware.RosiTenantMiddleware"
    arms = {"plain": (None, root, None), "passthrough": ("benchmarks._passthrough.PassThroughMiddleware", root, None),
            "middleware": (rosi, root, config), "middleware-sampled": (rosi, root, sampled)}
    if baseline_tree:
        arms["middleware-baseline"] = (rosi, baseline_tree, config)
    out = {arm: [] for arm in arms}
    servers = {}
    try:
        # Every arm's server is up at once and the load goes to them in turn, the order rotating each round:
        # whatever else the machine is doing hits every arm alike (a server idles while another is measured).
        for arm, (middleware, tree, tenants) in arms.items():
            args = ["--middleware", middleware] if middleware else []
            env = {"PYTHONPATH": tree, "VLLM_CPU_KVCACHE_SPACE": "1",
                   **({"ROSI_TENANT_CONFIG": str(tenants)} if tenants else {})}
            servers[arm] = start_server(model, work / f"{arm}.log", extra={"direction": str(direction)},
                                        args=args, env=env)
        for arm, server in servers.items():
            assert wait_until(server, timeout=900)[0], server.log()[-2000:]
        headers = [{"Authorization": f"Bearer {KEY}"}] * requests
        for arm, server in servers.items():  # warm-up
            run_load(server.url, [{"model": str(model), "prompt": p, "max_tokens": 8, "ignore_eos": True}
                                  for p in unique_prompts(64, 8, f"warm-{arm}")], concurrency=concurrency,
                     headers=headers[:64])
        names = list(servers)
        for r in range(rounds):
            for arm in names[r % len(names):] + names[: r % len(names)]:
                server = servers[arm]
                bodies = [{"model": str(model), "prompt": p, "max_tokens": 8, "ignore_eos": True}
                          for p in unique_prompts(requests, 8, f"{arm}{r}")]
                cpu = _cpu_s(server.proc.pid)
                row = summarise(*run_load(server.url, bodies, concurrency=concurrency, headers=headers))
                row["api_server_cpu_ms_per_request"] = (_cpu_s(server.proc.pid) - cpu) / requests * 1000
                row["round"] = r
                out[arm].append(row)
        for arm, (_, _, tenants) in arms.items():
            if tenants:
                out[arm][-1]["own_overhead_mean_ms"] = _served_overhead_ms(servers[arm].url)
    finally:
        for server in servers.values():
            server.stop()

    def med(arm, key):
        return median(x[key] for x in out[arm])

    def paired(arm, key):
        """Median over rounds of (arm − pass-through) within the same round: drift between rounds cancels."""
        return median((a[key] - b[key]) * 1000 for a, b in zip(out[arm], out["passthrough"], strict=True))

    result = {"rounds": out, "arms": list(arms), "servers_up_together": True}
    for key, name in (("e2e_p50_s", "e2e_p50"), ("e2e_p99_s", "e2e_p99"), ("ttft_p50_s", "ttft_p50")):
        result[f"{name}_added_ms"] = {arm: (med(arm, key) - med("plain", key)) * 1000 for arm in arms}
        result[f"{name}_vs_passthrough_ms"] = {arm: paired(arm, key) for arm in arms if arm != "passthrough"}
    result["api_server_cpu_ms_per_request"] = {arm: med(arm, "api_server_cpu_ms_per_request") for arm in arms}
    # Closed loop: `concurrency` streams, each sending its next request when the last one ends. On a saturated
    # server e2e ≈ concurrency / throughput (Little's law), so every ms of API-server work added per request
    # reaches every request `concurrency` times over (the throughput prediction is paired per round).
    cpu_ms = result["api_server_cpu_ms_per_request"]
    result["closed_loop"] = {
        "concurrency": concurrency,
        "requests_per_s": {arm: med(arm, "requests_per_s") for arm in arms},
        "predicted_e2e_added_ms_from_cpu": {arm: concurrency * (cpu_ms[arm] - cpu_ms["passthrough"])
                                            for arm in arms if arm != "passthrough"},
        "predicted_e2e_added_ms_from_throughput": {
            arm: median((concurrency / a["requests_per_s"] - concurrency / b["requests_per_s"]) * 1000
                        for a, b in zip(out[arm], out["passthrough"], strict=True))
            for arm in arms if arm != "passthrough"},
    }
    own = [x["own_overhead_mean_ms"] for x in out["middleware"] if x.get("own_overhead_mean_ms") is not None]
    result["own_overhead_mean_ms"] = median(own)
    # the figures earlier results and the docs read
    result["e2e_p50_added_ms"] = result["e2e_p50_added_ms"]["middleware"]
    result["e2e_p50_ratio"] = med("middleware", "e2e_p50_s") / med("plain", "e2e_p50_s")
    result["passthrough_e2e_p50_added_ms"] = (med("passthrough", "e2e_p50_s") - med("plain", "e2e_p50_s")) * 1000
    result["rosi_vs_passthrough_e2e_p50_added_ms"] = result["e2e_p50_vs_passthrough_ms"]["middleware"]
    return result


def plot(result: dict, path: Path) -> None:
    """Left: the layer's CPU per request in-process; right: what it adds to e2e on the real server, beside the
    closed-loop prediction (concurrency × added API-server CPU) and the ±2 ms target."""
    ip, sv = result["in_process"], result.get("served")
    with figure(path, (11, 4) if sv else (6, 4), ncols=2 if sv else 1) as (fig, axes):
        ax = axes[0] if sv else axes
        cpu = ip["cpu_us_per_request"]
        ax.bar(list(cpu), list(cpu.values()))
        ax.set_ylabel("µs CPU per request (fake engine)")
        ax.set_title(f"in-process, {ip['concurrency']} concurrent")
        if sv:
            ax = axes[1]
            arms = [a for a in sv["e2e_p50_vs_passthrough_ms"] if a != "plain"]
            x = range(len(arms))
            ax.bar([i - 0.27 for i in x], [sv["e2e_p50_vs_passthrough_ms"][a] for a in arms], 0.27, label="e2e p50")
            ax.bar(list(x), [sv["e2e_p99_vs_passthrough_ms"][a] for a in arms], 0.27, label="e2e p99")
            ax.bar([i + 0.27 for i in x], [sv["closed_loop"]["predicted_e2e_added_ms_from_cpu"][a] for a in arms],
                   0.27, label="predicted: concurrency × added CPU")
            ax.axhspan(-2, 2, color="green", alpha=0.15, label="target ±2 ms")
            ax.set_xticks(list(x), arms)
            ax.set_ylabel("ms vs do-nothing --middleware")
            ax.set_title("real vllm serve, paired per round")
            ax.legend(fontsize=7)


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--served-requests", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline-tree", help="folder with another rosi_vllm copy to serve as one more arm and "
                                                "to measure in-process beside this one "
                                                "(e.g. from `git archive COMMIT rosi_vllm benchmarks`)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-p5-"))
    n = 512 if args.smoke else args.requests
    result = {"in_process": in_process(n, args.concurrency, work)}
    if args.baseline_tree:
        result["in_process_baseline"] = in_process_subprocess(n, args.concurrency, work / "baseline",
                                                               tree=args.baseline_tree)
    result["in_process_multiprocess_metrics"] = in_process_subprocess(n, args.concurrency, work / "multiprocess",
                                                                      multiprocess_metrics=True)
    if not args.smoke:
        result["served"] = served(args.served_requests, args.concurrency, args.rounds, work, args.baseline_tree)
    name = "p5_tenant_layer_smoke" if args.smoke else "p5_tenant_layer"
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    print(json.dumps({k: v for k, v in result.items() if k != "served"} | (
        {"served_e2e_p50_added_ms": result["served"]["e2e_p50_added_ms"]} if "served" in result else {}), indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
