"""Fit read vectors that fire on harm: the gated (format v2) ROSI edit ``W' = W + α·ŝ·hᵀ``.

The paper's read vector w̄ makes every writer add ``α·(w̄·a)·ŝ`` for every input
``a``; since ``w̄·a`` is the mean coordinate of the writer's own output, harmful
and benign requests get the same push. Here each edited writer gets its own h,
fitted on the writer's *inputs* (o_proj: the concatenated head outputs;
down_proj: ``act(gate)⊙up``) so that ``h·a ≈ 1`` on harmful requests and
``h·a ≈ 0`` on benign ones, including every token the model generates while
answering them (the edit fires at every position). It is still one rank-one
delta per writer, applied at load time.

Inputs are collected by `extraction.writer_inputs`; the read-vector math is
`extraction.read_fit`.

Which window, targets and α ship is decided on validation text in `gated_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.direction_file import DirectionFile, read_key
from ...extraction.method_fit import require_windows, select_and_save, start_fit
from ...extraction.read_fit import benign_top_space, fit_read_vector, gate_statistics
from ...extraction.writer_inputs import (
    Writer,
    WriterInputs,
    benign_fit_requests,
    collect_sources,
    find_writers,
    split_sources,
)
from .config import GatedConfig

DEFAULTS = GatedConfig()


@dataclass
class GateFit:
    """Read vectors of one (ρ, λ) setting for every candidate writer, with held-out gate statistics."""

    method: str
    rho: float
    lam: float
    reads: dict[str, torch.Tensor]
    stats: dict[str, dict]

    @property
    def mean_auroc(self) -> float:
        return sum(s["auroc"] for s in self.stats.values()) / len(self.stats)

    def settings(self) -> dict:
        return {"fit": self.method, "rho": self.rho, "lambda": self.lam}


def fit_gates(writers: list[Writer], harmful: list[WriterInputs], benign: list[WriterInputs],
              settings, *, progress: bool = False) -> list[GateFit]:
    """One `GateFit` per (method, ρ, λ) in `settings`: fitted on the fit part, scored on the held-out part.

    `harmful` / `benign`: the sources of each side (plain and wrapped requests), held out per source.
    """
    from tqdm import tqdm

    h_fit, h_out = split_sources(harmful)
    b_fit, b_out = split_sources(benign)
    rhos = [rho for method, rho, _ in settings if method == "nullspace"]
    bases = {}
    for w in tqdm(writers, desc="fit: benign spectra", unit="writer", disable=not progress or not rhos):
        if rhos:
            d = b_fit.by_writer[w.key].shape[1]
            bases[w.key] = benign_top_space(b_fit.by_writer[w.key], d - max(1, int(min(rhos) * d)))
    fits = []
    for method, rho, lam in tqdm(settings, desc="fit: read vectors", unit="setting", disable=not progress):
        reads, stats = {}, {}
        for w in writers:
            h = fit_read_vector(h_fit.by_writer[w.key], b_fit.by_writer[w.key], method=method, rho=rho, lam=lam,
                                top_space=bases.get(w.key))
            generated = b_out.generated
            reads[w.key] = h
            stats[w.key] = gate_statistics(h, h_out.by_writer[w.key], b_out.by_writer[w.key][~generated],
                                           b_out.by_writer[w.key][generated])
        fits.append(GateFit(method, rho, lam, reads, stats))
    return fits


def windows_from_gates(fit: GateFit, targets_options=(("attn_out", "mlp_out"), ("mlp_out",)),
                       min_auroc: float = DEFAULTS.min_auroc) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    """Candidate (window, targets): for each target set, the layers where every target's gate is good enough."""
    layers = sorted({int(key.split(".")[0]) for key in fit.stats})
    out = []
    for targets in targets_options:
        window = tuple(layer for layer in layers
                       if all(fit.stats.get(read_key(layer, t), {}).get("auroc", 0) >= min_auroc for t in targets))
        if window and (window, targets) not in out:
            out.append((window, targets))
    return out


def gated_direction(write: DirectionFile, fit: GateFit, window, targets) -> DirectionFile:
    """A copy of the write direction `write` carrying `fit`'s read vectors for `window` × `targets`."""
    import copy

    keys = [read_key(layer, t) for layer in window for t in targets]
    direction = copy.copy(write)
    direction.provenance = dict(write.provenance)
    direction.reads = {k: fit.reads[k] for k in keys}
    direction.fit = {**fit.settings(), "window": list(window), "targets": list(targets)}
    direction.gate = {k: {s: round(v, 4) for s, v in fit.stats[k].items()} for k in keys}
    return direction


def extract_gated(model: str, write_direction: str, out, *, layers=None, settings=DEFAULTS.settings,
                  alphas=DEFAULTS.alphas, min_auroc: float = DEFAULTS.min_auroc, n_harmful: int = DEFAULTS.n_harmful,
                  answer_tokens: int = DEFAULTS.answer_tokens, val_n: int = DEFAULTS.val_n,
                  stage1_n: int = DEFAULTS.stage1_n, stage1_tokens: int = DEFAULTS.stage1_tokens,
                  max_new_tokens: int = DEFAULTS.max_new_tokens, finalists: int = DEFAULTS.finalists,
                  batch_size: int = DEFAULTS.batch_size, report_dir=None, wrapped_goals: int = DEFAULTS.wrapped_goals,
                  wrapped_benign: int = DEFAULTS.wrapped_benign, dtype: str = DEFAULTS.dtype,
                  budget_steps: int = DEFAULTS.budget_steps, grow_steps: int = DEFAULTS.grow_steps,
                  forms: tuple[str, ...] = DEFAULTS.forms, trailing_wrappers: bool = DEFAULTS.trailing_wrappers,
                  harmful_answer_tokens: int = DEFAULTS.harmful_answer_tokens, n_benign: int | None = None,
                  progress: bool = True) -> dict:
    """`rosi extract --method gated`: fit read vectors, check the gates, select window/targets/α, write format v2.

    `write_direction`: a v1 direction file for this checkpoint whose vector is the
    write direction ŝ (e.g. a refusal-contrast or mean-diff extraction). Returns the
    report (also written as ``gate.json`` + ``gate.png`` in `report_dir`).

    `wrapped_goals` > 0 also fits on that many further extraction goals under every
    fit-only wrapper (`prompts.FIT_WRAPPER_TEMPLATES`, never the test's jailbreak
    templates), with `wrapped_benign` benign requests under the same wrappers as
    benign, and makes the selection attack validation goals with those wrappers.
    `trailing_wrappers` adds `prompts.TRAILING_FIT_WRAPPER_TEMPLATES` to them (goals
    followed by an instruction about the answer's form).

    `dtype`: the transformers model's for every forward pass and generation
    ("bfloat16" runs about twice as fast on CPUs with bf16 units, and is what vLLM
    serves; "float32" reproduces the directions shipped before it existed).
    Inputs are fitted in float32 or wider either way.

    `harmful_answer_tokens` > 0 also fits, on the harmful side, the positions of
    the model's own greedy answer of that many tokens to each plain harmful goal:
    refused or not, the reply to a harmful request is still harmful context, and a
    gate that fires only until the reply starts is silent once a request has made
    the model begin complying (an instruction on the reply's first words, an
    assistant prefill). Alignment that stops after the first tokens is "shallow"
    in the sense of Qi et al. (arXiv 2406.05946).

    `n_benign`: benign fit requests answered, harmless and borderline alternating
    (`writer_inputs.benign_fit_requests`; None: all of them).

    `budget_steps`: bisection steps toward the largest α within the KL budget for
    each window whose `alphas` straddle it (`gated_selection.alphas_at_budget`;
    0: the grid only, as runs recorded before it existed); `grow_steps`: doublings
    of α past the grid's top for a window whose whole grid is within it.
    """
    import time

    from ...extraction import prompts

    run = start_fit(model, write_direction, dtype, reads=("mean",))
    loaded, started = run.loaded, run.started
    n = loaded.num_layers
    layers = list(layers or range(max(1, n // 4), n - 1, max(1, n // 10)))
    writers = find_writers(loaded, set(layers))
    templates = prompts.fit_wrapper_templates(trailing=trailing_wrappers)
    harmful, benign = collect_sources(loaded, writers, n_harmful=n_harmful, answer_tokens=answer_tokens,
                                      harmful_answer_tokens=harmful_answer_tokens, wrapped_goals=wrapped_goals,
                                      wrapped_benign=wrapped_benign, templates=templates, batch_size=batch_size,
                                      forms=tuple(forms), n_benign=n_benign, progress=progress)
    benign_fit_n = len(benign_fit_requests(tuple(forms), n_benign))
    collected = time.perf_counter()
    fits = fit_gates(writers, harmful, benign, settings, progress=progress)
    fit = max(fits, key=lambda f: f.mean_auroc)
    fitted = time.perf_counter()
    fit_seconds = fitted - started
    if progress:
        print(f"gate: {len(writers)} writers, best fit {fit.settings()} (mean held-out AUROC {fit.mean_auroc:.3f}) "
              f"in {fit_seconds:.0f} s")

    def report_of(selection) -> dict:
        stages = {"load_and_collect": round(collected - started, 1), "fit": round(fitted - collected, 1),
                  "select": round(time.perf_counter() - fitted, 1), **selection.seconds}
        return {
            "fit_seconds": round(fit_seconds, 1), "stage_seconds": stages,
            "n_harmful_fit": n_harmful, "n_benign_fit": benign_fit_n, "answer_tokens": answer_tokens,
            "harmful_answer_tokens": harmful_answer_tokens,
            "wrapped_goals": wrapped_goals, "wrapped_benign": wrapped_benign, "val_n": val_n, "finalists": finalists,
            "fit_wrappers": list(templates) if wrapped_goals or wrapped_benign else [],
            "layers": layers, "chosen_fit": fit.settings(),
            "gates": [{**f.settings(), "mean_auroc": f.mean_auroc, "writers": f.stats} for f in fits],
            "dtype": dtype, "budget_steps": budget_steps, "grow_steps": grow_steps, "forms": list(forms),
        }

    return select_and_save(
        run, lambda window, targets: gated_direction(run.write, fit, window, targets),
        require_windows(windows_from_gates(fit, min_auroc=min_auroc), min_auroc), alphas,
        selection_settings={"val_n": val_n, "stage1_n": stage1_n, "stage1_tokens": stage1_tokens,
                            "max_new_tokens": max_new_tokens, "finalists": finalists, "batch_size": batch_size,
                            "budget_steps": budget_steps, "grow_steps": grow_steps,
                            "forms": tuple(forms)},
        wrapper_templates=templates if wrapped_goals else None,
        method="extract: gated read vectors (rosi_vllm.methods.gated.fit)", out=out, report_dir=report_dir,
        stem="gate", plot=plot_gates, report_of=report_of, progress=progress)


def plot_gates(report: dict, path) -> None:
    """Per layer: held-out AUROC of each writer's gate, and harmful median vs benign/generated p95 of h·a."""
    from ...reports.plots import figure

    chosen = next(g for g in report["gates"] if {k: g[k] for k in ("fit", "rho", "lambda")} == report["chosen_fit"])
    with figure(path, (12, 4.5), ncols=2) as (_, (ax1, ax2)):
        for gate in report["gates"]:
            for target, marker in (("attn_out", "o"), ("mlp_out", "s")):
                rows = sorted((int(k.split(".")[0]), s["auroc"]) for k, s in gate["writers"].items()
                              if k.endswith(target))
                ax1.plot([r[0] for r in rows], [r[1] for r in rows], marker=marker, alpha=0.8,
                         label=f"{target} {gate['fit']} ρ={gate['rho']:g} λ={gate['lambda']:g}")
        ax1.set_xlabel("layer")
        ax1.set_ylabel("held-out AUROC of h·a (harmful vs benign)")
        ax1.set_title("gate quality per writer")
        ax1.legend(fontsize=6)
        keys = sorted(chosen["writers"], key=lambda k: (int(k.split(".")[0]), k))
        xs = range(len(keys))
        for stat, label in (("harmful_median", "harmful median"), ("benign_p95", "benign prompt p95"),
                            ("generated_p95", "benign answer p95")):
            ax2.plot(xs, [chosen["writers"][k][stat] for k in keys], marker="o", label=label)
        ax2.set_xticks(list(xs), [k.replace("_out", "") for k in keys], rotation=60, fontsize=7)
        ax2.set_ylabel("h·a (held out)")
        ax2.set_title(f"chosen fit {report['chosen_fit']}")
        ax2.legend(fontsize=7)


def gate_inputs(loaded, direction_file: DirectionFile) -> list[tuple[Writer, torch.Tensor]]:
    """(writer, h) per edited writer of a gated file: its gate reads ``h·a`` on that writer's input `a`
    (`extraction.gate_by_form`)."""
    writers = find_writers(loaded, set(direction_file.window), tuple(direction_file.default_targets))
    return [(w, direction_file.reads[w.key]) for w in writers if w.key in direction_file.reads]
