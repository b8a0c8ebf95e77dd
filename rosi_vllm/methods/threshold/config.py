"""`rosi extract --method threshold`'s settings (format v3): the only place their defaults are written."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..base import MIN_AUROC, SelectionConfig

#: c: SiLU(c·z)/c is within 0.03 of ReLU(z) for |z| ≥ 0.3 at c = 10
SHARPNESS = 10.0


@dataclass(frozen=True)
class ThresholdConfig(SelectionConfig):
    """The defaults are the ``thorough`` preset: what the shipped Qwen direction was selected with."""

    band: tuple[float, float] = (1 / 3, 2 / 3)  # candidate layers: this fraction of the model's depth
    alphas: tuple[float, ...] = (16.0, 24.0, 32.0, 48.0)
    threshold: float = 0.5  # t, in units of g·x, whose harmful median the fit sets to 1: half the typical read
    min_auroc: float = MIN_AUROC
    n_harmful: int = 120
    wrapped: int = 40  # goals and benign requests fitted under each fit-only wrapper
    answer_tokens: int = 32
    batch_size: int = 16
    dtype: str = "bfloat16"


#: the settings a preset row sets (the rest are flags of their own)
PRESET_KEYS = ("band", "alphas", "n_harmful", "wrapped", "answer_tokens", "val_n", "stage1_n", "stage1_tokens",
               "max_new_tokens", "finalists", "budget_steps", "grow_steps", "forms", "batch_size",
               "dtype")


def _row(config: ThresholdConfig) -> dict:
    return {key: value for key, value in asdict(config).items() if key in PRESET_KEYS}


#: `rosi extract --method threshold --preset NAME`: `extract_threshold`'s settings, one row per preset; a flag
#: given on the command line overrides its row. ``quick`` is sized for the issue's budget (fit and selection in
#: five minutes for a 0.5B model on 2 CPU cores): the middle fifth of the layers, two α, shorter fit answers,
#: and short completions of one length in both stages, so that stage 2 reuses what stage 1 generated.
#: ``thorough`` is what the shipped Qwen direction was selected with (a third of the layers, four α, the
#: longer validation split, α bisected to the KL budget): the config's defaults.
PRESETS: dict[str, dict] = {
    "quick": _row(ThresholdConfig(band=(0.4, 0.6), alphas=(24.0, 32.0), wrapped=32, answer_tokens=16, val_n=32,
                                  stage1_n=12, stage1_tokens=12, max_new_tokens=12, finalists=2, budget_steps=0,
                                  batch_size=32)),
    "thorough": _row(ThresholdConfig()),
}
DEFAULT_PRESET = "quick"
