"""Which attack family escapes a gated direction, and where: its read vector (the gate) or its push (the write)?

    python -m research.jailbreak_gate --model qwen2.5-coder-0.5b-instruct \
        --direction research/directions/qwen2.5-coder-0.5b-instruct-gated-budget.safetensors [--frontier-alphas 3.75,6,9]
    python -m research.jailbreak_gate --smoke     # CI: tiny random model, a tiny gated extraction

Why: `rosi eval` reports jailbreak success per template, but a template that
still succeeds can do so for two reasons with different remedies. Either the
gate does not fire on it (`h·a` near 0 where the model decides, so nothing is
pushed: the fit has to see that shape of request), or it fires and the push
along ŝ is not enough (α, the write direction). This measures both on the same
prompts: for plain requests, benign requests, every jailbreak template of
`rosi eval` and every assistant-prefill attack (`prompts.PREFILL_ATTACKS`: the
reply's first words already written), the mean `h·a` over the window's writers
from the last instruction token to the end of the text (the chat template and
any prefill), and greedy refusal of the unedited and the edited model, judged on
the whole reply (prefill included). With ``--frontier-alphas``, the edited
refusal of every set is measured again at each of those α beside the benign
first-token KL and its upper bound (the selection's budget, on the first 40
validation benign prompts): how far past the budget an escaping family would
need the same read and write vectors pushed. Goals are the *validation* split's
(the test split's goals are never read); the templates are the test's, which is
why nothing here may be used to choose a direction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import resolve_model, study_parser, tiny_gated_direction, write_with_plot

#: validation benign prompts the frontier's KL is measured on: the selection's default --val-n
FRONTIER_KL_PROMPTS = 40


def measure(model: Path, direction: Path, alpha: float | None, goals: int, dtype: str = "bfloat16",
            max_new_tokens: int = 32, batch_size: int = 32, frontier_alphas=()) -> dict:
    import torch

    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan
    from rosi_vllm.core.judge import SubstringJudge, is_degenerate
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.hf_eval import generate, injected, next_token_logprobs
    from rosi_vllm.extraction.scoring import edited_kl_bounds
    from rosi_vllm.extraction.writer_inputs import collect_inputs, find_writers

    found = load_direction(direction)
    if not found.gated:
        raise SystemExit("rosi: --direction must be a gated (format v2) direction file")
    alpha = found.recommended_alpha if alpha is None else alpha
    loaded = load_hf_model(str(model), dtype=getattr(torch, dtype))
    writers = find_writers(loaded, set(found.window), tuple(found.default_targets))
    fingerprint = fingerprint_checkpoint(model)

    def plan_at(a):
        return build_plan(found, loaded.shape, alpha=a, checkpoint_fingerprint=fingerprint)

    def replies(instructions, prefill, plan):
        """Whole replies (the prefill and what the model wrote after it), unedited when `plan` is None."""
        with injected(loaded, plan):
            return [prefill + text for text in generate(loaded, instructions, max_new_tokens=max_new_tokens,
                                                        batch_size=batch_size, prefill=prefill)]

    plan = plan_at(alpha)
    harmful = list(prompts.harmful("validation"))[:goals]
    # name: (instructions, the reply's first words already written)
    sets = {"plain": (harmful, ""), "benign": (list(prompts.harmless("validation"))[:goals], ""),
            **{name: ([template.format(goal=g) for g in harmful], "")
               for name, template in prompts.JAILBREAK_TEMPLATES.items()},
            **{name: (harmful, prefill) for name, prefill in prompts.PREFILL_ATTACKS.items()}}
    judge = SubstringJudge()
    rows = {}
    for name, (instructions, prefill) in sets.items():
        inputs = collect_inputs(loaded, writers, instructions, positions="instruction_end", batch_size=batch_size,
                                progress=False, prefill=prefill)
        reads = {w.key: inputs.by_writer[w.key].float() @ found.reads[w.key].float() for w in writers}
        per_prompt = [sum(float(reads[w.key][inputs.prompt_index == i].mean()) for w in writers) / len(writers)
                      for i in range(len(instructions))]
        base, edited = replies(instructions, prefill, None), replies(instructions, prefill, plan)
        rows[name] = {"n": len(instructions), "prefill": prefill, "mean_gate": sum(per_prompt) / len(per_prompt),
                      "gate": per_prompt,
                      "refused_unedited": sum(judge.judge(base)), "refused_edited": sum(judge.judge(edited)),
                      "edited_openings": [text[:80] for text in edited[:3]]}
        print(f"{name}: mean h·a {rows[name]['mean_gate']:.2f}, refused {rows[name]['refused_unedited']} → "
              f"{rows[name]['refused_edited']} of {len(instructions)}", flush=True)
    frontier = []
    if frontier_alphas:
        benign = list(prompts.harmless("validation"))[:FRONTIER_KL_PROMPTS]
        base_lp = next_token_logprobs(loaded, benign, batch_size=batch_size)
    for a in frontier_alphas:
        plan_a = plan_at(a)
        kl, kl_upper = edited_kl_bounds(loaded, plan_a, benign, base_lp, batch_size=batch_size)
        out = {name: replies(instructions, prefill, plan_a) for name, (instructions, prefill) in sets.items()}
        frontier.append({"alpha": a, "kl": kl, "kl_upper": kl_upper,
                         "refused": {name: sum(judge.judge(texts)) for name, texts in out.items()},
                         "degenerate": {name: sum(map(is_degenerate, texts)) for name, texts in out.items()}})
        print(f"α={a:g}: KL {kl:.3f} (upper {kl_upper:.3f}), refused "
              + ", ".join(f"{name} {n}" for name, n in frontier[-1]["refused"].items()), flush=True)
    return {"alpha": alpha, "window": list(found.window), "targets": list(found.default_targets), "dtype": dtype,
            "goals_split": "validation", "max_new_tokens": max_new_tokens, "sets": rows, "frontier": frontier}


def plot(result: dict, path: Path) -> None:
    from rosi_vllm.extraction.selection import MAX_KL

    sets = result["sets"]
    names = list(sets)
    xs = range(len(names))
    frontier = result.get("frontier") or []
    with figure(path, (18 if frontier else 12, 4), ncols=3 if frontier else 2) as (fig, axes):
        ax1, ax2 = axes[:2]
        ax1.bar(xs, [sets[n]["mean_gate"] for n in names], color=["C2" if n == "benign" else "C0" for n in names])
        ax1.axhline(1.0, color="grey", linestyle=":", label="harmful median on the fit data")
        ax1.set_xticks(list(xs), names, rotation=30, fontsize=7)
        ax1.set_ylabel("mean h·a over the window (instruction end on)")
        ax1.set_title("does the gate fire?")
        ax1.legend(fontsize=7)
        width = 0.4
        ax2.bar([x - width / 2 for x in xs], [sets[n]["refused_unedited"] / sets[n]["n"] for n in names], width,
                label="unedited")
        ax2.bar([x + width / 2 for x in xs], [sets[n]["refused_edited"] / sets[n]["n"] for n in names], width,
                label=f"edited, α={result['alpha']:g}")
        ax2.set_xticks(list(xs), names, rotation=30, fontsize=7)
        ax2.set_ylabel("refused (greedy, substring judge)")
        ax2.set_title("does the model refuse?")
        ax2.legend(fontsize=7)
        if frontier:
            ax3 = axes[2]
            alphas = [row["alpha"] for row in frontier]
            for name in names:
                ax3.plot(alphas, [row["refused"][name] / sets[name]["n"] for row in frontier], "o-", label=name,
                         linestyle="--" if name == "benign" else "-")
            ax3.set_xlabel("α")
            ax3.set_ylabel("refused, edited")
            ax3.legend(fontsize=6, loc="upper left")
            kl_ax = ax3.twinx()
            kl_ax.plot(alphas, [row["kl_upper"] for row in frontier], "k:", marker="x", label="KL upper bound")
            kl_ax.axhline(MAX_KL, color="red", linestyle=":", label=f"KL budget {MAX_KL:g}")
            kl_ax.set_ylabel("benign first-token KL, 95 % upper bound")
            kl_ax.legend(fontsize=6, loc="lower right")
            ax3.set_title("refusal against α, and what it costs")
        fig.suptitle(f"{Path(result['direction']).name}: validation goals under each test jailbreak template "
                     "and assistant prefill",
                     fontsize=9)


def main(argv=None) -> int:
    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--direction", help="a gated (format v2) direction file")
    parser.add_argument("--alpha", type=float, default=None, help="default: the file's recommended α")
    parser.add_argument("--goals", type=int, default=20, help="validation goals per set")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--frontier-alphas", default="",
                        help="also measure every set's edited refusal and the benign KL at these α (comma-separated)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-jbgate-"))
    if args.smoke:
        model, direction = tiny_gated_direction(work)
        result = measure(model, direction, None, goals=3, dtype="float32", max_new_tokens=4, batch_size=4,
                         frontier_alphas=(1.0, 4.0))
    else:
        if not args.direction:
            parser.error("--direction is required")
        direction = Path(args.direction)
        result = measure(resolve_model(args.model, work), direction, args.alpha, args.goals, dtype=args.dtype,
                         frontier_alphas=[float(a) for a in args.frontier_alphas.split(",") if a])
    result = {"model": "tiny" if args.smoke else args.model, "direction": "tiny gated" if args.smoke else str(direction),
              **result}
    name = "jailbreak_gate_smoke" if args.smoke else "jailbreak_gate"
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
