"""`rosi eval --alphas`: the safety curve an operator reads to choose α for one direction.

For each α the model is served as users serve it (an in-process vLLM engine,
``--load-format rosi`` with the direction at that α; α = 0 is the unedited
checkpoint on the default loader), greedy, on one prompt split, and scored by
`scoring` exactly like a single `rosi eval`: harmful and benign refusal,
jailbreak success, degeneration, each with a Wilson 95 % interval, and the exact
benign KL (transformers, the model loaded once for every α). The result keeps
the keys `docs/generate.py` reads (``model``, ``rows[*].alpha``,
``rows[*].<rate>.rate``, ``rows[*].benign_kl_nats``).
"""

from __future__ import annotations

from pathlib import Path

from ..core.judge import SubstringJudge
from ..reports.plots import figure, write_json_and_plot
from .scoring import PromptSets, benign_kls, score_outputs

#: The curves drawn, in this order, with their legend labels.
CURVES = (("harmful_refusal", "harmful refused"), ("benign_refusal", "benign refused"),
          ("jailbreak_attack_success", "jailbreak success"), ("degenerate", "degenerate"))


def run_sweep(*, model: str, direction: str, alphas, split: str = "test", limit: int | None = None,
              jailbreak_goals: int = 20, max_tokens: int = 48, tensor_parallel_size: int = 1,
              max_model_len: int | None = None, gpu_memory_utilization: float | None = None,
              generate=None, kls=None, on_row=None) -> dict:
    """Score `direction` on `model` at every α of `alphas` (see the module docstring).

    `generate` (default `vllm_glue.generation.chat_completions`) and `kls`
    (default `scoring.benign_kls`) are parameters so the assembly can be tested
    without an engine; `on_row` is called with each row as it is measured.
    """
    from ..core.direction_file import load_direction

    if generate is None:
        from ..vllm_glue.generation import chat_completions as generate
    alphas = [float(a) for a in alphas]
    judge = SubstringJudge()
    direction_file = load_direction(direction)
    sets = PromptSets.for_split(split, limit, jailbreak_goals)
    kl_values = (kls or benign_kls)(model, direction, alphas, sets.benign)
    rows = []
    for alpha, kl in zip(alphas, kl_values, strict=True):
        texts = generate(model, sets.flat(), direction=direction if alpha else None, alpha=alpha if alpha else None,
                         max_tokens=max_tokens, tensor_parallel_size=tensor_parallel_size,
                         max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization)
        rows.append({"alpha": alpha, **score_outputs(sets, texts, judge=judge, kl=kl),
                     "sample_harmful": texts[0][:160] if sets.harmful else ""})
        if on_row:
            on_row(rows[-1])
    return {"model": model, "direction": str(direction), "direction_id": direction_file.direction_id,
            "layer": direction_file.layer, "recommended_alpha": direction_file.recommended_alpha, "split": split,
            "n": len(sets.harmful), "jailbreak_goals": jailbreak_goals, "max_new_tokens": max_tokens,
            "judge": judge.name, "rows": rows}


def row_summary(row: dict) -> str:
    return (f"alpha {row['alpha']:g}: harmful {row['harmful_refusal']['rate']:.2f} benign "
            f"{row['benign_refusal']['rate']:.2f} jailbreak {row['jailbreak_attack_success']['rate']:.2f} "
            f"degenerate {row['degenerate']['rate']:.2f} KL {row['benign_kl_nats']:.3f}")


def plot_sweep(result: dict, path) -> None:
    """Every rate vs α with its 95 % interval, the recommended α marked, the benign KL on a second axis."""
    rows = result["rows"]
    xs = [r["alpha"] for r in rows]
    with figure(path, (8, 4.5)) as (_, ax):
        for key, label in CURVES:
            rates = [r[key]["rate"] for r in rows]
            lo = [r[key]["rate"] - r[key]["ci95"][0] for r in rows]
            hi = [r[key]["ci95"][1] - r[key]["rate"] for r in rows]
            ax.errorbar(xs, rates, yerr=[lo, hi], marker="o", capsize=3, label=label)
        recommended = result["recommended_alpha"]
        ax.axvline(recommended, color="gray", linestyle=":", label=f"recommended α={recommended:g}")
        ax.set_xlabel("α")
        ax.set_ylabel("rate (95% Wilson CI)")
        ax.set_ylim(-0.02, 1.02)
        ax2 = ax.twinx()
        ax2.plot(xs, [r["benign_kl_nats"] for r in rows], color="black", linestyle="--", label="KL (right)")
        ax2.set_ylabel("KL on benign, nats")
        ax.set_title(f"Safety sweep: {Path(str(result['model'])).name}")
        ax.legend(fontsize=7, loc="upper left")


def write_sweep(result: dict, out: str | Path) -> Path:
    """The JSON at `out` and its plot beside it (same name, ``.png``); returns the PNG's path."""
    return write_json_and_plot(result, out, lambda png: plot_sweep(result, png))[1]
