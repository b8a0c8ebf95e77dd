"""`rosi harden`: the stages, each timed, with a progress bar and a running estimate of the whole run.

1. **probe**: a few forward passes and a short generation of the model in float32 and in bfloat16; the faster
   (`config.choose_dtype`) is used for every later transformers pass, and its timing is the measured cost that
   `--time-budget` scales the run with (`config.scale_for_budget`); once the write direction is found (a
   stage whose length depends on how often the model refuses), the stages left are re-planned into what is
   left of the budget, never at a larger scale.
2. **write direction**: the unedited model answers harmful extraction prompts; if it refuses fewer than
   `min_refusal_fraction` of them (or fewer than `min_per_group`), the extraction is repeated under the safety
   system prompt; if still fewer than `min_per_group` are refused, more of the extraction split is answered, as
   many as the measured refusal share says a contrast needs (`config.prompts_needed`) and the time budget can pay
   for (`config.affordable_extraction`); with enough refused and complied answers the direction is
   mean(refused) − mean(complied)
   (refusal contrast), otherwise harmful − harmless (mean-diff). Its layer: among candidates within
   `write_band` of the depth (the best separated on prompts their direction was not computed from,
   `config.split_half_separation`, and as many spread over the band), the one whose direction, added to the
   MLP output of the edit band's middle layer, makes the model refuse the most harmful requests it had
   complied with (`induced_refusal`: separating is not steering). The α grid is `alpha_fractions` × the
   median residual norm at that middle layer.
3. **base eval**: `rosi eval` of the unedited model on the test split (and the style-shift, XSTest and
   public-jailbreak sets that fit its context) through vLLM, like the hardened one, so the two differ only
   by the edit and never by the generation backend. It runs before the edit because it measures vLLM's
   cost here, which no transformers probe predicts; the edit is then sized into the budget left.
4. **edit**: `extract_threshold` or `extract_gated` (`config.method_for`), fitted and validated on prompts in
   every fit form (`config.forms`), α grown past its grid and bisected to the KL budget's upper bound.
5. **hardened eval**: `rosi eval` on the written file through vLLM's real loader.
Then the checks, the verdict line, the model card and ``harden.json`` (with every stage's wall time).
"""

from __future__ import annotations

import gc
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

from ..extraction.eval_extras import XSTEST_SHIPPED
from ..extraction.forms import fit_prompts
from .card import render_card
from .config import (
    DEFAULT_TIME_BUDGET_MIN,
    THRESHOLD,
    Cost,
    HardenConfig,
    affordable_extraction,
    band_layers,
    choose_dtype,
    choose_threads,
    estimate_stages,
    method_for,
    prompts_needed,
    scale_for_budget,
    split_half_separation,
)
from .steps import extraction
from .verdict import checks, verdict_line

#: the base evaluation runs before the edit: it measures what vLLM's generation costs on this machine (about half
#: of transformers' per token on SmolLM2 and two thirds on Qwen2.5-Coder-0.5B on 2 CPU cores, `config.VLLM_TOKEN_SHARE`;
#: no transformers probe predicts it), so the edit, the one stage whose size is free, is sized into what is left
#: once both evaluations are known
STAGES = ("probe", "write_direction", "base_eval", "edit", "hardened_eval")


class Clock:
    """Wall time per stage, and the estimate of what is left, rescaled by how the finished stages compared with
    their estimates."""

    def __init__(self, out=sys.stderr):
        self.seconds: dict[str, float] = {}
        self.estimates: dict[str, float] = {}
        self.out = out
        self._started = time.perf_counter()

    def stage(self, name: str):
        clock = self

        class _Stage:
            def __enter__(self):
                self.t = time.perf_counter()
                left = clock.remaining(name)
                est = clock.estimates.get(name)
                print(f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}"
                      + (f": ~{est:.0f} s; run left ~{left:.0f} s" if est is not None else ""),
                      file=clock.out, flush=True)
                return self

            def __exit__(self, *exc):
                clock.seconds[name] = round(time.perf_counter() - self.t, 1)
                print(f"    {name} done in {clock.seconds[name]:.0f} s", file=clock.out, flush=True)
                return False

        return _Stage()

    def remaining(self, from_stage: str) -> float:
        done = [s for s in self.seconds if s in self.estimates and self.estimates[s] > 0]
        ratio = (sum(self.seconds[s] for s in done) / sum(self.estimates[s] for s in done)) if done else 1.0
        todo = STAGES[STAGES.index(from_stage):]
        return ratio * sum(self.estimates.get(s, 0.0) for s in todo)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _tensor_names(model: str) -> list[str]:
    from ..core.checkpoint import safetensors_files, tensor_records

    return [r.name for r in tensor_records(safetensors_files(model))]


def _probe(ex, model: str, config: HardenConfig) -> tuple[object, str, dict, Cost]:
    """Load the model in both dtypes, time `probe_prompts` forward passes and a `probe_tokens` generation each;
    return the model in the chosen dtype, the dtype, the timings and the measured cost at that dtype."""
    import torch
    from tqdm import tqdm

    # requests of the lengths the run answers: short benchmark-style ones (the write direction's) alternating
    # with benign fit requests in every fit form (the fit's and the selection's); on short requests alone the
    # probe measured about half the per-token cost of the selection's generation on Qwen2.5-Coder-0.5B
    short, fit = ex.prompts.harmless("extraction"), fit_prompts("benign", "extraction", config.forms)
    instructions = ex.prompts.interleave(short, fit)[:config.probe_prompts]
    timings = {}
    kept = None
    for name in tqdm(("float32", "bfloat16"), desc="probe: dtype timing", unit="dtype"):
        t = time.perf_counter()
        loaded = ex.load_hf_model(model, dtype=getattr(torch, name))
        load = time.perf_counter() - t
        texts = ex.chat_texts(loaded.tokenizer, instructions)
        ex.last_token_residuals(loaded, texts[:2], batch_size=2, progress=False)  # warm-up
        if kept is None:  # first model: how many torch threads are fastest here and now
            threads = {}
            for n in sorted({1, torch.get_num_threads()}):
                torch.set_num_threads(n)
                t = time.perf_counter()
                ex.last_token_residuals(loaded, texts, batch_size=len(texts), progress=False)
                threads[n] = round(time.perf_counter() - t, 3)
            torch.set_num_threads(choose_threads(threads))
            timings["threads"] = threads
        t = time.perf_counter()
        ex.last_token_residuals(loaded, texts, batch_size=len(texts), progress=False)
        forward = time.perf_counter() - t
        t = time.perf_counter()
        ex.generate(loaded, instructions, max_new_tokens=config.probe_tokens, batch_size=len(instructions))
        gen = time.perf_counter() - t
        t = time.perf_counter()
        ex.generate(loaded, instructions[:1], max_new_tokens=config.probe_tokens, batch_size=1)
        gen_one = time.perf_counter() - t
        timings[name] = {"forward_s": round(forward, 3), "generate_s": round(gen, 3), "total_s": round(forward + gen, 3),
                         "load_s": round(load, 3), "generate_one_s": round(gen_one, 3)}
        if kept is None:
            kept = loaded
        else:
            kept = (kept, loaded)
    dtype = choose_dtype({k: v["total_s"] for k, v in timings.items() if k in ("float32", "bfloat16")},
                         config.bf16_speedup_needed)
    loaded = kept[1] if dtype == "bfloat16" else kept[0]
    del kept
    gc.collect()
    n = len(instructions)
    cost = Cost(gen_token=timings[dtype]["generate_s"] / (n * config.probe_tokens),
                forward=timings[dtype]["forward_s"] / n, load=timings[dtype]["load_s"],
                gen_step=timings[dtype]["generate_one_s"] / config.probe_tokens, probe_batch=n)
    return loaded, dtype, timings, cost


def _answers(ex, loaded, instructions, system_prompt, config, desc):
    from tqdm import tqdm

    out = []
    bs = config.batch_size
    for start in tqdm(range(0, len(instructions), bs), desc=desc, unit="batch"):
        out += ex.generate(loaded, instructions[start:start + bs], system_prompt=system_prompt,
                           max_new_tokens=config.extract_tokens, batch_size=bs)
    return out


def write_direction(ex, loaded, model: str, config: HardenConfig, path: Path, fingerprint: str,
                    most_prompts: int | None = None) -> dict:
    """Stage 2 (module docstring): write the v1 write direction to `path`; return what was measured.
    `most_prompts`: answer at most this many extraction prompts in the last pass (`config.affordable_extraction`;
    None: as many as a contrast needs)."""
    import torch

    from ..core.judge import SubstringJudge

    judge = SubstringJudge()
    harmful = list(ex.prompts.harmful("extraction"))[:config.extract_n]
    need = max(config.min_per_group, int(round(config.min_refusal_fraction * len(harmful))))
    measured = {}
    system_prompt = None
    flags = first_flags = judge.judge(_answers(ex, loaded, harmful, None, config, "write: unedited answers"))
    measured["refusal_without_system_prompt"] = sum(flags) / len(flags)
    if sum(flags) < need:
        system_prompt = ex.resolve_system_prompt("safety")
        flags = judge.judge(_answers(ex, loaded, harmful, system_prompt, config, "write: answers, safety prompt"))
        measured["refusal_with_safety_prompt"] = sum(flags) / len(flags)
    split = list(ex.prompts.harmful("extraction"))
    needed = prompts_needed(sum(flags), len(flags), config.min_per_group, len(split))
    total = needed if most_prompts is None else max(len(harmful), min(needed, most_prompts))
    if total < needed:  # the budget cannot pay for the prompts a contrast needs: fewer, maybe a mean difference
        measured["extension_capped_by_budget"] = {"needed": needed, "answered": total}
    if total > len(harmful):  # too few refused for a contrast at this refusal share: answer more prompts
        more = split[len(harmful):total]
        flags = flags + judge.judge(_answers(ex, loaded, more, system_prompt, config, "write: more answers"))
        harmful = harmful + more
        measured["extended_to"] = len(harmful)
    n_refused = sum(flags)
    n_complied = len(flags) - n_refused
    residuals = ex.last_token_residuals(loaded, ex.chat_texts(loaded.tokenizer, harmful, system_prompt),
                                        config.batch_size, "write: residuals")
    mask = torch.tensor(flags, dtype=torch.bool)
    if min(n_refused, n_complied) >= config.min_per_group:
        method, group_a, group_b, harmless = "refusal-contrast", residuals[:, mask], residuals[:, ~mask], []
    else:
        harmless = list(ex.prompts.harmless("extraction"))[:len(harmful)]
        other = ex.last_token_residuals(loaded, ex.chat_texts(loaded.tokenizer, harmless, system_prompt),
                                        config.batch_size, "write: harmless residuals")
        method, group_a, group_b = "mean-diff", residuals, other
    n_layers = loaded.num_layers
    band = band_layers(n_layers, config.write_band)
    separations = {layer: split_half_separation(group_a[layer], group_b[layer]) for layer in band}
    directions = group_a.mean(dim=1) - group_b.mean(dim=1)
    candidates = sorted(set(sorted(band, key=lambda k: -separations[k])[:config.write_candidates])
                        | set(band_layers(n_layers, config.write_band, config.write_candidates)))
    edit_layers = band_layers(n_layers, config.edit_band)
    at = edit_layers[len(edit_layers) // 2]
    complied = [p for p, refused in zip(harmful, first_flags) if not refused][:config.induce_n]
    targets = complied or list(ex.prompts.harmless("extraction"))[:config.induce_n]
    residual_norm = float(residuals[at].norm(dim=-1).median())
    induced = induced_refusal(ex, loaded, {k: directions[k] for k in candidates}, at, residual_norm, targets, config)
    layer = max(candidates, key=lambda k: (induced[k], separations[k], -k))
    extraction = ex.Extraction(directions, ex.prompts.sha256_of(harmful), ex.prompts.sha256_of(harmless),
                               system_prompt, len(harmful), method=method,
                               n_refused=n_refused if method == "refusal-contrast" else None,
                               n_complied=n_complied if method == "refusal-contrast" else None)
    alphas = [round(f * residual_norm, 3) for f in config.alpha_fractions]
    direction = ex.direction_file_for(loaded, extraction, layer, alphas[-1], fingerprint)
    direction.provenance["harden"] = "write direction for rosi harden (its alpha is not used)"
    ex.save_direction(path, direction)
    return {"file": str(path), "method": method, "layer": layer, "system_prompt": system_prompt is not None,
            "n_refused": n_refused, "n_complied": n_complied, "n": len(harmful), **measured,
            "separation": {str(k): round(v, 4) for k, v in separations.items()},
            "induced_refusal": {str(k): round(v, 4) for k, v in induced.items()}, "induced_at": at,
            "induced_on": "complied harmful" if complied else "harmless", "induced_n": len(targets),
            "residual_norm_median": round(residual_norm, 4), "alphas": alphas}


def induced_refusal(ex, loaded, directions: dict, at: int, norm: float, prompts: list[str],
                    config: HardenConfig) -> dict[int, float]:
    """Per candidate layer: the share of `prompts` (harmful requests the unedited model complied with) it refuses
    when that layer's direction (unit length) is added to the MLP output of layer `at` (where the edit will
    write) at every position; the best over the strengths `induce_fractions` × `norm` (the median residual norm
    there). Whether writing the direction causes refusal, which separating refused from complied prompts does
    not show: measured on SmolLM2, the best-separated layer's direction induced no refusal at any strength while
    a deeper layer's refused 7 of 8 (research/results/harden/measurements-2026-12-04.json)."""
    from tqdm import tqdm

    from ..core.architectures import MLP_OUT
    from ..core.judge import SubstringJudge

    judge = SubstringJudge()
    modules = [w.module_name for w in ex.find_writers(loaded, {at}, (MLP_OUT,))]
    rates: dict[int, float] = {}
    jobs = [(layer, f) for layer in directions for f in config.induce_fractions]
    for layer, fraction in tqdm(jobs, desc=f"write: induced refusal, written at layer {at}", unit="test"):
        unit = directions[layer] / directions[layer].norm().clamp_min(1e-12)
        with ex.added_to_outputs(loaded, modules, fraction * norm * unit):
            texts = ex.generate(loaded, prompts, max_new_tokens=config.induce_tokens, batch_size=config.batch_size)
        flags = judge.judge(texts)
        rates[layer] = max(rates.get(layer, 0.0), sum(flags) / len(flags))
    return rates


def eval_options(ex, loaded, config: HardenConfig, xstest: str | None) -> dict:
    """The `run_eval` options both evaluations share: the extra sets whose longest prompt fits the model's
    context with the completion (measured with its tokenizer), style shift and public families otherwise off."""
    context = int(getattr(loaded.model.config, "max_position_embeddings", 0) or 0)
    room = context - config.eval_tokens - 64  # chat template

    def fits(texts) -> bool:
        texts = list(texts)
        if not texts:
            return True
        longest = max(len(ids) for ids in loaded.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return longest <= room

    limit = config.eval_limit
    core = ex.PromptSets.for_split("test", limit, config.jailbreak_goals)
    if not fits(core.flat()):
        from ..core.errors import RosiError

        raise RosiError(f"rosi: the test split's prompts do not fit this model's context of {context} tokens")
    style = ex.ExtraSets.build("test", limit=limit, style_shift=True)
    families = ex.ExtraSets.build("test", limit=limit, family_goals=config.jailbreak_goals)
    xs = ex.ExtraSets.build("test", limit=limit, xstest=xstest, xstest_limit=limit) if xstest else None
    options = {"split": "test", "limit": limit, "jailbreak_goals": config.jailbreak_goals,
               "max_tokens": config.eval_tokens, "style_shift": fits(style.flat()),
               "family_goals": config.jailbreak_goals if fits(families.flat()) else None,
               "xstest": xstest if xs is not None and fits(xs.flat()) else None, "xstest_limit": limit}
    options["engine"] = {} if config.eval_compile else {"enforce_eager": True}
    return options


def evaluate(ex, model: str, options: dict, direction: str | None = None) -> dict:
    """Stages 3 and 5: `rosi eval` through vLLM of the unedited model (no `direction`) or of the written file
    through the real loader, on the same sets and engine settings (`options`)."""
    result = ex.run_eval(model=model, direction=direction, **options)
    result["backend"] = "vllm"
    return result


def edit(ex, method: str, model: str, write_file: str, out: Path, report_dir: Path, config: HardenConfig,
         dtype: str, alphas: list[float], num_layers: int) -> dict:
    """Stage 4: fit and select the threshold or gated edit; write `out`. When no layer's gate reaches
    `min_auroc`, the fit is repeated with no AUROC floor (the best gates available) and the report says so."""
    from ..core.errors import RosiError

    common = {"alphas": tuple(alphas), "n_harmful": config.n_harmful, "answer_tokens": config.answer_tokens,
              "n_benign": config.n_benign, "val_n": config.val_n, "stage1_n": config.stage1_n,
              "stage1_tokens": config.stage1_tokens,
              "max_new_tokens": config.max_new_tokens, "finalists": config.finalists,
              "batch_size": config.batch_size, "budget_steps": config.budget_steps,
              "grow_steps": config.grow_steps, "forms": config.forms, "dtype": dtype,
              "report_dir": report_dir}

    def run(min_auroc: float) -> dict:
        if method == THRESHOLD:
            return ex.extract_threshold(model, write_file, out, layers=band_layers(num_layers, config.edit_band),
                                        wrapped=config.wrapped, min_auroc=min_auroc, **common)
        return ex.extract_gated(model, write_file, out, layers=band_layers(num_layers, config.edit_band,
                                                                           config.gated_max_layers),
                                wrapped_goals=config.wrapped, wrapped_benign=config.wrapped, min_auroc=min_auroc,
                                **common)

    try:
        report = run(config.min_auroc)
        report["min_auroc_relaxed"] = False
    except RosiError as exc:
        if "gate reached held-out AUROC" not in str(exc):
            raise
        print(f"rosi harden: {exc}; refitting with no AUROC floor (the gates are weak: expect missed targets)",
              file=sys.stderr)
        report = run(0.0)
        report["min_auroc_relaxed"] = True
    return report


def harden(model_arg: str, out: str | Path, *, model: str | None = None, time_budget_min: float | None = None,
           xstest: str | None = XSTEST_SHIPPED, config: HardenConfig = HardenConfig()) -> dict:
    """`rosi harden MODEL --out FILE`: every stage of the module docstring; returns the report (also written as
    ``harden.json`` in the report folder, ``FILE`` without its suffix). `model_arg`: what the user named (a
    registered name or a folder), `model`: its checkpoint folder (default: `model_arg`)."""
    from ..core.architectures import spec_for_architecture
    from ..core.checkpoint import model_shape
    from ..core.fingerprint import fingerprint_checkpoint

    ex = extraction()
    started = time.perf_counter()
    model = model or model_arg
    out = Path(out)
    report_dir = out.with_suffix("")
    report_dir.mkdir(parents=True, exist_ok=True)
    shape = model_shape(model)
    spec = spec_for_architecture(shape.architecture)
    method, method_rule = method_for(spec, _tensor_names(model))
    fingerprint = fingerprint_checkpoint(model)
    print(f"rosi harden: {model_arg} ({shape.architecture}, {shape.num_layers} layers): {method} edit, because "
          f"{method_rule}", file=sys.stderr)
    clock = Clock()
    with clock.stage("probe"):
        loaded, dtype, timings, cost = _probe(ex, model, config)
        def eval_prompts(c: HardenConfig) -> int:
            return (len(ex.PromptSets.for_split("test", c.eval_limit, c.jailbreak_goals).flat())
                    + len(ex.ExtraSets.build("test", limit=c.eval_limit, style_shift=True, xstest=xstest,
                                             xstest_limit=c.eval_limit, family_goals=c.jailbreak_goals).flat()))

        budget = None if time_budget_min is None else 60 * time_budget_min
        defaults = config
        scale, config = scale_for_budget(defaults, cost, budget, eval_prompts)
        planned = scale
        clock.estimates = estimate_stages(config, cost, eval_prompts=eval_prompts(config))
        print(f"    torch threads {torch_threads()} (forward seconds per thread count {timings['threads']}); "
              f"dtype {dtype} (float32 {timings['float32']['total_s']:.2f} s, bfloat16 "
              f"{timings['bfloat16']['total_s']:.2f} s on {config.probe_prompts} prompts); scale {scale:.3f}; "
              f"estimate {sum(clock.estimates.values()):.0f} s", file=sys.stderr)
    later = STAGES[STAGES.index("write_direction") + 1:]
    with clock.stage("write_direction"):
        most = None
        if budget is not None:  # leave the stages after it at least their smallest scale
            floor = defaults.scaled(defaults.min_scale)
            rest = estimate_stages(floor, cost, eval_prompts=eval_prompts(floor))
            left = budget - (time.perf_counter() - started) - sum(rest[k] for k in later)
            most = affordable_extraction(config, cost, left)
        write = write_direction(ex, loaded, model, config, report_dir / "write-direction.safetensors", fingerprint,
                                most_prompts=most)
        print(f"    {write['method']} at layer {write['layer']} (induced refusal "
              f"{write['induced_refusal'][str(write['layer'])]:.0%}, separation {write['separation'][str(write['layer'])]:.2f}"
              f"; safety prompt: {write['system_prompt']}); α grid {write['alphas']}", file=sys.stderr)
        if budget is not None:  # the write stage's length depends on the model's refusals: re-plan what is left
            left = budget - (time.perf_counter() - started)
            rescaled, rest = scale_for_budget(defaults, cost, left, eval_prompts, stages=later, at_most=scale)
            if rescaled < scale:
                print(f"    {left:.0f} s of the budget left: the evaluations and the edit rescaled from "
                      f"{scale:.3f} to {rescaled:.3f}", file=sys.stderr)
                scale, config = rescaled, rest
                estimates = estimate_stages(config, cost, eval_prompts=eval_prompts(config))
                clock.estimates.update({k: v for k, v in estimates.items() if k in later})
        options = eval_options(ex, loaded, config, xstest)
        num_layers = loaded.num_layers
        del loaded
        gc.collect()
    with clock.stage("base_eval"):
        base = evaluate(ex, model, options)
    eval_scale = scale
    if budget is not None:  # both evaluations now cost about what this one took: size the edit into the rest
        extra = clock.estimates["hardened_eval"] - clock.estimates["base_eval"]  # the KL and the gate's reads
        clock.estimates["hardened_eval"] = clock.seconds["base_eval"] + extra
        left = budget - (time.perf_counter() - started) - clock.estimates["hardened_eval"]
        rescaled, rest = scale_for_budget(defaults, cost, left, stages=("edit",), at_most=scale)
        if rescaled < scale:
            print(f"    {left:.0f} s of the budget left for the edit: rescaled from {scale:.3f} to {rescaled:.3f}",
                  file=sys.stderr)
            scale, config = rescaled, rest
            clock.estimates["edit"] = estimate_stages(config, cost)["edit"]
    with clock.stage("edit"):
        edit_report = edit(ex, method, model, write["file"], out, report_dir, config, dtype, write["alphas"],
                           num_layers)
    with clock.stage("hardened_eval"):
        hardened = evaluate(ex, model, options, direction=str(out))
        ex.write_report(hardened, report_dir / "hardened-eval.json", "hardened")
        ex.write_report(base, report_dir / "base-eval.json", "base")
        ex.plot_eval([base, hardened], ["base", "hardened"], report_dir / "eval.png")
    found = checks(base, hardened)
    best = edit_report["best"]
    label = f"{method} window {best['window']} α={best['alpha']:g}"
    line = verdict_line(found, label)
    reproduce = " ".join(["rosi harden", shlex.quote(model_arg), "--out", shlex.quote(str(out))]
                         + ([] if time_budget_min == DEFAULT_TIME_BUDGET_MIN
                            else ["--time-budget", f"{time_budget_min or 0:g}"])
                         + (["--xstest", shlex.quote(xstest)] if xstest and xstest != XSTEST_SHIPPED else []))
    serve = (f"vllm serve {shlex.quote(model)} --load-format rosi --model-loader-extra-config "
             + shlex.quote(json.dumps({"direction": str(out)})))
    report = {
        "model": model_arg, "model_path": model, "architecture": shape.architecture, "num_layers": shape.num_layers,
        "direction_file": str(out), "method": method, "method_rule": method_rule, "dtype": dtype,
        "dtype_timings": {k: v for k, v in timings.items() if k in ("float32", "bfloat16")},
        "thread_timings": timings["threads"], "torch_threads": torch_threads(), "cost": asdict(cost), "time_budget_min": time_budget_min, "scale": scale,
        "scale_planned": planned, "scale_eval": eval_scale,
        "config": asdict(config), "write": write, "edit": {"window": best["window"], "alpha": best["alpha"],
                                                            "min_auroc_relaxed": edit_report["min_auroc_relaxed"],
                                                            "selected": best,
                                                            "stage_seconds": edit_report.get("stage_seconds")},
        "eval_options": options, "base_backend": base["backend"], "base_eval": _brief(base),
        "hardened_eval": _brief(hardened), "checks": [c.to_dict() for c in found], "verdict": line,
        "targets_met": bool(found) and all(c.ok for c in found),
        "stage_estimates": {k: round(v, 1) for k, v in clock.estimates.items()},
        "stage_seconds": clock.seconds, "seconds": round(time.perf_counter() - started, 1),
        "serve": serve, "reproduce": reproduce,
    }
    (report_dir / "harden.json").write_text(json.dumps(report, indent=2) + "\n")
    card = out.with_suffix(".md")
    card.write_text(render_card(report))
    print(f"wrote {out}, {card} and {report_dir}/ (harden.json, base-eval.json, hardened-eval.json, eval.png)",
          file=sys.stderr)
    print(line, flush=True)
    return report


def _brief(result: dict) -> dict:
    """An eval result without its samples (those stay in the eval JSON)."""
    return {k: v for k, v in result.items() if k != "samples"}
