"""What one transformers decoding step costs at each batch size: the model behind `rosi harden`'s time estimate.

    python -m research.generation_batch_cost --model qwen2.5-coder-0.5b-instruct   # full
    python -m research.generation_batch_cost --smoke                                # tiny model, seconds

`rosi harden` used to cost generation as prompts × tokens × (the probe's per prompt-token time at a batch of
8), and its Qwen run took 1.8 × its edit-stage estimate: the selection's stage 1 generates a few prompts per
candidate, and on 2 CPU cores a decoding step costs nearly as much for 4 prompts as for 8. This times greedy
generation of the harmless extraction requests at several batch sizes (8 tokens, after a warm-up) so
`harden.config.Cost.generate` (a step's cost at batch 1 plus a marginal cost per further prompt, from two
probe batches) can be checked against it. Result: ``research/results/harden/generation_batch_cost.json``
and ``.png``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ._common import RESULTS, resolve_model, study_parser, write_with_plot


def plot(payload: dict, path: Path) -> None:
    from rosi_vllm.reports.plots import figure

    rows = payload["rows"]
    with figure(path, (6, 4)) as (_, ax):
        batches = [r["batch"] for r in rows]
        ax.plot(batches, [r["seconds_per_step"] for r in rows], marker="o", label="measured")
        ax.plot(batches, [r["model_seconds_per_step"] for r in rows], linestyle="--",
                label="Cost.generate from batches 1 and 8")
        ax.set_xlabel("prompts in the batch")
        ax.set_ylabel("seconds per decoding step")
        ax.set_title(f"{payload['model']}, {payload['dtype']}")
        ax.legend()


def main(argv=None) -> int:
    import torch

    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.hf_eval import generate
    from rosi_vllm.extraction.hf_model import load_hf_model
    from rosi_vllm.harden.config import Cost

    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batches", default="1,4,8,16,32,48")
    parser.add_argument("--tokens", type=int, default=8)
    parser.set_defaults(out_dir=str(RESULTS / "harden"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.batches = "tiny", "1,4,8"
    batches = sorted({1, 8, *(int(b) for b in args.batches.split(","))})
    model = resolve_model(args.model, Path(tempfile.mkdtemp(prefix="rosi-generation-batch-cost-")))
    loaded = load_hf_model(model, dtype=getattr(torch, args.dtype))
    requests = list(prompts.harmless("extraction"))
    generate(loaded, requests[:4], max_new_tokens=4, batch_size=4)  # warm-up
    seconds = {}
    for n in batches:
        t = time.perf_counter()
        generate(loaded, requests[:n], max_new_tokens=args.tokens, batch_size=n)
        seconds[n] = time.perf_counter() - t
        print(f"batch {n}: {seconds[n]:.2f} s ({seconds[n] / args.tokens:.3f} s a step)", flush=True)
    cost = Cost(gen_token=seconds[8] / (8 * args.tokens), forward=0.0, gen_step=seconds[1] / args.tokens, probe_batch=8)
    rows = [{"batch": n, "seconds": round(seconds[n], 3), "seconds_per_step": round(seconds[n] / args.tokens, 4),
             "seconds_per_prompt_token": round(seconds[n] / (n * args.tokens), 5),
             "model_seconds_per_step": round(cost.generate(n, args.tokens, n) / args.tokens, 4)} for n in batches]
    name = "generation_batch_cost_smoke" if args.smoke else "generation_batch_cost"
    path = write_with_plot(name, {"model": args.model, "dtype": args.dtype, "tokens": args.tokens,
                                  "torch_threads": torch.get_num_threads(), "rows": rows},
                           Path(args.out_dir), plot, args.command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
