"""`rosi eval`: refusal, over-refusal, jailbreak success and KL of a served model.

Generation goes through what users run: an in-process vLLM engine (the base
checkpoint, or ``--load-format rosi`` with a direction and α), or any
OpenAI-compatible endpoint. Greedy decoding, chat template, no system prompt.
Completions are scored by `scoring` (the same rules as the α sweep and
selection): `judge.SubstringJudge` refusals, `judge.is_degenerate`, every rate
with a Wilson 95 % interval, and the exact benign KL (full vocabulary, first
response token) with transformers, because vLLM only returns the top-k logprobs.
Optional columns (`eval_extras`): refusal per request form with the style-shift sets
(``--style-shift``; with a gated or threshold direction also its gate's AUROC per form, `gate_by_form`),
XSTest over-refusal (``--xstest``) and success per public jailbreak family (``--jailbreak-families``),
generated in the same batch.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..core.judge import SubstringJudge
from ..reports.plots import figure, write_json_and_plot
from ..vllm_glue.generation import chat_completions
from .eval_extras import ExtraSets
from .gate_by_form import gate_auroc_by_form
from .judge_calibration import calibrate
from .scoring import PromptSets, benign_kls, score_outputs


def generate_endpoint(url: str, served_model: str, instructions, *, max_tokens: int, api_key: str | None = None,
                      concurrency: int = 8) -> list[str]:
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def one(text: str) -> str:
        resp = requests.post(url.rstrip("/") + "/v1/chat/completions", headers=headers, timeout=300, json={
            "model": served_model, "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens, "temperature": 0,
        })
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or ""

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, instructions))


def benign_kl(model: str, direction: str, alpha: float | None, instructions, *, loaded=None) -> float:
    """Exact benign KL of `direction` at `alpha` (see `scoring.benign_kls`)."""
    return benign_kls(model, direction, [alpha], instructions, loaded=loaded)[0]


def run_eval(*, model: str | None, direction: str | None = None, alpha: float | None = None,
             endpoint: str | None = None, served_model: str | None = None, api_key: str | None = None,
             split: str = "test", max_tokens: int = 48, jailbreak_goals: int = 20, limit: int | None = None,
             tensor_parallel_size: int = 1, max_model_len: int | None = None,
             gpu_memory_utilization: float | None = None, style_shift: bool = False, xstest: str | None = None,
             family_goals: int | None = None, xstest_limit: int | None = None, engine: dict | None = None) -> dict:
    """Scores of one model variant on `split`; `style_shift`, `xstest` (CSV path or `XSTEST_SHIPPED`; at most
    `xstest_limit` prompts per label, None: all) and `family_goals` (goals per public jailbreak family, None:
    none) add the `eval_extras` columns; `engine`: further `LLM(...)` arguments."""
    judge = SubstringJudge()
    if direction and alpha is None:
        from ..core.direction_file import load_direction

        alpha = load_direction(direction).recommended_alpha  # what the loader will use
    sets = PromptSets.for_split(split, limit, jailbreak_goals)
    extras = ExtraSets.build(split, limit=limit, style_shift=style_shift, xstest=xstest, xstest_limit=xstest_limit,
                             family_goals=family_goals)
    core = sets.flat()
    everything = core + extras.flat()

    started = time.perf_counter()
    if endpoint:
        texts = generate_endpoint(endpoint, served_model or model, everything, max_tokens=max_tokens, api_key=api_key)
    else:
        texts = chat_completions(model, everything, direction=direction, alpha=alpha, max_tokens=max_tokens,
                                 tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len,
                                 gpu_memory_utilization=gpu_memory_utilization, engine=engine)
    seconds = time.perf_counter() - started
    texts, extra_texts = texts[:len(core)], texts[len(core):]
    harm_out, safe_out, _, borderline_out = sets.split_outputs(texts)
    result = {
        "model": model, "endpoint": endpoint, "direction": direction, "alpha": alpha, "split": split,
        "max_tokens": max_tokens, "judge": judge.name, "generation_seconds": round(seconds, 1),
        **score_outputs(sets, texts, judge=judge),
        **extras.score(extra_texts, judge=judge),
        "judge_calibration": calibrate(judge),
        "samples": {
            "harmful": list(zip(sets.harmful[:8], harm_out[:8])),
            "benign": list(zip(sets.benign[:8], safe_out[:8])),
            "borderline": list(zip(sets.borderline[:8], borderline_out[:8])),
        },
    }
    if direction and model and not endpoint:
        from .hf_model import load_hf_model

        loaded = load_hf_model(model)  # one transformers model for the exact KL and the gate's reads
        result["benign_kl_nats"] = benign_kl(model, direction, alpha, sets.benign, loaded=loaded)
        gate = gate_auroc_by_form(model, direction, extras.style_harmful, extras.style_benign, loaded=loaded)
        if gate is not None:
            result["gate_auroc_by_form"] = gate
    return result


def plot_eval(results: list[dict], labels: list[str], path) -> None:
    """Grouped bars with 95% intervals: one group per metric, one bar per evaluated model."""
    metrics = [("harmful_refusal", "harmful refused"), ("benign_refusal", "benign refused"),
               ("borderline_refusal", "borderline refused"), ("jailbreak_attack_success", "jailbreak success"),
               ("style_shift_harmful_refusal", "style-shift harmful refused"),
               ("style_shift_benign_refusal", "style-shift benign refused"),
               ("xstest_safe_refusal", "XSTest safe refused"),
               ("jailbreak_family_attack_success", "public jailbreak success"), ("degenerate", "degenerate")]
    metrics = [(key, name) for key, name in metrics if all(key in r for r in results)]
    with figure(path, (9, 4.5)) as (_, ax):
        width = 0.8 / max(len(results), 1)
        for i, (res, label) in enumerate(zip(results, labels)):
            xs = [j + i * width for j in range(len(metrics))]
            vals = [res[m]["rate"] for m, _ in metrics]
            errs = [[max(0.0, v - res[m]["ci95"][0]) for (m, _), v in zip(metrics, vals)],
                    [max(0.0, res[m]["ci95"][1] - v) for (m, _), v in zip(metrics, vals)]]
            ax.bar(xs, vals, width, yerr=errs, capsize=3, label=label)
        ax.set_xticks([j + width * (len(results) - 1) / 2 for j in range(len(metrics))])
        ax.set_xticklabels([name for _, name in metrics])
        ax.set_ylim(0, 1)
        ax.set_ylabel("rate (95% Wilson interval)")
        ax.legend()


def write_report(result: dict, out: str | Path, label: str) -> None:
    write_json_and_plot(result, out, lambda png: plot_eval([result], [label], png))


SUMMARY_KEYS = ("harmful_refusal", "benign_refusal", "borderline_refusal", "jailbreak_attack_success", "degenerate",
                "fit_form_harmful_refusal", "style_shift_harmful_refusal", "fit_form_benign_refusal",
                "style_shift_benign_refusal", "xstest_safe_refusal", "xstest_unsafe_refusal",
                "jailbreak_family_attack_success")
#: per-set breakdowns printed under the summary: (result key, inner key or None, label)
BREAKDOWNS = (("style_shift", "harmful_refusal", "harmful refused, per source:form"),
              ("style_shift", "benign_refusal", "benign refused, per source:form"),
              ("xstest_safe_refusal_by_type", None, "XSTest safe prompts refused, per type"),
              ("jailbreak_by_family", None, "jailbreak success, per public family"))


def _line(name: str, r: dict) -> str:
    return f"{name}: {r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"


def print_summary(result: dict) -> None:
    """One line per rate with its Wilson interval, the per-set breakdowns present (style-shift sets marked
    with *), then the KL when measured."""
    for key in (k for k in SUMMARY_KEYS if k in result):
        print(_line(key, result[key]))
    gate = result.get("gate_auroc_by_form", {}).get("per_form")
    if gate:
        print("gate AUROC per form (harmful vs benign of the same form; vs every benign):")
        for form, row in gate.items():
            matched = "-" if row["matched"] is None else f"{row['matched']:.3f}"
            print(f"  {form}: {matched}; {row['vs_all_benign']:.3f} ({row['n_harmful']} harmful, {row['n_benign']} benign)")
    for key, inner, label in BREAKDOWNS:
        rows = result.get(key, {}).get(inner) if inner else result.get(key)
        if rows:
            shifted = set(result.get("style_shift", {}).get("style_shift_sets", ()))
            print(label + (" (* style shift)" if inner else "") + ":")
            for name, r in rows.items():
                print("  " + _line(name + (" *" if name in shifted else ""), r))
    if "benign_kl_nats" in result:
        print(f"benign_kl_nats: {result['benign_kl_nats']:.4f}")
