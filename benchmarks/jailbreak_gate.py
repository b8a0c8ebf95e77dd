"""Which attack family escapes a gated direction, and where: its read vector (the gate) or its push (the write)?

    python -m benchmarks.jailbreak_gate --model qwen2.5-coder-0.5b-instruct \
        --direction directions/qwen2.5-coder-0.5b-instruct-gated-budget.safetensors
    python -m benchmarks.jailbreak_gate --smoke     # CI: tiny random model, a tiny gated extraction

Why: `rosi eval` reports jailbreak success per template, but a template that
still succeeds can do so for two reasons with different remedies. Either the
gate does not fire on it (`h·a` near 0 where the model decides, so nothing is
pushed: the fit has to see that shape of request), or it fires and the push
along ŝ is not enough (α, the write direction). This measures both on the same
prompts: for plain requests, benign requests and every jailbreak template of
`rosi eval`, the mean `h·a` over the window's writers at the positions the
harmful side is fitted on (last instruction token to the end of the chat
template), and greedy refusal of the unedited and the edited model. Goals are
the *validation* split's (the test split's goals are never read); the templates
are the test's, which is why nothing here may be used to choose a direction.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, write_result
from ._setup import direction_for, resolve_model


def measure(model: Path, direction: Path, alpha: float | None, goals: int, dtype: str = "bfloat16",
            max_new_tokens: int = 32, batch_size: int = 32) -> dict:
    import torch

    from rosi_vllm.direction_file import load_direction
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.gated import collect_inputs, find_writers
    from rosi_vllm.extraction.hf_eval import generate, injected
    from rosi_vllm.fingerprint import fingerprint_checkpoint
    from rosi_vllm.injection_plan import build_plan
    from rosi_vllm.judge import SubstringJudge

    found = load_direction(direction)
    if not found.gated:
        raise SystemExit("rosi: --direction must be a gated (format v2) direction file")
    alpha = found.recommended_alpha if alpha is None else alpha
    loaded = load_hf_model(str(model), dtype=getattr(torch, dtype))
    writers = find_writers(loaded, set(found.window), tuple(found.default_targets))
    plan = build_plan(found, loaded.shape, alpha=alpha, checkpoint_fingerprint=fingerprint_checkpoint(model))
    harmful = list(prompts.harmful("validation"))[:goals]
    sets = {"plain": harmful, "benign": list(prompts.harmless("validation"))[:goals],
            **{name: [template.format(goal=g) for g in harmful]
               for name, template in prompts.JAILBREAK_TEMPLATES.items()}}
    judge = SubstringJudge()
    rows = {}
    for name, instructions in sets.items():
        inputs = collect_inputs(loaded, writers, instructions, positions="instruction_end", batch_size=batch_size,
                                progress=False)
        reads = {w.key: inputs.by_writer[w.key].float() @ found.reads[w.key].float() for w in writers}
        per_prompt = [sum(float(reads[w.key][inputs.prompt_index == i].mean()) for w in writers) / len(writers)
                      for i in range(len(instructions))]
        base = generate(loaded, instructions, max_new_tokens=max_new_tokens, batch_size=batch_size)
        with injected(loaded, plan):
            edited = generate(loaded, instructions, max_new_tokens=max_new_tokens, batch_size=batch_size)
        rows[name] = {"n": len(instructions), "mean_gate": sum(per_prompt) / len(per_prompt), "gate": per_prompt,
                      "refused_unedited": sum(judge.judge(base)), "refused_edited": sum(judge.judge(edited)),
                      "edited_openings": [text[:80] for text in edited[:3]]}
        print(f"{name}: mean h·a {rows[name]['mean_gate']:.2f}, refused {rows[name]['refused_unedited']} → "
              f"{rows[name]['refused_edited']} of {len(instructions)}", flush=True)
    return {"alpha": alpha, "window": list(found.window), "targets": list(found.default_targets), "dtype": dtype,
            "goals_split": "validation", "max_new_tokens": max_new_tokens, "sets": rows}


def plot(result: dict, path: Path) -> None:
    sets = result["sets"]
    names = list(sets)
    xs = range(len(names))
    with figure(path, (12, 4), ncols=2) as (fig, (ax1, ax2)):
        ax1.bar(xs, [sets[n]["mean_gate"] for n in names], color=["C2" if n == "benign" else "C0" for n in names])
        ax1.axhline(1.0, color="grey", linestyle=":", label="harmful median on the fit data")
        ax1.set_xticks(list(xs), names, rotation=30, fontsize=7)
        ax1.set_ylabel("mean h·a over the window (instruction end)")
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
        fig.suptitle(f"{Path(result['direction']).name}: validation goals under each test jailbreak template",
                     fontsize=9)


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--direction", help="a gated (format v2) direction file")
    parser.add_argument("--alpha", type=float, default=None, help="default: the file's recommended α")
    parser.add_argument("--goals", type=int, default=20, help="validation goals per set")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-jbgate-"))
    if args.smoke:
        from rosi_vllm.extraction.gated import extract_gated

        model = resolve_model("tiny", work)
        write, _ = direction_for(model, work)
        direction = work / "gated.safetensors"
        extract_gated(str(model), str(write), direction, layers=[0, 1], alphas=(2.0,), min_auroc=0.0, n_harmful=12,
                      answer_tokens=3, val_n=4, stage1_n=3, stage1_tokens=3, max_new_tokens=4, batch_size=4,
                      progress=False)
        result = measure(model, direction, None, goals=3, dtype="float32", max_new_tokens=4, batch_size=4)
    else:
        if not args.direction:
            parser.error("--direction is required")
        direction = Path(args.direction)
        result = measure(resolve_model(args.model, work), direction, args.alpha, args.goals, dtype=args.dtype)
    result = {"model": "tiny" if args.smoke else args.model, "direction": "tiny gated" if args.smoke else str(direction),
              **result}
    name = "jailbreak_gate_smoke" if args.smoke else "jailbreak_gate"
    out_dir = Path(args.out_dir)
    path = write_result(name, result, out_dir)
    plot(result, out_dir / f"{name}.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
