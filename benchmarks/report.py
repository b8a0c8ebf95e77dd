"""The results table of benchmarks/README.md, read from the JSON files in results/.

    python -m benchmarks.report     (the same as python docs/generate.py: rewrites every generated doc block)

Every number in the table is read from a result file written by a benchmark
command; the table names the command and the machine beside each row.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._common import RESULTS, median


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


def p1_noise_floor(p1: dict, level: str) -> float | None:
    """Largest relative difference between two *base* rounds at this level: what identical servers vary by."""
    bases = [r["base"][level] for r in p1["rounds"] if "base" in r]
    if len(bases) < 2:
        return None
    keys = [("decode", "output_tokens_per_s"), ("prefill", "prefill_requests_per_s"), ("decode", "ttft_p50_s"),
            ("decode", "e2e_p50_s")]
    return max(abs(bases[i][a][b] / bases[j][a][b] - 1) for a, b in keys
               for i in range(len(bases)) for j in range(len(bases)) if i != j)


def rows() -> list[str]:
    out = ["| benchmark | result | target | command |", "|---|---|---|---|"]
    p1 = _load("p1_inference")
    if p1:
        for level, r in p1["ratios_rosi_over_base"].items():
            noise = p1_noise_floor(p1, level)
            out.append(f"| P1 inference, concurrency {level} | decode tok/s ×{_fmt(r['decode_tokens_per_s'])}, "
                       f"prefill req/s ×{_fmt(r['prefill_requests_per_s'])}, TTFT p50 ×{_fmt(r['ttft_p50'])}, "
                       f"e2e p50 ×{_fmt(r['e2e_p50'])} (rosi / base); base vs base across rounds: "
                       f"{_fmt(noise, '.0%')} | throughput ≥ 0.995 | `{p1['command']}` |")
    p2 = _load("p2_load_time")
    if p2:
        for r in p2["in_process"]:
            out.append(f"| P2 load, {r['model']} ({r['weights_gb']:.2f} GB) | stream+copy ×"
                       f"{_fmt(r['ratio_rosi_over_base'])} (base {median(r['base_s']):.2f} s, rosi "
                       f"{median(r['rosi_s']):.2f} s); delta math {median(r['delta_math_s']):.3f} s = "
                       f"{r['delta_math_s_per_gb']:.3f} s/GB | ≤ 1.05 | `{p2['command']}` |")
        for r in p2["served"]:
            workers = ", ".join(f"{w['delta_math_ms']:.0f} ms" for w in r["rosi_workers"]) or "–"
            out.append(f"| P2 served start-up, TP={r['tp']}, {r['arm']} | {r['wall_to_health_s']:.1f} s to /health; "
                       f"vLLM 'Loading weights' {r['vllm_loading_weights_s']} s; rosi delta math per worker: "
                       f"{workers} | – | (same) |")
    p3 = _load("p3_adapters")
    if p3:
        for arm, per in p3["throughput_ratio_vs_baked"].items():
            cells = ", ".join(f"c={lv}: ×{_fmt(v, '.2f')}" for lv, v in per.items())
            out.append(f"| P3 {arm} vs baked (tok/s) | {cells} | ≥ 0.95 at c=16 | `{p3['command']}` |")
    p4 = _load("p4_harden_time")
    if p4:
        for r in p4["rows"]:
            cells = ", ".join(f"{stage} {s:.0f} s" for stage, s in r["stage_seconds"].items())
            target = f"≤ {r['target_minutes']:g} min" if r["target_minutes"] else "–"
            out.append(f"| P4 `rosi harden` {r['model']} (budget {r['time_budget_min']:g} min) | "
                       f"{r['seconds'] / 60:.1f} min: {cells} | {target} | `{r['reproduce']}`, then "
                       f"`{p4['command']}` |")
    p5 = _load("p5_tenant_layer")
    if p5:
        ip = p5["in_process"]
        served = p5.get("served")
        extra = (f"; real server e2e p50 vs plain: rosi +{served['e2e_p50_added_ms']:.1f} ms, a do-nothing "
                 f"--middleware +{served.get('passthrough_e2e_p50_added_ms', float('nan')):.1f} ms, so rosi vs "
                 f"do-nothing {served.get('rosi_vs_passthrough_e2e_p50_added_ms', float('nan')):+.1f} ms; rosi's own "
                 f"time there {served.get('own_overhead_mean_ms') or float('nan'):.2f} ms" if served else "")
        cpu_in = ip.get("cpu_us_per_request")
        if cpu_in:  # CPU per request beside a do-nothing middleware, same fake engine
            extra += "; in-process CPU per request: " + ", ".join(f"{arm} {v:.0f} µs" for arm, v in cpu_in.items())
        out.append(f"| P5 tenant layer, {ip['concurrency']} concurrent | own time p50 {ip['overhead_p50_ms']:.3f} ms, "
                   f"p99 {ip['overhead_p99_ms']:.3f} ms{extra} | p50 ≤ 1 ms | `{p5['command']}` |")
        if served and isinstance(served.get("e2e_p99_vs_passthrough_ms"), dict):
            p50, p99 = served["e2e_p50_vs_passthrough_ms"], served["e2e_p99_vs_passthrough_ms"]
            cpu = served["api_server_cpu_ms_per_request"]
            cells = "; ".join(f"{arm}: e2e p50 {p50[arm]:+.1f} ms, p99 {p99[arm]:+.1f} ms, API-server CPU "
                              f"{cpu[arm]:.2f} ms/request (pass-through {cpu['passthrough']:.2f})" for arm in p50)
            rounds = len(served["rounds"]["plain"])
            loop = served.get("closed_loop")
            if loop:  # Little's law: e2e ≈ concurrency / throughput on a saturated server
                cells += ("; closed-loop prediction (concurrency × added API-server CPU): " + ", ".join(
                    f"{arm} {v:+.1f} ms" for arm, v in loop["predicted_e2e_added_ms_from_cpu"].items()))
            out.append(f"| P5 rosi vs do-nothing `--middleware`, same run, {rounds} interleaved rounds (medians) | "
                       f"{cells} | within 2 ms | `{p5['command']}` |")
    return out


def machines() -> str:
    """The CPU models of the machines the (non-smoke) results were measured on."""
    found = {json.loads(p.read_text())["machine"].get("cpu_model", "?") for p in RESULTS.glob("*.json")
             if not p.stem.endswith("_smoke")}
    return ", ".join(sorted(found)) or "none yet"


if __name__ == "__main__":
    # The table lives in a generated block of benchmarks/README.md; docs/generate.py rewrites every block.
    import runpy

    runpy.run_path(str(Path(__file__).resolve().parents[1] / "docs" / "generate.py"), run_name="__main__")
