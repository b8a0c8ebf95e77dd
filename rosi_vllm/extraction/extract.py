"""Difference-of-means refusal directions, one per layer (transformers, CPU or GPU).

For each instruction the chat template is applied (with the optional safety
system prompt, extraction only) and the model is run once; we keep the
residual stream at the last prompt token (the reply contrast: averaged over the
answer's tokens) at the *input* of every decoder layer (``hidden_states[ℓ]`` in
transformers, the "resid_pre" of Arditi et al. 2024). The direction for layer ℓ
is a difference of two groups' means there.

Three methods (``rosi extract --method``):

* ``mean-diff`` (the paper): mean(harmful) − mean(harmless).
* ``refusal-contrast``: the model is asked the harmful instructions (under the
  same extraction-only system prompt), its greedy answers are judged, and the
  direction is mean(refused) − mean(complied), both *harmful*. Topic ("this is
  about weapons") cancels, because both groups are harmful; what remains is what
  the model's own refusals have that its compliances lack. Measured on
  SmolLM2-135M (research/results/extraction/README.md), the mean-diff vector
  mostly encodes "harmful topic" and does not induce refusal at any α, while the
  refusal-contrast vector does.
* ``refusal-contrast-reply``: the same two groups, with each answer's residuals
  averaged over the positions of the answer itself instead of taken at the last
  prompt token. The prompt-end contrast is the state in which the model decides
  before it replies; this one is the state a reply is in while it refuses, which
  is what a push has to reach once a reply has begun (Qwen2.5-Coder: the two are
  nearly orthogonal at layer 12; research/results/extraction/README.md).

Deterministic: float32, eval mode, fixed batch composition, left padding so the
last prompt token is always at position −1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .hf_eval import generate
from .hf_model import LoadedModel, chat_texts, load_hf_model  # noqa: F401  (load_hf_model: callers' entry point)
from .prompts import SAFETY_SYSTEM_PROMPT, sha256_of


def resolve_system_prompt(choice: str | None) -> str | None:
    """``safety`` → the built-in safety prompt, ``none``/None → no system prompt, else a file path."""
    if choice in (None, "none"):
        return None
    if choice == "safety":
        return SAFETY_SYSTEM_PROMPT
    return Path(choice).read_text(encoding="utf-8").strip()


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


@torch.no_grad()
def reply_residuals(loaded: LoadedModel, prompts: list[str], answers: list[str], batch_size: int = 16,
                    desc: str = "activations", progress: bool = True) -> torch.Tensor:
    """float32 ``[num_layers, len(prompts), hidden]``: residual at the input of each layer, averaged over the
    positions of each answer appended to its chat-formatted prompt (the last prompt token if the answer is empty)."""
    from tqdm import tqdm

    chunks = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", disable=not progress):
        batch, replies = prompts[start:start + batch_size], answers[start:start + batch_size]
        enc = loaded.tokenizer([p + a for p, a in zip(batch, replies)], return_tensors="pt", padding=True,
                               add_special_tokens=False)
        hidden = loaded.model(**enc, output_hidden_states=True, use_cache=False).hidden_states[: loaded.num_layers]
        stacked = torch.stack([h.float() for h in hidden])  # [layers, batch, positions, hidden]
        width = enc["input_ids"].shape[1]
        rows = []
        for row, (prompt, n) in enumerate(zip(batch, enc["attention_mask"].sum(dim=1).tolist())):
            first = width - n + len(loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])  # left padding
            rows.append(stacked[:, row, min(first, width - 1):].mean(dim=1))
        chunks.append(torch.stack(rows, dim=1))
    return torch.cat(chunks, dim=1)


@dataclass
class Extraction:
    directions: torch.Tensor  # [num_layers, hidden], not normalised
    harmful_sha256: str
    harmless_sha256: str
    system_prompt: str | None
    n_pairs: int
    method: str = "mean-diff"
    #: refusal-contrast only: how many harmful prompts the model refused / complied with
    n_refused: int | None = None
    n_complied: int | None = None

    def provenance(self) -> dict[str, str]:
        described = {
            "mean-diff": "extract: difference of means (harmful - harmless), last prompt token, resid_pre",
            "refusal-contrast": "extract: refusal contrast (refused - complied harmful), last prompt token, resid_pre",
            "refusal-contrast-reply": "extract: refusal contrast (refused - complied harmful), mean over the "
                                      "model's own reply tokens, resid_pre",
        }[self.method]
        provenance = {
            "method": described,
            "n_pairs": str(self.n_pairs),
            "harmful_sha256": self.harmful_sha256,
            "harmless_sha256": self.harmless_sha256,
            "system_prompt": self.system_prompt or "",
        }
        if self.n_refused is not None:
            provenance.update(n_refused=str(self.n_refused), n_complied=str(self.n_complied))
        return provenance


def extract_directions(loaded: LoadedModel, harmful, harmless, *, system_prompt: str | None = None,
                       batch_size: int = 16, progress: bool = True) -> Extraction:
    harmful, harmless = list(harmful), list(harmless)
    h = last_token_residuals(loaded, chat_texts(loaded.tokenizer, harmful, system_prompt), batch_size,
                             "harmful", progress)
    b = last_token_residuals(loaded, chat_texts(loaded.tokenizer, harmless, system_prompt), batch_size,
                             "harmless", progress)
    return Extraction(h.mean(dim=1) - b.mean(dim=1), sha256_of(harmful), sha256_of(harmless), system_prompt,
                      min(len(harmful), len(harmless)))


def extract_refusal_contrast(loaded: LoadedModel, harmful, *, system_prompt: str | None = None, judge=None,
                             max_new_tokens: int = 16, min_per_group: int = 8, batch_size: int = 16,
                             at_reply: bool = False, progress: bool = True) -> Extraction:
    """mean(refused) − mean(complied) over the model's own answers to harmful instructions: residuals at the
    last prompt token, or with `at_reply` averaged over each answer's own tokens (``refusal-contrast-reply``).

    Needs the model to refuse some and comply with some: an uncensored model
    usually needs ``system_prompt`` (extraction only) to refuse at all. Fewer
    than `min_per_group` in either group is an error rather than a noisy vector.
    """
    from tqdm import tqdm

    from ..core.errors import RosiError
    from ..core.judge import SubstringJudge

    judge = judge or SubstringJudge()
    harmful = list(harmful)
    answers = []
    for start in tqdm(range(0, len(harmful), batch_size), desc="answers", unit="batch", disable=not progress):
        answers += generate(loaded, harmful[start:start + batch_size], system_prompt=system_prompt,
                            max_new_tokens=max_new_tokens, batch_size=batch_size)
    refused_flags = judge.judge(answers)
    refused = [p for p, r in zip(harmful, refused_flags) if r]
    complied = [p for p, r in zip(harmful, refused_flags) if not r]
    if min(len(refused), len(complied)) < min_per_group:
        raise RosiError(
            f"rosi: refusal-contrast needs at least {min_per_group} refused and {min_per_group} complied harmful "
            f"prompts; the model refused {len(refused)} of {len(harmful)}. Use more prompts, or (for a model "
            "that never refuses) --system-prompt safety")
    if at_reply:
        texts = chat_texts(loaded.tokenizer, harmful, system_prompt)
        groups = [reply_residuals(loaded, [t for t, f in zip(texts, refused_flags) if f == flag],
                                  [a for a, f in zip(answers, refused_flags) if f == flag], batch_size, name, progress)
                  for flag, name in ((True, "refused"), (False, "complied"))]
    else:
        groups = [last_token_residuals(loaded, chat_texts(loaded.tokenizer, group, system_prompt), batch_size, name,
                                       progress) for group, name in ((refused, "refused"), (complied, "complied"))]
    r, c = groups
    return Extraction(r.mean(dim=1) - c.mean(dim=1), sha256_of(harmful), sha256_of([]), system_prompt,
                      len(harmful), method="refusal-contrast-reply" if at_reply else "refusal-contrast",
                      n_refused=len(refused), n_complied=len(complied))
