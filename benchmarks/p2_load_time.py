"""P2 load time: the rosi loader's weight stream vs vLLM's default loader, same files.

    python -m benchmarks.p2_load_time              # full: SmolLM2-135M and a random 1.2B Llama (TP 1 and 2)
    python -m benchmarks.p2_load_time --smoke      # CI: tiny model, 2 repetitions, no TP run

Two measurements:

1. In-process, alternating loaders ``--repeats`` times each (page cache warm
   for both after the first pass): vLLM's `DefaultModelLoader.get_all_weights`
   vs `RosiModelLoader.get_all_weights` (plan, fingerprint check, deltas),
   each tensor copied into a preallocated destination as ``load_weights``
   would. Ratio = rosi / base of the medians (target ≤ 1.05); the delta math
   alone comes from the plan's own timer; cost per GB of weights.
2. With ``--tp``: real `vllm serve` start-ups, base and rosi at each TP size;
   every TP worker edits the full tensors it reads (w̄ needs all of W), so the
   per-worker delta cost does not shrink with TP. Recorded: the rosi loader's
   own log line per worker and the wall time to /health.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

import torch

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, median, write_result
from ._setup import direction_for, resolve_model


def random_llama(out: Path, hidden=2048, layers=16, intermediate=8192, vocab=32000) -> Path:
    """A random-weight Llama of ~1.2B parameters (bf16), for load timing only."""
    if (out / "config.json").exists():
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    from rosi_vllm.testing.tiny_models import build_tokenizer

    config = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                         num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256, vocab_size=vocab,
                         max_position_embeddings=2048, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    build_tokenizer(out)  # a small tokenizer: enough to start vLLM, ids stay below the vocab
    return out


def stream_once(loader, model_config) -> tuple[float, float, int]:
    """Seconds to stream every tensor into a destination, math seconds, bytes."""
    destinations: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    total = 0
    for name, tensor in loader.get_all_weights(model_config, torch.nn.Module()):
        dest = destinations.get(name)
        if dest is None:
            dest = destinations[name] = torch.empty_like(tensor)
        dest.copy_(tensor)
        total += tensor.numel() * tensor.element_size()
    elapsed = time.perf_counter() - started
    run = getattr(loader, "_run", None)
    return elapsed, (run.stats.math_seconds if run else 0.0), total


def in_process(model: Path, direction: Path, repeats: int) -> dict:
    from vllm.config import ModelConfig
    from vllm.config.load import LoadConfig
    from vllm.model_executor.model_loader.default_loader import DefaultModelLoader

    from rosi_vllm.vllm_glue.loader import RosiModelLoader

    model_config = ModelConfig(model=str(model), dtype="bfloat16", max_model_len=256)
    base_times, rosi_times, math_times, nbytes = [], [], [], 0
    stream_once(DefaultModelLoader(LoadConfig(load_format="auto")), model_config)  # warm the page cache
    from tqdm import tqdm

    for _ in tqdm(range(repeats), desc=f"P2 {model.name}", unit="pair"):
        elapsed, _, nbytes = stream_once(DefaultModelLoader(LoadConfig(load_format="auto")), model_config)
        base_times.append(elapsed)
        loader = RosiModelLoader(LoadConfig(load_format="rosi",
                                            model_loader_extra_config={"direction": str(direction)}))
        elapsed, math_s, _ = stream_once(loader, model_config)
        rosi_times.append(elapsed)
        math_times.append(math_s)
    gb = nbytes / 1e9
    base, rosi = median(base_times), median(rosi_times)
    return {"model": str(model.name), "weights_gb": gb, "base_s": base_times, "rosi_s": rosi_times,
            "delta_math_s": math_times, "ratio_rosi_over_base": rosi / base,
            "added_s_per_gb": (rosi - base) / gb, "delta_math_s_per_gb": median(math_times) / gb}


def served(model: Path, direction: Path, tp_sizes: list[int], work: Path) -> list[dict]:
    from rosi_vllm.testing.serve_process import start_server, wait_until

    rows = []
    for tp in tp_sizes:
        for arm in ("base", "rosi"):
            kwargs = {"load_format": None} if arm == "base" else {"extra": {"direction": str(direction)}}
            env = {"VLLM_CPU_OMP_THREADS_BIND": "|".join(str(i) for i in range(tp))} if tp > 1 else {}
            started = time.perf_counter()
            # memory share (on CPU: of RAM) large enough for a 2.2 GB model plus its KV cache
            server = start_server(model, work / f"tp{tp}-{arm}.log", env=env, **kwargs,
                                  args=["--tensor-parallel-size", str(tp), "--gpu-memory-utilization", "0.3"])
            try:
                up, _ = wait_until(server, timeout=600)
                wall = time.perf_counter() - started
                log = server.log()
            finally:
                server.stop()
            rosi_lines = re.findall(r"rosi: direction=\S+ .*?in ([\d.]+) ms.*?load total ([\d.]+) s", log)
            vllm_lines = re.findall(r"Loading weights took ([\d.]+) seconds", log)
            rows.append({"tp": tp, "arm": arm, "up": up, "wall_to_health_s": wall,
                         "vllm_loading_weights_s": [float(x) for x in vllm_lines],
                         "rosi_workers": [{"delta_math_ms": float(a), "load_total_s": float(b)} for a, b in rosi_lines]})
    return rows


def plot(results: list[dict], path: Path) -> None:
    with figure(path, (7, 4)) as (fig, ax):
        names = [r["model"] for r in results]
        base = [median(r["base_s"]) for r in results]
        rosi = [median(r["rosi_s"]) for r in results]
        math_s = [median(r["delta_math_s"]) for r in results]
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], base, 0.4, label="default loader")
        ax.bar([x + 0.2 for x in xs], rosi, 0.4, label="rosi loader")
        ax.bar([x + 0.2 for x in xs], math_s, 0.4, label="of which delta math", color="C3")
        for x, r in zip(xs, results):
            ax.text(x + 0.2, median(r["rosi_s"]), f"x{r['ratio_rosi_over_base']:.3f}", ha="center", va="bottom")
        ax.set_xticks(list(xs), [f"{n}\n{r['weights_gb']:.2f} GB" for n, r in zip(names, results)])
        ax.set_ylabel("seconds to stream all weights (median)")
        ax.set_title("P2 load time: rosi vs default loader (target ratio ≤ 1.05)")
        ax.legend()


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("--models", default="smollm2-135m-instruct,random-1b")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tp", default="1,2", help="TP sizes for the served start-up runs ('' to skip)")
    parser.add_argument("--tp-model", default="random-1b",
                        help="model for the served runs (its head count must divide by every TP size)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.repeats, args.tp = "tiny", 2, ""
    work = Path(tempfile.mkdtemp(prefix="rosi-p2-"))
    results, served_rows = [], []
    for name in args.models.split(","):
        model = random_llama(work / "random-1b") if name == "random-1b" else resolve_model(name, work)
        direction, _ = direction_for(model, work)
        results.append(in_process(model, direction, args.repeats))
        if args.tp and name == args.tp_model:
            served_rows += served(model, direction, [int(x) for x in args.tp.split(",")], work)
    name = "p2_load_time_smoke" if args.smoke else "p2_load_time"
    out_dir = Path(args.out_dir)
    path = write_result(name, {"in_process": results, "served": served_rows}, out_dir, args.command)
    plot(results, out_dir / f"{name}.png")
    for r in results:
        print(f"{r['model']}: {r['weights_gb']:.2f} GB, base {median(r['base_s']):.3f} s, rosi {median(r['rosi_s']):.3f} s,"
              f" ratio {r['ratio_rosi_over_base']:.3f}, delta math {median(r['delta_math_s']):.3f} s "
              f"({r['delta_math_s_per_gb']:.3f} s/GB)")
    print(json.dumps(served_rows, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
