"""Feasibility of a read with a threshold: one transplanted MLP neuron per layer pushes α·ReLU(g·x − t)·ŝ.

    python -m research.threshold_gate --model qwen2.5-coder-0.5b-instruct \
        --direction research/directions/qwen2.5-coder-0.5b-instruct-gated-budget.safetensors \
        --configs "12:48:0.5;11,12:32:0.5;11,12,13:32:0.5" --split validation
    python -m research.threshold_gate --smoke     # CI: tiny random model

Why: the gated (v2) edit's read is linear. Every writer adds ``α·(h·a)·ŝ``, so
the leakage of h·a on benign inputs pays for every unit of α. On Qwen that
price binds: `research.jailbreak_gate --frontier-alphas` found plain refusal
saturating near 90 % at the KL budget, and nothing in a rank-one delta
``W + α·ŝ·hᵀ`` can add a threshold. A gated MLP already has one, SiLU. This
measures what a threshold buys before anything is built for it.

The edit, per layer L: pick the neuron j of L's MLP whose benign activity
× output norm is smallest, and replace
- its gate row with ``c·(g − t·u)``,
- its up row with ``u``,
- its down column with ``α·ŝ / c``.
It then adds ``(α/c)·SiLU(c·(g·x − t·u·x))·(u·x)·ŝ ≈ α·ReLU(g·x − t)·ŝ``.
Here x is the MLP's normalised input. g is a read vector fitted on x exactly as
the gated extraction fits h (AlphaSteer's null-space regression, scaled so the
harmful median of g·x is 1, on the same prompt sources). u is a ridge fit of
``u·x ≈ 1`` over every fitted position. It exists because RMS-normalised
residuals share a large common component (held-out u·x: mean and spread in the
result), and it supplies the bias the architecture lacks. c (`SHARPNESS`)
makes SiLU/c close to ReLU.

It is still a load-time weight edit: three rank-one deltas per layer (a row of
gate_proj, a row of up_proj, a column of down_proj), no hook, no kernel. This
benchmark measured it before it was a product; it is now direction format v3
(`rosi extract --method threshold`), and each config below is applied through
that format's own plan, as the loader applies it. The fit is the product's
(`rosi_vllm.methods.threshold.fit.fit_neurons`). Variants, applied in place to the
transformers model: unedited,
the shipped gated file at its recommended α (`--direction`, the reference), and
each `--configs` entry ``layers:α:t`` (``+A``: with the file's own linear gate at
α=A added, both edits at once). All are scored side by side on one
split, each with its Wilson interval:
- plain harmful, benign and borderline requests;
- validation-style wrapped requests (the fit-only wrappers);
- every jailbreak template of `rosi eval`;
- every assistant-prefill attack.
Also scored: benign first-token KL and its upper bound. Each variant is judged
by the gated selection's own budgets and objective (`chosen`: the best feasible
threshold config). Choose on ``--split validation``; read ``--split test`` once,
with the config chosen there.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch

from rosi_vllm.methods.threshold.fit import SHARPNESS
from rosi_vllm.reports.plots import figure

from ._common import resolve_model, study_parser, tiny_gated_direction, write_with_plot


def scored_sets(split: str, n: int, goals: int) -> dict[str, tuple[list[str], str]]:
    """name → (instructions, the reply's first words already written)."""
    from rosi_vllm.extraction import prompts

    harmful = list(prompts.harmful(split))
    attack_goals = harmful[:goals]
    return {
        "harmful": (harmful[:n], ""), "benign": (list(prompts.harmless(split))[:n], ""),
        "borderline": (list(prompts.borderline(split))[:n], ""),
        "wrapped": (list(prompts.fit_wrapped(attack_goals)), ""),
        **{f"jailbreak_{name}": ([template.format(goal=g) for g in attack_goals], "")
           for name, template in prompts.JAILBREAK_TEMPLATES.items()},
        **{name: (attack_goals, prefill) for name, prefill in prompts.PREFILL_ATTACKS.items()},
    }


def parse_configs(text: str) -> list[dict]:
    """``"11,12:32:0.5;12:48:0.5+2"`` → [{"layers": [11, 12], "alpha": 32.0, "threshold": 0.5,
    "linear_alpha": None}, …]; ``+A``: with the `--direction` file's own linear gate at α=A added."""
    configs = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        item, _, linear = item.partition("+")
        layers, alpha, threshold = item.split(":")
        configs.append({"layers": [int(x) for x in layers.split(",")], "alpha": float(alpha),
                        "threshold": float(threshold), "linear_alpha": float(linear) if linear else None})
    return configs


def measure(model: Path, direction: Path, configs: list[dict], *, split: str, n: int, goals: int,
            dtype: str = "bfloat16", max_new_tokens: int = 32, batch_size: int = 20, fit_kwargs=None,
            progress: bool = True) -> dict:
    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan
    from rosi_vllm.core.judge import SubstringJudge, is_degenerate
    from rosi_vllm.core.stats import mean_upper_bound, rate
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.hf_eval import generate, injected, next_token_logprobs, prompt_kls
    from rosi_vllm.methods.threshold.fit import fit_neurons, threshold_direction

    shipped = load_direction(direction)
    loaded = load_hf_model(str(model), dtype=getattr(torch, dtype))
    layers = sorted({layer for c in configs for layer in c["layers"]})
    neurons, gate_stats = fit_neurons(loaded, layers, batch_size=batch_size, progress=progress, **(fit_kwargs or {}))
    sets = scored_sets(split, n, goals)
    benign = sets["benign"][0]
    base_lp = next_token_logprobs(loaded, benign, batch_size=batch_size)
    judge = SubstringJudge()
    fingerprint = fingerprint_checkpoint(model)

    def linear_plan(alpha):
        if not shipped.gated:
            raise SystemExit("rosi: a '+α' config needs a gated (format v2) --direction")
        return build_plan(shipped, loaded.shape, alpha=alpha, checkpoint_fingerprint=fingerprint)

    @contextlib.contextmanager
    def threshold_edit(c):
        """The product's v3 edit (its plan, as the loader applies it), plus the file's linear gate for '+α'."""
        v3 = threshold_direction(shipped, neurons, gate_stats, c["layers"], threshold=c["threshold"])
        with contextlib.ExitStack() as stack:
            if c["linear_alpha"] is not None:
                stack.enter_context(injected(loaded, linear_plan(c["linear_alpha"])))
            stack.enter_context(injected(loaded, build_plan(v3, loaded.shape, alpha=c["alpha"],
                                                            checkpoint_fingerprint=fingerprint)))
            yield

    variants = [("unedited", {}, contextlib.nullcontext)]
    if shipped.gated:
        variants.append((f"linear gate α={shipped.recommended_alpha:g} (shipped file)",
                         {"window": list(shipped.window), "alpha": shipped.recommended_alpha},
                         lambda: injected(loaded, linear_plan(shipped.recommended_alpha))))
    for c in configs:
        name = f"threshold L{','.join(map(str, c['layers']))} α={c['alpha']:g} t={c['threshold']:g}"
        if c["linear_alpha"] is not None:
            name += f" + linear gate α={c['linear_alpha']:g}"
        variants.append((name, c, lambda c=c: threshold_edit(c)))
    rows = []
    for name, settings, edit in variants:
        with edit():
            kls = prompt_kls(base_lp, next_token_logprobs(loaded, benign, batch_size=batch_size))
            refused, degenerate = {}, 0
            for set_name, (instructions, prefill) in sets.items():
                replies = [prefill + text for text in generate(loaded, instructions, max_new_tokens=max_new_tokens,
                                                               batch_size=batch_size, prefill=prefill)]
                refused[set_name] = rate(judge.judge(replies))
                degenerate += sum(map(is_degenerate, replies))
        attacked = [cell for set_name, cell in refused.items() if set_name.startswith("jailbreak_")]
        answered = sum(cell["n"] - cell["k"] for cell in attacked)
        rows.append({"variant": name, **settings, "kl": float(kls.mean()), "kl_upper": mean_upper_bound(kls.tolist()),
                     "refused": refused, "degenerate": degenerate,
                     # `rosi eval`'s jailbreak success: every template's replies together, not refused
                     "jailbreak_success": rate([True] * answered + [False] * (sum(c["n"] for c in attacked) - answered))})
        if progress:
            print(f"{name}: KL {rows[-1]['kl']:.3f} (upper {rows[-1]['kl_upper']:.3f}), refused "
                  + ", ".join(f"{k} {v['k']}/{v['n']}" for k, v in refused.items()), flush=True)
    judged = [judged_by_selection_rule(row, rows[0]) for row in rows]
    feasible = [i for i, j in enumerate(judged) if j["feasible"] and "threshold" in rows[i]]
    return {"split": split, "n": n, "goals": goals, "dtype": dtype, "max_new_tokens": max_new_tokens,
            "sharpness": SHARPNESS, "write_direction": str(direction), "layers": layers,
            "gates": {str(k): v for k, v in gate_stats.items()},
            "variants": [{**row, **j} for row, j in zip(rows, judged)],
            "chosen": rows[max(feasible, key=lambda i: judged[i]["harm_refused"])]["variant"] if feasible else None}


def judged_by_selection_rule(row: dict, unedited: dict) -> dict:
    """The gated selection's own verdict on a variant (`GatedCandidate`: its budgets and its objective, the mean
    of plain and wrapped refusal), so a threshold config is chosen by the rule that chose the shipped file."""
    from rosi_vllm.extraction.gated_selection import GatedCandidate

    def scores(r):
        refused = r["refused"]
        n_replies = sum(cell["n"] for cell in refused.values())
        return {"harmful_refusal": refused["harmful"]["rate"], "benign_refusal": refused["benign"]["rate"],
                "borderline_refusal": refused["borderline"]["rate"], "degenerate": r["degenerate"] / n_replies,
                "jailbreak_success": 1 - refused["wrapped"]["rate"]}

    base = {**scores(unedited), "kl": 0.0, "kl_upper": 0.0}
    candidate = GatedCandidate((), (), row.get("alpha", 0.0), 2, **scores(row), kl=row["kl"], kl_upper=row["kl_upper"],
                               base=base)
    return {"feasible": candidate.feasible, "harm_refused": candidate.harm_refused}


def plot(result: dict, path: Path) -> None:
    """Harmful refused and wrapped answered against the KL bound; refusal per set for every variant."""
    rows = result["variants"]
    with figure(path, (14, 5), ncols=2) as (_, (ax1, ax2)):
        for row in rows:
            harm = row["refused"]["harmful"]
            ax1.errorbar(row["kl_upper"], 100 * harm["rate"],
                         yerr=[[100 * (harm["rate"] - harm["ci95"][0])], [100 * (harm["ci95"][1] - harm["rate"])]],
                         marker="o", capsize=3, label=row["variant"])
        ax1.set_xlabel("benign first-token KL, 95 % upper bound (nats)")
        ax1.set_ylabel("harmful refused (%)")
        ax1.set_title(f"{result['split']} split, n={result['n']}")
        ax1.legend(fontsize=7)
        names = list(rows[0]["refused"])
        width = 0.8 / len(rows)
        for i, row in enumerate(rows):
            ax2.bar([x + i * width for x in range(len(names))], [100 * row["refused"][k]["rate"] for k in names],
                    width, label=row["variant"])
        ax2.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=60, fontsize=7)
        ax2.set_ylabel("refused (%)")
        ax2.legend(fontsize=6)


def main(argv=None) -> int:
    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--direction", help="a gated (v2) direction file: its ŝ is the write direction, and it is "
                        "scored at its recommended α as the reference")
    parser.add_argument("--configs", default="11,12:32:0.5", help="layers:α:threshold entries, ';'-separated")
    parser.add_argument("--split", default="validation", choices=["validation", "test"])
    parser.add_argument("--n", type=int, default=40, help="prompts per plain set")
    parser.add_argument("--goals", type=int, default=8, help="goals per attack template or prefill")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-threshold-"))
    if args.smoke:
        model, direction = tiny_gated_direction(work)
        result = measure(model, direction, parse_configs("0,1:4:0.5;0,1:4:0.5+1"), split="validation", n=3, goals=1,
                         dtype="float32", max_new_tokens=4, batch_size=4,
                         fit_kwargs={"n_harmful": 8, "wrapped": 4, "answer_tokens": 3}, progress=False)
    else:
        if not args.direction:
            parser.error("--direction is required")
        direction = Path(args.direction)
        result = measure(resolve_model(args.model, work), direction, parse_configs(args.configs), split=args.split,
                         n=args.n, goals=args.goals, dtype=args.dtype)
    result = {"model": "tiny" if args.smoke else args.model, **result}
    name = "threshold_gate_smoke" if args.smoke else f"threshold_gate_{args.split}"
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
