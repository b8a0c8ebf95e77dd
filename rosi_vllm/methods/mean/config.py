"""`rosi extract --method mean-diff | refusal-contrast | refusal-contrast-reply`'s settings (format v1)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import SelectionConfig


@dataclass(frozen=True)
class MeanConfig(SelectionConfig):
    n_pairs: int = 50  # mean-diff: prompts per set
    n_harmful: int = 200  # refusal-contrast(-reply): harmful prompts to answer and split
    system_prompt: str = "none"  # safety | none | FILE, extraction only
    backend: str = "hf"  # generation for selection: hf (edit in place) or vllm (adapters on one engine)
