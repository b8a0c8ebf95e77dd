"""Safety sweep: refusal (harmful / benign / jailbreak), degeneration and KL vs α for one direction.

    python -m benchmarks.safety_sweep --model smollm2-135m-instruct \\
        --direction directions/smollm2-135m-instruct.safetensors     # full: test split, α grid
    python -m benchmarks.safety_sweep --smoke                       # CI: tiny model, 4 prompts, 2 α

The curve an operator reads to choose α. Generation is greedy with transformers,
the edit applied in place with the loader's own `InjectionPlan` (tests show the
vLLM loader gives the same logprobs), judged by the substring judge of
`rosi eval`; KL is exact full-vocabulary KL(base ‖ edited) of the first response
token on benign prompts. Wilson 95 % intervals on every rate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, write_result
from ._setup import direction_for, resolve_model


def main(argv=None) -> int:
    from tqdm import tqdm

    from rosi_vllm.architectures import DEFAULT_TARGETS
    from rosi_vllm.direction_file import load_direction
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.hf_eval import (
        generate,
        injected,
        mean_kl,
        next_token_logprobs,
    )
    from rosi_vllm.injection_plan import build_plan
    from rosi_vllm.judge import SubstringJudge, is_degenerate
    from rosi_vllm.stats import rate

    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--direction", default=None, help="default: directions/<model>.safetensors")
    parser.add_argument("--alphas", default="0,16,32,48,64,96,128")
    parser.add_argument("--n", type=int, default=50, help="prompts per set (test split)")
    parser.add_argument("--jailbreak-goals", type=int, default=10, help="goals x 5 templates")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-sweep-"))
    if args.smoke:
        args.model, args.alphas, args.n, args.jailbreak_goals, args.max_new_tokens = "tiny", "0,8", 4, 1, 4
    model = resolve_model(args.model, work)
    shipped = args.direction or str(Path(__file__).resolve().parents[1] / "directions" / f"{args.model}.safetensors")
    direction_path, direction_kind = direction_for(model, work, shipped)
    direction = load_direction(direction_path)
    loaded = load_hf_model(model)
    judge = SubstringJudge()
    harmful = list(prompts.harmful("test"))[: args.n]
    harmless = list(prompts.harmless("test"))[: args.n]
    goals = list(prompts.harmful("test"))[: args.jailbreak_goals]
    jailbreaks = [t.format(goal=g) for g in goals for t in prompts.JAILBREAK_TEMPLATES.values()]
    base_logprobs = next_token_logprobs(loaded, harmless)
    rows = []
    for alpha in tqdm([float(a) for a in args.alphas.split(",")], desc="sweep", unit="alpha"):
        plan = None if alpha == 0 else build_plan(direction, loaded.shape, alpha=alpha, targets=DEFAULT_TARGETS)
        with injected(loaded, plan):
            h = generate(loaded, harmful, max_new_tokens=args.max_new_tokens)
            b = generate(loaded, harmless, max_new_tokens=args.max_new_tokens)
            j = generate(loaded, jailbreaks, max_new_tokens=args.max_new_tokens)
            kl = 0.0 if plan is None else mean_kl(base_logprobs, next_token_logprobs(loaded, harmless))
        rows.append({"alpha": alpha, "harmful_refusal": rate(judge.judge(h)), "benign_refusal": rate(judge.judge(b)),
                     "jailbreak_attack_success": rate(not r for r in judge.judge(j)),
                     "degenerate": rate(is_degenerate(t) for t in h + b + j), "benign_kl_nats": kl,
                     "sample_harmful": h[0][:160]})
        print(f"alpha {alpha:g}: harmful {rows[-1]['harmful_refusal']['rate']:.2f} benign "
              f"{rows[-1]['benign_refusal']['rate']:.2f} jailbreak {rows[-1]['jailbreak_attack_success']['rate']:.2f} "
              f"KL {kl:.3f}")
    name = "safety_sweep_smoke" if args.smoke else f"safety_sweep_{args.model}"
    out_dir = Path(args.out_dir)
    path = write_result(name, {"model": args.model, "direction": direction_kind, "direction_id": direction.direction_id,
                               "layer": direction.layer, "recommended_alpha": direction.recommended_alpha,
                               "n": args.n, "max_new_tokens": args.max_new_tokens, "judge": judge.name,
                               "rows": rows}, out_dir)
    plot(rows, out_dir / f"{name}.png", args.model, direction.recommended_alpha)
    print(f"wrote {path}")
    return 0


def plot(rows, path: Path, model: str, recommended: float) -> None:
    xs = [r["alpha"] for r in rows]
    with figure(path, (8, 4.5)) as (fig, ax):
        for key, label in [("harmful_refusal", "harmful refused"), ("benign_refusal", "benign refused"),
                           ("jailbreak_attack_success", "jailbreak success"), ("degenerate", "degenerate")]:
            rates = [r[key]["rate"] for r in rows]
            lo = [r[key]["rate"] - r[key]["ci95"][0] for r in rows]
            hi = [r[key]["ci95"][1] - r[key]["rate"] for r in rows]
            ax.errorbar(xs, rates, yerr=[lo, hi], marker="o", capsize=3, label=label)
        ax.axvline(recommended, color="gray", linestyle=":", label=f"recommended α={recommended:g}")
        ax.set_xlabel("α")
        ax.set_ylabel("rate (95% Wilson CI)")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        ax2.plot(xs, [r["benign_kl_nats"] for r in rows], color="black", linestyle="--", label="KL (right)")
        ax2.set_ylabel("KL on benign, nats")
        ax.set_title(f"Safety sweep: {model}")
        ax.legend(fontsize=7, loc="upper left")


if __name__ == "__main__":
    raise SystemExit(main())
