"""P5 profile: where the API server's CPU goes under 64 concurrent streams, and how much of it is the tenant layer.

    python -m benchmarks.p5_profile                                  # this tree
    python -m benchmarks.p5_profile --baseline-tree /tmp/base        # and another rosi_vllm copy, same run

A real `vllm serve` (tiny model) with the rosi middleware takes streamed load
while py-spy samples the API-server process (not the engine core). A sample
counts as the tenant layer's own when its innermost ``rosi_vllm`` frame is
followed by no vLLM / Starlette / FastAPI / uvicorn frame (the layer's own code
and the stdlib it calls: json, hashlib, prometheus_client), so time spent in
the downstream app under the middleware's ``await`` is not charged to it.

Why a profile and not only latency: on this benchmark the API server is
CPU-bound, and on a shared 2-core machine e2e latency moves by far more between
rounds of the same arm than the layer can cost; the share of samples is stable.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from ._common import benchmark_parser, write_result
from ._setup import BENCH_KEY as KEY

_DOWNSTREAM = re.compile(r"(vllm/|starlette|fastapi|uvicorn|httptools)")


def own_share(raw: Path) -> dict:
    """Samples, and the tenant layer's own share of them, from py-spy's raw (collapsed) output."""
    total, own = 0, Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        mine = [i for i, f in enumerate(frames) if "rosi_vllm" in f]
        if not mine or any(_DOWNSTREAM.search(f) and "rosi_vllm" not in f for f in frames[mine[-1] + 1:]):
            continue
        own[re.sub(r" \(.*", "", frames[mine[-1]])] += n
    layer = sum(own.values())
    return {"samples": total, "layer_samples": layer, "layer_share": layer / total if total else None,
            "top": [[name, n] for name, n in own.most_common(8)]}


def profile_arm(tree: str, requests: int, concurrency: int, rate: int, work: Path, tag: str) -> dict:
    from rosi_vllm.testing.serve_process import start_server, wait_until

    from ._load import run_load, summarise
    from ._setup import direction_for, resolve_model, served_tenant_config, unique_prompts

    model = resolve_model("tiny", work)
    direction, _ = direction_for(model, work)
    config = served_tenant_config(work / "tenants.yaml")
    server = start_server(model, work / f"{tag}.log", extra={"direction": str(direction)},
                          args=["--middleware", "rosi_vllm.serving.middleware.RosiTenantMiddleware"],
                          env={"ROSI_TENANT_CONFIG": str(config), "PYTHONPATH": tree})
    raw = work / f"{tag}.txt"
    try:
        assert wait_until(server, timeout=600)[0], server.log()[-2000:]
        bodies = [{"model": str(model), "prompt": p, "max_tokens": 8, "ignore_eos": True}
                  for p in unique_prompts(requests, 8, tag)]
        headers = [{"Authorization": f"Bearer {KEY}"}] * requests
        run_load(server.url, [dict(b) for b in bodies[:128]], concurrency=concurrency, headers=headers[:128])
        spy = subprocess.Popen([shutil.which("py-spy") or "py-spy", "record", "--pid", str(server.proc.pid),
                                "--format", "raw", "-o", str(raw), "--rate", str(rate), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2)  # py-spy attached
        load = summarise(*run_load(server.url, bodies, concurrency=concurrency, headers=headers))
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    finally:
        server.stop()
    share = own_share(raw)
    share["layer_ms_per_request"] = share["layer_samples"] / rate / requests * 1000
    return {"load": load, **share}


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("--requests", type=int, default=2048)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--baseline-tree", help="folder with another rosi_vllm copy, profiled in the same run")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-p5-profile-"))
    root = str(Path(__file__).resolve().parents[1])
    arms = {"this tree": root, **({"baseline": args.baseline_tree} if args.baseline_tree else {})}
    result = {"requests": args.requests, "concurrency": args.concurrency, "rate_hz": args.rate,
              "arms": {name: profile_arm(tree, args.requests, args.concurrency, args.rate, work, f"arm{i}")
                       for i, (name, tree) in enumerate(arms.items())}}
    path = write_result("p5_profile", result, Path(args.out_dir), args.command)
    for name, arm in result["arms"].items():
        print(f"{name}: layer {arm['layer_share']:.1%} of API-server samples, {arm['layer_ms_per_request']:.3f} ms "
              f"per request; top {arm['top'][:3]}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
