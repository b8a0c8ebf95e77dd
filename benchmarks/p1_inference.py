"""P1 inference overhead: `--load-format rosi` vs the default loader, same vLLM, same flags.

    python -m benchmarks.p1_inference                 # full: SmolLM2-135M, 2 rounds, concurrency 1/4/16
    python -m benchmarks.p1_inference --smoke         # CI: tiny model, seconds of load

Rounds alternate base, rosi, base, rosi, ... (one server up at a time, so the
two never compete for the cores); every round measures every concurrency level
twice: decode (streamed, fixed output length with ignore_eos) and prefill
(long prompts, one output token). Ratios are rosi / base of the medians over
rounds: throughput ratios ≥ 0.995 and latency ratios ≤ 1.005 meet the target.
Why there is nothing to measure by design: the rosi loader only changes tensor
*values* while loading; the served module, shapes, dtypes and kernels are the
default loader's.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, median, write_result
from ._load import run_load, summarise
from ._setup import direction_for, resolve_model, unique_prompts


def measure_server(url: str, model: str, levels: list[int], requests_per_level: int, prompt_words: int,
                   max_tokens: int, tag: str) -> dict:
    out = {}
    warm = [{"model": model, "prompt": p, "max_tokens": 4, "ignore_eos": True} for p in unique_prompts(4, 8, tag + "w")]
    run_load(url, warm, concurrency=4)
    for level in levels:
        n = max(requests_per_level, level)
        decode = [{"model": model, "prompt": p, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
                  for p in unique_prompts(n, 8, f"{tag}d{level}")]
        prefill = [{"model": model, "prompt": p, "max_tokens": 1, "temperature": 0}
                   for p in unique_prompts(n, prompt_words, f"{tag}p{level}")]
        d = summarise(*run_load(url, decode, concurrency=level))
        p = summarise(*run_load(url, prefill, concurrency=level))
        p["prefill_requests_per_s"] = p.pop("requests_per_s")
        out[str(level)] = {"decode": d, "prefill": p}
    return out


def ratios(rounds: list[dict], levels: list[int]) -> dict:
    def med(arm, level, phase, key):
        return median(r[arm][str(level)][phase][key] for r in rounds if r.get(arm))

    table = {}
    for level in levels:
        table[str(level)] = {
            "decode_tokens_per_s": med("rosi", level, "decode", "output_tokens_per_s")
            / med("base", level, "decode", "output_tokens_per_s"),
            "prefill_requests_per_s": med("rosi", level, "prefill", "prefill_requests_per_s")
            / med("base", level, "prefill", "prefill_requests_per_s"),
            "ttft_p50": med("rosi", level, "decode", "ttft_p50_s") / med("base", level, "decode", "ttft_p50_s"),
            "e2e_p50": med("rosi", level, "decode", "e2e_p50_s") / med("base", level, "decode", "e2e_p50_s"),
        }
    return table


def plot(table: dict, path: Path, title: str) -> None:
    levels = list(table)
    keys = ["decode_tokens_per_s", "prefill_requests_per_s", "ttft_p50", "e2e_p50"]
    with figure(path, (9, 4)) as (fig, ax):
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            ax.bar([j + i * width for j in range(len(levels))], [table[lv][key] for lv in levels], width, label=key)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.axhspan(0.995, 1.005, color="green", alpha=0.15, label="target band (±0.5 %)")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(levels))], [f"concurrency {lv}" for lv in levels])
        ax.set_ylim(0.8, 1.2)
        ax.set_ylabel("rosi / base")
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=2)


def main(argv=None) -> int:
    from rosi_vllm.testing.serve_process import start_server, wait_until

    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--direction", default=None, help="default: directions/<model>.safetensors if shipped")
    parser.add_argument("--rounds", type=int, default=2, help="base/rosi pairs")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=16, help="per level and phase (at least the level)")
    parser.add_argument("--prompt-words", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-model-len", type=int, default=1024)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.rounds, args.concurrency, args.requests, args.max_tokens = "tiny", 1, "1,4", 4, 8
        args.prompt_words, args.max_model_len = 40, 512
    levels = [int(x) for x in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="rosi-p1-"))
    model = resolve_model(args.model, work)
    shipped = args.direction or str(Path(__file__).resolve().parents[1] / "directions" / f"{args.model}.safetensors")
    direction, direction_kind = direction_for(model, work, shipped)
    from tqdm import tqdm

    rounds = []
    schedule = [(i, arm) for i in range(args.rounds) for arm in ("base", "rosi")]
    for i, arm in tqdm(schedule, desc="P1 rounds", unit="server"):
        if len(rounds) <= i:
            rounds.append({})
        kwargs = {"load_format": None} if arm == "base" else {"extra": {"direction": str(direction)}}
        server = start_server(model, work / f"{arm}-{i}.log", args=["--max-model-len", str(args.max_model_len)], **kwargs)
        try:
            up, _ = wait_until(server, timeout=600)
            if not up:
                raise SystemExit(f"{arm} server did not start:\n{server.log()[-2000:]}")
            rounds[i][arm] = measure_server(server.url, str(model), levels, args.requests, args.prompt_words,
                                            args.max_tokens, f"{arm}{i}")
        finally:
            server.stop()
    table = ratios(rounds, levels)
    name = "p1_inference_smoke" if args.smoke else "p1_inference"
    out_dir = Path(args.out_dir)
    path = write_result(name, {"model": args.model, "direction": direction_kind, "levels": levels,
                               "max_tokens": args.max_tokens, "prompt_words": args.prompt_words,
                               "ratios_rosi_over_base": table, "rounds": rounds}, out_dir, args.command)
    plot(table, out_dir / f"{name}.png", f"P1 rosi / base ({args.model}, {args.rounds} rounds)")
    print(json.dumps(table, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
