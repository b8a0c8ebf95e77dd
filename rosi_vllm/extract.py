"""Difference-of-means refusal directions, one per layer (transformers, CPU or GPU).

For each instruction the chat template is applied (with the optional safety
system prompt, extraction only) and the model is run once; we keep the
residual stream at the last prompt token at the *input* of every decoder layer
(``hidden_states[ℓ]`` in transformers, the "resid_pre" of Arditi et al. 2024).
The direction for layer ℓ is mean(harmful) − mean(harmless) there.

Deterministic: float32, eval mode, fixed batch composition, left padding so the
last prompt token is always at position −1.
"""

from __future__ import annotations

import datetime as _dt
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .checkpoint import ModelShape, model_shape
from .prompts import SAFETY_SYSTEM_PROMPT, sha256_of


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    path: Path

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @functools.cached_property
    def shape(self) -> ModelShape:
        """Architecture and sizes from the checkpoint's config, read once."""
        return model_shape(self.path)


def load_hf_model(model_dir: str | Path, dtype: torch.dtype = torch.float32) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.eval()
    return LoadedModel(model, tokenizer, Path(model_dir))


def resolve_system_prompt(choice: str | None) -> str | None:
    """``safety`` → the built-in safety prompt, ``none``/None → no system prompt, else a file path."""
    if choice in (None, "none"):
        return None
    if choice == "safety":
        return SAFETY_SYSTEM_PROMPT
    return Path(choice).read_text(encoding="utf-8").strip()


def chat_texts(tokenizer, instructions, system_prompt: str | None = None) -> list[str]:
    texts = []
    for instruction in instructions:
        messages = [{"role": "user", "content": instruction}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return texts


@torch.no_grad()
def last_token_residuals(loaded: LoadedModel, texts: list[str], batch_size: int = 16, desc: str = "activations",
                         progress: bool = True) -> torch.Tensor:
    """float32 ``[num_layers, len(texts), hidden]``: residual at the input of each layer, last token."""
    from tqdm import tqdm

    chunks = []
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch", disable=not progress):
        batch = loaded.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
        out = loaded.model(**batch, output_hidden_states=True, use_cache=False)
        # hidden_states[ℓ] for ℓ < num_layers is the input of layer ℓ.
        chunks.append(torch.stack([h[:, -1, :].float() for h in out.hidden_states[: loaded.num_layers]]))
    return torch.cat(chunks, dim=1)


@dataclass
class Extraction:
    directions: torch.Tensor  # [num_layers, hidden], not normalised
    harmful_sha256: str
    harmless_sha256: str
    system_prompt: str | None
    n_pairs: int

    def provenance(self) -> dict[str, str]:
        return {
            "tool_version": f"rosi-vllm {__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": "extract: difference of means, last prompt token, resid_pre",
            "n_pairs": str(self.n_pairs),
            "harmful_sha256": self.harmful_sha256,
            "harmless_sha256": self.harmless_sha256,
            "system_prompt": self.system_prompt or "",
        }


def extract_directions(loaded: LoadedModel, harmful, harmless, *, system_prompt: str | None = None,
                       batch_size: int = 16, progress: bool = True) -> Extraction:
    harmful, harmless = list(harmful), list(harmless)
    h = last_token_residuals(loaded, chat_texts(loaded.tokenizer, harmful, system_prompt), batch_size,
                             "harmful", progress)
    b = last_token_residuals(loaded, chat_texts(loaded.tokenizer, harmless, system_prompt), batch_size,
                             "harmless", progress)
    return Extraction(h.mean(dim=1) - b.mean(dim=1), sha256_of(harmful), sha256_of(harmless), system_prompt,
                      min(len(harmful), len(harmless)))
