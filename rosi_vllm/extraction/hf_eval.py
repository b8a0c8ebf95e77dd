"""Fast in-process measurements with transformers, for layer/α selection.

Selection scores dozens of (layer, α) candidates; starting a vLLM engine per
candidate (~30 s each here) would dominate. Instead the candidate's rank-one
edit is applied *in place* to the loaded transformers model with the same
`InjectionPlan` the loader uses, measured, and undone from a saved copy of the
original tensors. The chosen candidate is then confirmed with the real vLLM
loader by `rosi eval`.
"""

from __future__ import annotations

import contextlib

import torch

from ..core.injection_plan import InjectionPlan
from .hf_model import LoadedModel, chat_texts


@contextlib.contextmanager
def injected(loaded: LoadedModel, plan: InjectionPlan | None):
    """Apply `plan` to the model's weights for the duration of the block (None: no edit)."""
    if plan is None:
        yield
        return
    params = dict(loaded.model.named_parameters())
    saved = {}
    run = plan.start()
    with torch.no_grad():
        for name, param in params.items():
            if plan.target(name) is not None:
                saved[name] = param.detach().clone()
                param.copy_(run.edit(name, saved[name]))
    try:
        run.check_complete()
        yield
    finally:
        with torch.no_grad():
            for name, original in saved.items():
                params[name].copy_(original)


@contextlib.contextmanager
def added_to_outputs(loaded: LoadedModel, module_names, vector: torch.Tensor):
    """Add `vector` to the output of each named module at every position for the duration of the block: what a
    residual writer writes when a gated edit's gate is fully open (a causal test of a write direction)."""
    modules = dict(loaded.model.named_modules())

    def hook(_module, _inputs, output):
        return output + vector.to(output.dtype)

    handles = [modules[name].register_forward_hook(hook) for name in module_names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def by_length(tokenizer, texts: list[str]) -> list[int]:
    """Indices of `texts`, longest tokenized first: batches of similar lengths waste little on padding."""
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return sorted(range(len(texts)), key=lambda i: -lengths[i])


@torch.no_grad()
def generate(loaded: LoadedModel, instructions, *, system_prompt: str | None = None, max_new_tokens: int = 32,
             batch_size: int = 32, prefill: str = "") -> list[str]:
    """Greedy completions of chat-formatted instructions (no system prompt unless given), in their order;
    batched by length, so a short prompt does not decode beside a long one's padding. With `prefill`, the
    reply starts with it and the completion returned is what follows it."""
    texts = chat_texts(loaded.tokenizer, instructions, system_prompt, prefill)
    order = by_length(loaded.tokenizer, texts)
    outputs: list[str] = [""] * len(texts)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        batch = loaded.tokenizer([texts[i] for i in rows], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
        generated = loaded.model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id,
        )
        new = generated[:, batch["input_ids"].shape[1]:]
        for row, text in zip(rows, loaded.tokenizer.batch_decode(new, skip_special_tokens=True)):
            outputs[row] = text
    return outputs


@torch.no_grad()
def next_token_logprobs(loaded: LoadedModel, instructions, *, system_prompt: str | None = None,
                        batch_size: int = 32) -> torch.Tensor:
    """Full-vocabulary log-probabilities of the first response token, ``[n, vocab]``."""
    texts = chat_texts(loaded.tokenizer, instructions, system_prompt)
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = loaded.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
        # logits_to_keep=1: only the last position's logits; the LM head over every position cost a third of the pass
        logits = loaded.model(**batch, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()
        rows.append(torch.log_softmax(logits, dim=-1))
    return torch.cat(rows)


def prompt_kls(base_logprobs: torch.Tensor, edited_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ edited) of the first-token distribution, one value per prompt, in nats."""
    return (base_logprobs.exp() * (base_logprobs - edited_logprobs)).sum(dim=-1)


def mean_kl(base_logprobs: torch.Tensor, edited_logprobs: torch.Tensor) -> float:
    """Mean over prompts of KL(base ‖ edited) of the first-token distribution, in nats."""
    return float(prompt_kls(base_logprobs, edited_logprobs).mean())
