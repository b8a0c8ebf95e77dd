"""A transformers model loaded for extraction and evaluation, and its chat formatting.

Its own module so that what loads a model (here) and what runs it (`hf_eval`) and what extracts with it
(`extract`) import in one direction only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checkpoint import ModelShape, model_shape


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


def chat_texts(tokenizer, instructions, system_prompt: str | None = None, prefill: str = "") -> list[str]:
    """Each instruction as one user turn, ready for the assistant's reply; `prefill`: the reply's first words,
    already written (an assistant-prefill request, as a client that continues the final message sends it)."""
    texts = []
    for instruction in instructions:
        messages = [{"role": "user", "content": instruction}]
        if system_prompt:
            messages.insert(0, {"role": "system", "content": system_prompt})
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill)
    return texts
