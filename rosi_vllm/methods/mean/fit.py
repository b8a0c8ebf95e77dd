"""The paper's fit (format v1): `rosi extract --method mean-diff | refusal-contrast[-reply]` end to end.

Extract per-layer directions, select layer and α, write the file and its report.
"""

from __future__ import annotations

import time
from pathlib import Path

from ...core.direction_file import save_direction
from ...core.fingerprint import fingerprint_checkpoint
from ...extraction import prompts
from ...extraction.extract import (
    extract_directions,
    extract_refusal_contrast,
    load_hf_model,
    resolve_system_prompt,
)
from ...extraction.selection import direction_file_for, plot_selection, select
from ...reports.plots import write_json_and_plot
from .config import MeanConfig

DEFAULTS = MeanConfig()


def extract_and_select(model: str, out: str | Path, *, model_label: str, method: str = "mean-diff",
                       harmful_file: str | None = None, harmless_file: str | None = None,
                       n_pairs: int = DEFAULTS.n_pairs, n_harmful: int = DEFAULTS.n_harmful, layer: int | None = None,
                       alpha: float | None = None, layers: list[int] | None = None,
                       alphas: list[float] | None = DEFAULTS.alphas, system_prompt: str = DEFAULTS.system_prompt,
                       val_n: int = DEFAULTS.val_n, stage1_n: int = DEFAULTS.stage1_n,
                       max_new_tokens: int = DEFAULTS.max_new_tokens, stage1_tokens: int = DEFAULTS.stage1_tokens,
                       batch_size: int = DEFAULTS.batch_size, report_dir: str | Path | None = None,
                       backend: str = DEFAULTS.backend) -> Path:
    """Write the direction file (and, when layer or α was selected, the selection report); return its path."""
    harmful = prompts.read_prompt_file(harmful_file) if harmful_file else prompts.harmful("extraction")
    harmless = prompts.read_prompt_file(harmless_file) if harmless_file else prompts.harmless("extraction")
    resolved_prompt = resolve_system_prompt(system_prompt)
    loaded = load_hf_model(model)
    fingerprint = fingerprint_checkpoint(model)
    started = time.perf_counter()
    if method in ("refusal-contrast", "refusal-contrast-reply"):
        harmful = harmful[:n_harmful]
        extraction = extract_refusal_contrast(loaded, harmful, system_prompt=resolved_prompt, batch_size=batch_size,
                                              at_reply=method == "refusal-contrast-reply")
        counted = f"{len(harmful)} harmful prompts ({extraction.n_refused} refused, {extraction.n_complied} complied)"
    else:
        harmful, harmless = harmful[:n_pairs], harmless[:n_pairs]
        extraction = extract_directions(loaded, harmful, harmless, system_prompt=resolved_prompt,
                                        batch_size=batch_size)
        counted = f"{len(harmful)}+{len(harmless)} prompts"
    extract_seconds = time.perf_counter() - started
    print(f"extracted {loaded.num_layers} layer directions ({method}) from {counted} in {extract_seconds:.1f} s")

    report = None
    if layer is None or alpha is None:
        generator = None
        if backend == "vllm":
            from ..vllm_glue.generation import LoraVariantGenerator

            generator = LoraVariantGenerator(model)
        report = select(
            loaded, extraction, prompts.harmful("validation")[:val_n], prompts.harmless("validation")[:val_n],
            fingerprint=fingerprint, generator=generator, layers=[layer] if layer is not None else layers,
            alphas=[alpha] if alpha is not None else alphas, stage1_n=stage1_n,
            max_new_tokens=max_new_tokens, stage1_tokens=stage1_tokens, batch_size=batch_size,
        )
        layer, alpha = report.best.layer, report.best.alpha
        print(f"selected layer {layer}, alpha {alpha:g}: {report.best.to_dict()}")
    direction = direction_file_for(loaded, extraction, layer, alpha, fingerprint)
    direction.provenance["extract_seconds"] = f"{extract_seconds:.2f}"
    path = save_direction(out, direction)
    if report is not None:
        report_dir = Path(report_dir or Path(out).with_suffix(""))
        payload = {"model": model_label, "direction_file": str(path), "extract_seconds": extract_seconds,
                   "method": method, "system_prompt": system_prompt, "n_harmful": len(harmful),
                   "n_refused": extraction.n_refused, "n_complied": extraction.n_complied, **report.to_dict()}
        write_json_and_plot(payload, report_dir / "selection.json", lambda png: plot_selection(report, png))
        print(f"report: {report_dir / 'selection.json'} and selection.png")
    print(f"wrote {path} (direction {direction.direction_id}, layer {layer}, alpha {alpha:g})")
    return path
