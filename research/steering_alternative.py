"""Against the alternative: runtime activation steering (forward hooks) vs ROSI's baked weights.

    python -m research.steering_alternative          # full: SmolLM2-135M, 16 prompts x 64 tokens, 3 rounds
    python -m research.steering_alternative --smoke  # CI: tiny model

The same rank-one term, two ways, on the same transformers model: a forward hook
on every residual writer adding ``α·(w̄·x)·ŝ`` to its output at run time (what
activation-steering tools do), versus the edit baked into the weights (what
`--load-format rosi` serves). Greedy generation, rounds alternate; reported:
throughput ratio hook / baked, and whether the generated tokens agree (they
should, up to float rounding). vLLM's own runtime alternative, the same α as a
LoRA adapter, is measured against baked weights in P3.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from rosi_vllm.reports.plots import figure

from ._common import direction_for, median, resolve_model, study_parser, write_result


def hooks_for(loaded, plan):
    """Forward hooks that add the plan's rank-one term to each target module's output."""
    modules = dict(loaded.model.named_modules())
    handles = []
    s = plan.unit_dir.to(torch.float32)
    for name, param in loaded.model.named_parameters():
        if plan.target(name) is None:
            continue
        module = modules[name.removesuffix(".weight")]
        w_bar = param.detach().to(torch.float32).mean(dim=0)

        def hook(mod, inputs, output, w_bar=w_bar):
            x = inputs[0]
            return output + (plan.alpha * (x.to(torch.float32) @ w_bar))[..., None].to(output.dtype) * s.to(output.dtype)

        handles.append(module.register_forward_hook(hook))
    return handles


def generate_ids(loaded, texts, max_new_tokens):
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:]


def main(argv=None) -> int:
    from rosi_vllm.core.architectures import DEFAULT_TARGETS
    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.injection_plan import build_plan
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import chat_texts, load_hf_model
    from rosi_vllm.extraction.hf_eval import injected

    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--alpha", type=float, default=32.0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.prompts, args.max_new_tokens, args.rounds = "tiny", 4, 8, 1
    work = Path(tempfile.mkdtemp(prefix="rosi-steer-"))
    model = resolve_model(args.model, work)
    shipped = str(Path(__file__).resolve().parents[1] / "directions" / f"{args.model}.safetensors")
    direction_path, direction_kind = direction_for(model, work, shipped)
    loaded = load_hf_model(model)
    plan = build_plan(load_direction(direction_path), loaded.shape, alpha=args.alpha, targets=DEFAULT_TARGETS)
    texts = chat_texts(loaded.tokenizer, list(prompts.harmless("test"))[: args.prompts])
    times = {"baked": [], "hook": []}
    outputs = {}
    generate_ids(loaded, texts, 2)  # warm-up: first-call costs belong to neither arm
    for _ in range(args.rounds):
        with injected(loaded, plan):
            t = time.perf_counter()
            outputs["baked"] = generate_ids(loaded, texts, args.max_new_tokens)
            times["baked"].append(time.perf_counter() - t)
        handles = hooks_for(loaded, plan)
        try:
            t = time.perf_counter()
            outputs["hook"] = generate_ids(loaded, texts, args.max_new_tokens)
            times["hook"].append(time.perf_counter() - t)
        finally:
            for h in handles:
                h.remove()
    tokens = outputs["baked"].numel()
    agree = float((outputs["baked"] == outputs["hook"]).float().mean())
    result = {
        "model": args.model, "direction": direction_kind, "alpha": args.alpha, "prompts": args.prompts,
        "max_new_tokens": args.max_new_tokens, "seconds": times,
        "tokens_per_s": {k: tokens / median(v) for k, v in times.items()},
        "throughput_ratio_hook_over_baked": median(times["baked"]) / median(times["hook"]),
        "token_agreement": agree,
    }
    name = "steering_alternative_smoke" if args.smoke else "steering_alternative"
    out_dir = Path(args.out_dir)
    path = write_result(name, result, out_dir, args.command)
    with figure(out_dir / f"{name}.png", (5, 4)) as (fig, ax):
        ax.bar(["baked (rosi)", "forward hook"], [result["tokens_per_s"]["baked"], result["tokens_per_s"]["hook"]])
        ax.set_ylabel("generated tokens/s (transformers, greedy)")
        ax.set_title(f"same rank-one term, α={args.alpha:g}: tokens agree {agree:.1%}")
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "throughput_ratio_hook_over_baked", "token_agreement")}))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
