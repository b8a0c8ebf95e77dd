"""Fit and select a threshold direction (format v3): `rosi extract --method threshold`.

Why a threshold: the gated (v2) edit reads linearly, ``α·(h·a)·ŝ`` at every
position, so whatever h·a leaks on benign text is paid for at every unit of α. On
Qwen2.5-Coder that price bound plain refusal near 90 % at the KL budget. A gated MLP
already holds a threshold (SiLU), so v3 gives up one neuron per edited layer and
makes it compute ``≈ α·ReLU(g·x − t)·ŝ`` (`injection.threshold_rows`): silent below
t, a full push above it.

Per candidate layer L, on the MLP's normalised input x (the residual after the
post-attention norm, captured by a pre-hook on the MLP module):
- g: the gated fit's read vector (`extraction.read_fit.fit_read_vector`, AlphaSteer's null-space
  regression at ρ 0.7, λ 1), scaled so the harmful median of g·x is 1, on the same
  prompt sources as the gated fit (`extraction.writer_inputs.collect_sources`);
- u: a ridge fit of ``u·x ≈ 1`` over every fitted position. RMS-normalised
  residuals share a large common component, so one vector reads ≈ 1 everywhere; it
  supplies the bias a bias-free MLP lacks (held-out u·x spread: in the report);
- the neuron: the one whose mean |activation| × down-column norm over benign
  replies is smallest (`quietest_neurons`), the least missed.
Held-out gate statistics of g·x are the first score, per layer, in the report.
Then `gated_selection.select_gated` picks the window and α with the same stages,
budgets and objective as the gated mode, the real edit applied through the plan.
"""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone

import torch

from ...core.architectures import MLP_GATE, spec_for_architecture
from ...core.direction_file import DirectionFile, ThresholdNeuron
from ...extraction.hf_model import LoadedModel
from ...extraction.method_fit import require_windows, select_and_save, start_fit
from ...extraction.read_fit import fit_read_vector, gate_statistics
from ...extraction.writer_inputs import Writer, collect_sources, find_writers, split_sources
from .config import PRESETS, SHARPNESS, ThresholdConfig  # noqa: F401  (PRESETS: callers' entry point)

DEFAULTS = ThresholdConfig()

def mlp_input_writers(loaded: LoadedModel, layers) -> list[Writer]:
    """One pseudo-writer per layer whose inputs are its MLP's normalised input (the module holding the gate)."""
    spec = spec_for_architecture(loaded.shape.architecture)
    gates = [w for w in spec.mlp_inputs if w.target == MLP_GATE]
    found = {}
    for name, _ in loaded.model.named_parameters():
        for gate in gates:
            match = gate.matches(name)
            if match and int(match["layer"]) in layers:
                module = name.removesuffix(".weight").rsplit(".", 1)[0]  # model.layers.L.mlp
                found[int(match["layer"])] = Writer(f"{match['layer']}.mlp_in", int(match["layer"]), "mlp_in", module)
    if not found:
        from ...core.errors import RosiError

        raise RosiError(f"rosi: {loaded.shape.architecture} has no dense gated MLP in layers {sorted(layers)}; "
                        "a threshold direction needs one")
    return [found[layer] for layer in sorted(found)]


def quietest_neurons(loaded: LoadedModel, layers, instructions, *, batch_size: int = DEFAULTS.batch_size) -> dict[int, int]:
    """Per layer: the neuron whose mean |activation| × down-column norm over the benign replies is smallest."""
    from ...extraction.hf_eval import generate

    downs = {w.layer: loaded.model.get_submodule(w.module_name) for w in find_writers(loaded, set(layers), ("mlp_out",))}
    activity = {layer: torch.zeros(module.weight.shape[1]) for layer, module in downs.items()}

    def accumulate(layer):
        def hook(_module, args):
            activity[layer] += args[0].detach().float().abs().sum(dim=(0, 1)).cpu()
        return hook

    hooks = [module.register_forward_pre_hook(accumulate(layer)) for layer, module in downs.items()]
    try:
        generate(loaded, instructions, max_new_tokens=8, batch_size=batch_size)
    finally:
        for hook in hooks:
            hook.remove()
    return {layer: int((activity[layer] * downs[layer].weight.detach().float().norm(dim=0).cpu()).argmin())
            for layer in downs}


def fit_bias(inputs: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """u with ``u·x ≈ 1`` on every row of `inputs` (ridge relative to the mean squared input coordinate)."""
    x = inputs.double()
    scale = ridge * float((x * x).sum()) / x.shape[1]
    u = torch.linalg.solve(x.T @ x + scale * torch.eye(x.shape[1], dtype=x.dtype),
                           x.T @ torch.ones(len(x), dtype=x.dtype))
    return u.float()


def fit_neurons(loaded: LoadedModel, layers, *, n_harmful: int = DEFAULTS.n_harmful, wrapped: int = DEFAULTS.wrapped,
                answer_tokens: int = DEFAULTS.answer_tokens, batch_size: int = DEFAULTS.batch_size,
                forms: tuple[str, ...] = DEFAULTS.forms, n_benign: int | None = None,
                progress: bool = True) -> tuple[dict[int, ThresholdNeuron], dict[int, dict]]:
    """g, u and the neuron of every layer, with held-out statistics of g·x (and of u·x, which should be ≈ 1).
    `n_benign`: benign fit requests answered (`writer_inputs.benign_fit_requests`; None: all)."""
    from ...extraction import prompts

    writers = mlp_input_writers(loaded, set(layers))
    harmful, benign = collect_sources(loaded, writers, n_harmful=n_harmful, answer_tokens=answer_tokens,
                                      wrapped_goals=wrapped, wrapped_benign=wrapped, batch_size=batch_size,
                                      forms=forms, n_benign=n_benign, progress=progress)
    h_fit, h_out = split_sources(harmful)
    b_fit, b_out = split_sources(benign)
    benign_requests = list(prompts.harmless("extraction")) + list(prompts.borderline("extraction"))
    quiet = quietest_neurons(loaded, [w.layer for w in writers], benign_requests[:48], batch_size=batch_size)
    neurons, stats = {}, {}
    for w in writers:
        g = fit_read_vector(h_fit.by_writer[w.key], b_fit.by_writer[w.key], method="nullspace", rho=0.7, lam=1.0)
        u = fit_bias(torch.cat([b_fit.by_writer[w.key], h_fit.by_writer[w.key]]))
        bias_read = torch.cat([b_out.by_writer[w.key], h_out.by_writer[w.key]]).float() @ u
        neurons[w.layer] = ThresholdNeuron(quiet[w.layer], g, u)
        stats[w.layer] = {
            "neuron": quiet[w.layer],
            **gate_statistics(g, h_out.by_writer[w.key], b_out.by_writer[w.key][~b_out.generated],
                              b_out.by_writer[w.key][b_out.generated]),
            "bias_read_mean": float(bias_read.mean()), "bias_read_sd": float(bias_read.std()),
            "bias_read_min": float(bias_read.min()), "bias_read_max": float(bias_read.max()),
        }
    return neurons, stats


def candidate_windows(stats: dict[int, dict], min_auroc: float = DEFAULTS.min_auroc,
                      sizes=(1, 2, 3)) -> list[tuple[int, ...]]:
    """Per size, the run of adjacent layers, each gate at least `min_auroc`, with the best mean held-out AUROC."""
    good = sorted(layer for layer, s in stats.items() if s["auroc"] >= min_auroc)
    windows = []
    for size in sizes:
        runs = [tuple(good[i:i + size]) for i in range(len(good) - size + 1)
                if good[i + size - 1] - good[i] == size - 1]
        if runs:
            windows.append(max(runs, key=lambda run: sum(stats[layer]["auroc"] for layer in run)))
    return windows


def threshold_direction(write: DirectionFile, neurons: dict[int, ThresholdNeuron], stats: dict[int, dict], window,
                        *, threshold: float = DEFAULTS.threshold, sharpness: float = SHARPNESS,
                        fit: dict | None = None) -> DirectionFile:
    """A format-v3 copy of the write direction `write` transplanting `window`'s neurons."""
    direction = copy.copy(write)
    direction.provenance = dict(write.provenance)
    direction.reads = {}
    direction.neurons = {layer: neurons[layer] for layer in window}
    direction.threshold, direction.sharpness = float(threshold), float(sharpness)
    direction.fit = {**(fit or {}), "window": list(window)}
    direction.gate = {str(layer): {k: round(v, 4) for k, v in stats[layer].items()} for layer in window}
    return direction


def band_layers(num_layers: int, band: tuple[float, float]) -> list[int]:
    """The layers from ``band[0]·n`` up to (not including) ``band[1]·n``: where a preset looks for its window."""
    return list(range(int(band[0] * num_layers), int(band[1] * num_layers)))


def extract_threshold(model: str, write_direction: str, out, *, layers=None, band=DEFAULTS.band,
                      alphas=DEFAULTS.alphas, threshold: float = DEFAULTS.threshold,
                      min_auroc: float = DEFAULTS.min_auroc, n_harmful: int = DEFAULTS.n_harmful,
                      wrapped: int = DEFAULTS.wrapped, answer_tokens: int = DEFAULTS.answer_tokens,
                      val_n: int = DEFAULTS.val_n, stage1_n: int = DEFAULTS.stage1_n,
                      stage1_tokens: int = DEFAULTS.stage1_tokens, max_new_tokens: int = DEFAULTS.max_new_tokens,
                      finalists: int = DEFAULTS.finalists, batch_size: int = DEFAULTS.batch_size,
                      budget_steps: int = DEFAULTS.budget_steps, grow_steps: int = DEFAULTS.grow_steps,
                      forms: tuple[str, ...] = DEFAULTS.forms, dtype: str = DEFAULTS.dtype, report_dir=None,
                      preset: str | None = None, n_benign: int | None = None, progress: bool = True) -> dict:
    """`rosi extract --method threshold`: fit neurons, check their gates, select window and α, write format v3.

    `write_direction`: a v1 or v2 direction file for this checkpoint whose vector is
    the write direction ŝ; `layers`: the candidate layers (None: `band` of the
    model's depth); `preset`: the name of the `PRESETS` row the settings came from,
    for the report. Returns the report (also ``threshold.json`` and
    ``threshold.png`` in `report_dir`).
    """
    from ...extraction import prompts

    run = start_fit(model, write_direction, dtype, reads=("mean", "gated"))
    started = run.started
    layers = list(layers or band_layers(run.loaded.num_layers, band))
    neurons, stats = fit_neurons(run.loaded, layers, n_harmful=n_harmful, wrapped=wrapped, forms=tuple(forms),
                                 answer_tokens=answer_tokens, batch_size=batch_size, n_benign=n_benign,
                                 progress=progress)
    fitted = time.perf_counter()
    fit = {"fit": "nullspace", "rho": 0.7, "lambda": 1.0, "bias": "ridge u·x≈1", "neuron": "quietest on benign"}
    windows = require_windows(candidate_windows(stats, min_auroc), min_auroc)
    if progress:
        print("gate: " + ", ".join(f"L{layer} AUROC {s['auroc']:.3f}" for layer, s in sorted(stats.items()))
              + f"; candidate windows {[list(w) for w in windows]} ({fitted - started:.0f} s)")

    def report_of(selection) -> dict:
        return {
            "stage_seconds": {"load_collect_and_fit": round(fitted - started, 1),
                              "select": round(time.perf_counter() - fitted, 1), **selection.seconds},
            "preset": preset, "batch_size": batch_size, "stage1_n": stage1_n, "stage1_tokens": stage1_tokens,
            "max_new_tokens": max_new_tokens, "finalists": finalists, "budget_steps": budget_steps,
            "grow_steps": grow_steps, "forms": list(forms),
            "n_harmful_fit": n_harmful, "n_benign_fit": n_benign, "wrapped": wrapped, "answer_tokens": answer_tokens, "val_n": val_n,
            "threshold": threshold, "sharpness": SHARPNESS, "alphas": list(alphas), "layers": layers, "fit": fit,
            "gates": {str(layer): s for layer, s in sorted(stats.items())}, "windows": [list(w) for w in windows],
            "dtype": dtype,
        }

    return select_and_save(
        run, lambda window, _targets: threshold_direction(run.write, neurons, stats, window, threshold=threshold,
                                                          fit=fit),
        [(w, ("mlp_out",)) for w in windows], alphas,
        selection_settings={"val_n": val_n, "stage1_n": stage1_n, "stage1_tokens": stage1_tokens,
                            "max_new_tokens": max_new_tokens, "finalists": finalists, "batch_size": batch_size,
                            "budget_steps": budget_steps, "grow_steps": grow_steps,
                            "forms": tuple(forms)},
        wrapper_templates=prompts.fit_wrapper_templates() if wrapped else None,
        method="extract: threshold neurons (rosi_vllm.methods.threshold.fit)", out=out, report_dir=report_dir,
        stem="threshold", plot=plot_neuron_gates, report_of=report_of,
        provenance={"created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        summary_suffix=f", t={threshold:g}", progress=progress)


def plot_neuron_gates(report: dict, path) -> None:
    """Held-out AUROC of g·x per layer, and where harmful and benign reads fall against the threshold."""
    from ...reports.plots import figure

    gates = report["gates"]
    layers = sorted(gates, key=int)
    with figure(path, (12, 4.5), ncols=2) as (_, (ax1, ax2)):
        ax1.plot([int(layer) for layer in layers], [gates[layer]["auroc"] for layer in layers], marker="o")
        ax1.set_xlabel("layer")
        ax1.set_ylabel("held-out AUROC of g·x (harmful vs benign)")
        ax1.set_title("threshold gate quality per layer (MLP input)")
        for stat, label in (("harmful_median", "harmful median"), ("benign_p95", "benign prompt p95"),
                            ("generated_p95", "benign answer p95")):
            ax2.plot([int(layer) for layer in layers], [gates[layer][stat] for layer in layers], marker="o", label=label)
        ax2.axhline(report["threshold"], color="black", linestyle="--", label=f"threshold t={report['threshold']:g}")
        ax2.set_xlabel("layer")
        ax2.set_ylabel("g·x (held out)")
        ax2.legend(fontsize=7)


def gate_inputs(loaded: LoadedModel, direction_file: DirectionFile) -> list[tuple[Writer, torch.Tensor]]:
    """(pseudo-writer, g) per window layer of a threshold file: its gate reads ``g·x`` on the MLP's normalised
    input `x`, and the neuron fires past t (`extraction.gate_by_form`)."""
    writers = mlp_input_writers(loaded, set(direction_file.neurons))
    return [(w, direction_file.neurons[w.layer].read) for w in writers]
