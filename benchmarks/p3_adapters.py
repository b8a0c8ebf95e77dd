"""P3 per-tenant tier: α served as rank-1 LoRA adapters vs baked into the weights.

    python -m benchmarks.p3_adapters               # full: SmolLM2-135M, concurrency 1/4/16/64, 1/4/16 tenants
    python -m benchmarks.p3_adapters --smoke       # CI: tiny model, small grid

Three arms, one server up at a time:

* ``baked``: `--load-format rosi` at the tenant's α, no LoRA (what a one-deployment-per-α
  operator runs);
* ``lora-default``: the same server with ``--enable-lora``, requests to the baked α
  (what enabling the tenant tier costs the default tenant);
* ``adapters``: the same LoRA server, requests spread round-robin over 1/4/16 distinct
  ``rosi-alpha-*`` adapters (= tenants with their own α), registered with
  ``--lora-modules``.

Ratios are adapter (or lora-default) throughput / baked throughput at the same
concurrency; the target is a cost ≤ 5 % at 16 concurrent.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, write_result
from ._load import run_load, summarise
from ._setup import direction_for, resolve_model, unique_prompts

BAKED_ALPHA = 8.0


def export_adapters(model: Path, direction: Path, n: int, work: Path) -> dict[str, Path]:
    from rosi_vllm.core.loader_config import RosiLoaderConfig
    from rosi_vllm.serving.routing import adapter_name
    from rosi_vllm.serving.variant_adapters import VariantAdapterStore

    loader_config, _ = RosiLoaderConfig.from_extra_config({"direction": str(direction), "alpha": BAKED_ALPHA})
    store = VariantAdapterStore(model, loader_config, BAKED_ALPHA, work / "adapters")
    alphas = [BAKED_ALPHA + 4.0 * (i + 1) for i in range(n)]
    return {adapter_name(a): store.adapter_for(a) for a in alphas}


def measure(url: str, models: list[str], levels: list[int], requests: int, max_tokens: int, tag: str) -> dict:
    out = {}
    run_load(url, [{"model": m, "prompt": "warm up", "max_tokens": 2} for m in models], concurrency=len(models))
    for level in levels:
        n = max(requests, level)
        bodies = [{"model": models[i % len(models)], "prompt": p, "max_tokens": max_tokens, "ignore_eos": True,
                   "temperature": 0} for i, p in enumerate(unique_prompts(n, 16, f"{tag}{level}"))]
        out[str(level)] = summarise(*run_load(url, bodies, concurrency=level))
    return out


def plot(table: dict, path: Path) -> None:
    with figure(path, (8, 4)) as (fig, ax):
        for arm, per_level in table.items():
            levels = list(per_level)
            ax.plot([int(x) for x in levels], [per_level[x] for x in levels], marker="o", label=arm)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhline(0.95, color="green", linestyle=":", label="target at 16 concurrent (≥ 0.95)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel("output tokens/s relative to baked")
        ax.set_title("P3 per-tenant α as rank-1 adapters vs baked weights")
        ax.legend(fontsize=7)


def main(argv=None) -> int:
    from rosi_vllm.testing.serve_process import start_server, wait_until

    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--tenants", default="1,4,16")
    parser.add_argument("--requests", type=int, default=8, help="per cell (at least the concurrency)")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.concurrency, args.tenants, args.requests, args.max_tokens = "tiny", "1,4", "1,4", 4, 4
    levels = [int(x) for x in args.concurrency.split(",")]
    tenant_counts = [int(x) for x in args.tenants.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rosi-p3-"))
    model = resolve_model(args.model, work)
    direction, direction_kind = direction_for(model, work, alpha=BAKED_ALPHA)
    adapters = export_adapters(model, direction, max(tenant_counts), work)
    extra = {"direction": str(direction), "alpha": BAKED_ALPHA}
    results = {}
    server = start_server(model, work / "baked.log", extra=extra)
    try:
        assert wait_until(server, timeout=600)[0], server.log()[-2000:]
        results["baked"] = measure(server.url, [str(model)], levels, args.requests, args.max_tokens, "b")
    finally:
        server.stop()
    lora_args = ["--enable-lora", "--max-lora-rank", "1", "--max-loras", str(max(tenant_counts)),
                 "--max-cpu-loras", str(max(tenant_counts)),
                 "--lora-modules", *[f"{name}={path}" for name, path in adapters.items()]]
    server = start_server(model, work / "lora.log", extra=extra, args=lora_args)
    try:
        assert wait_until(server, timeout=600)[0], server.log()[-2000:]
        results["lora-default"] = measure(server.url, [str(model)], levels, args.requests, args.max_tokens, "l")
        names = list(adapters)
        for k in tenant_counts:
            results[f"adapters x{k}"] = measure(server.url, names[:k], levels, args.requests, args.max_tokens, f"a{k}")
    finally:
        server.stop()
    baked = results["baked"]
    table = {arm: {lv: per[lv]["output_tokens_per_s"] / baked[lv]["output_tokens_per_s"] for lv in per}
             for arm, per in results.items() if arm != "baked"}
    name = "p3_adapters_smoke" if args.smoke else "p3_adapters"
    out_dir = Path(args.out_dir)
    path = write_result(name, {"model": args.model, "direction": direction_kind, "baked_alpha": BAKED_ALPHA,
                               "max_tokens": args.max_tokens, "throughput_ratio_vs_baked": table,
                               "arms": results}, out_dir, args.command)
    plot(table, out_dir / f"{name}.png")
    print(json.dumps(table, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
