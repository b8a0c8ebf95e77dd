"""`rosi extract --method gated`'s settings (format v2): the only place their defaults are written."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import MIN_AUROC, SelectionConfig

#: the (fit, ρ, λ) grid `--fit-grid` tries; ρ = 0.7, λ = 1 had the best held-out AUROC in every run recorded
#: in research/results/extraction (both models, plain and wrapped), so by default only it and the cheap
#: mean-difference baseline (the ablation row) are fitted
SETTINGS_GRID = (("nullspace", 0.7, 1.0), ("nullspace", 0.5, 1.0), ("nullspace", 0.7, 0.1), ("meandiff", 0.0, 0.0))
DEFAULT_SETTINGS = (("nullspace", 0.7, 1.0), ("meandiff", 0.0, 0.0))


@dataclass(frozen=True)
class GatedConfig(SelectionConfig):
    alphas: tuple[float, ...] = (4.0, 8.0, 16.0)
    settings: tuple = DEFAULT_SETTINGS
    min_auroc: float = MIN_AUROC
    n_harmful: int = 200  # harmful goals fitted on
    answer_tokens: int = 32  # the model's own answer to each benign fit prompt, fitted as benign
    harmful_answer_tokens: int = 0  # the model's own answer to each plain harmful goal, fitted as harmful
    wrapped_goals: int = 0  # further goals fitted under each fit-only wrapper
    wrapped_benign: int = 0  # benign requests fitted under the same wrappers
    trailing_wrappers: bool = False
    dtype: str = "float32"
