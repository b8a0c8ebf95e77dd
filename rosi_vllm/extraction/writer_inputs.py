"""Writer inputs for the fits: find a model's residual writers and collect what they read on harmful and
benign requests (forward pre-hooks), split by prompt into fit and held-out parts.

Shared by every method whose fit reads a writer's (or an MLP's) inputs: the gated
read vectors and the threshold neurons (`rosi_vllm/methods/*/fit.py`).

Inputs are collected with forward pre-hooks on the writers:
- harmful: from the last instruction token through the end of the chat template
  (where the model decides whether to refuse);
- benign and borderline-benign: every prompt position and every position of the
  model's own greedy answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..core.architectures import spec_for_architecture
from ..core.direction_file import DirectionFile, read_key
from .hf_eval import by_length, generate
from .hf_model import LoadedModel, chat_texts


@dataclass(frozen=True)
class Writer:
    """One residual writer of the loaded transformers model: its read-vector key and module."""

    key: str  # "<layer>.<target>", the direction file's read-vector name without "read."
    layer: int
    target: str
    module_name: str


def find_writers(loaded: LoadedModel, layers, targets=("attn_out", "mlp_out")) -> list[Writer]:
    """The dense residual writers of `layers` for `targets`, from the architecture table (no per-family code)."""
    spec = spec_for_architecture(loaded.shape.architecture)
    found = []
    for name, _ in loaded.model.named_parameters():
        for writer in spec.writers_for(tuple(targets)):
            match = writer.matches(name)
            if match and match.groupdict().get("layer") is not None and match.groupdict().get("expert") is None:
                layer = int(match["layer"])
                if layer in layers:
                    found.append(Writer(read_key(layer, writer.target), layer, writer.target,
                                        name.removesuffix(".weight")))
    return sorted(found, key=lambda w: (w.layer, w.target))


@dataclass
class WriterInputs:
    """Writer inputs ``[positions, d_in]`` per writer key, for one set of prompts, in the model's dtype: a
    bfloat16 model's activations are bfloat16 already, and widening them here would only double the largest
    allocation of the extraction (the fits widen what they read)."""

    by_writer: dict[str, torch.Tensor]
    #: for each position row, the index of its prompt (held-out splits are by prompt, never by position)
    prompt_index: torch.Tensor
    #: for each row: True where the position belongs to the model's generated answer
    generated: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def subset(self, prompts: torch.Tensor) -> WriterInputs:
        rows = torch.isin(self.prompt_index, prompts)
        return WriterInputs({k: v[rows] for k, v in self.by_writer.items()}, self.prompt_index[rows],
                            self.generated[rows] if len(self.generated) else self.generated)

    def grouped(self, size: int) -> WriterInputs:
        """The same rows with every `size` consecutive prompts counted as one (a goal under each of its wrappers),
        so a held-out split never fits on a goal it scores."""
        return WriterInputs(self.by_writer, self.prompt_index // size, self.generated)

    @staticmethod
    def concat(parts: list[WriterInputs]) -> WriterInputs:
        """Rows of every part; prompt indices offset so prompts of different parts stay distinct."""
        offset, indices = 0, []
        for part in parts:
            indices.append(part.prompt_index + offset)
            offset += int(part.prompt_index.max()) + 1 if len(part.prompt_index) else 0
        generated = [part.generated if len(part.generated) else torch.zeros(len(part.prompt_index), dtype=torch.bool)
                     for part in parts]
        return WriterInputs({k: torch.cat([part.by_writer[k] for part in parts]) for k in parts[0].by_writer},
                            torch.cat(indices), torch.cat(generated))


def _instruction_end_mask(prompts: list[str], instructions: list[str], input_ids, offsets) -> torch.Tensor:
    """Positions from the token holding the instruction's last character to the end of the text.

    The instruction is found in the chat-formatted prompt, not in the text after it, so an answer
    that repeats the instruction does not move the start."""
    mask = torch.zeros(input_ids.shape, dtype=torch.bool)
    for row, (prompt, instruction) in enumerate(zip(prompts, instructions)):
        end = prompt.rfind(instruction) + len(instruction)
        for pos, (start, stop) in enumerate(offsets[row].tolist()):
            if stop > start and stop >= end:
                mask[row, pos] = True
    return mask


class _AllCaptured(Exception):
    """Raised by the last writer hook of a forward pass: nothing after it is needed (later layers, the LM head)."""


@torch.no_grad()
def collect_inputs(loaded: LoadedModel, writers: list[Writer], instructions: list[str], *, positions: str,
                   answer_tokens: int = 0, batch_size: int = 16, progress: bool = True,
                   desc: str = "inputs", prefill: str = "") -> WriterInputs:
    """Run the model over chat-formatted `instructions` and keep every writer's inputs at the chosen positions.

    ``positions="instruction_end"``: the harmful-side positions, from the last
    instruction token to the end of the text; ``"all"``: every position. With
    ``answer_tokens``, the text goes on with the model's own greedy answer of that
    many tokens (its positions are flagged `generated`); with `prefill`, the
    answer starts with those words (an assistant-prefill request).

    Prompts are batched by length, and each forward pass stops as soon as every
    writer has seen its input: the layers after the deepest writer and the LM
    head (a 151936-row matrix on Qwen) would only be computed to be thrown away.
    """
    from tqdm import tqdm

    tokenizer, model = loaded.tokenizer, loaded.model
    modules = {w.key: model.get_submodule(w.module_name) for w in writers}
    captured: dict[str, torch.Tensor] = {}

    def capture(key, args):
        captured[key] = args[0]
        if len(captured) == len(modules):
            raise _AllCaptured

    chunks: dict[str, list[torch.Tensor]] = {w.key: [] for w in writers}
    prompt_index, generated_flags = [], []
    all_texts = chat_texts(tokenizer, instructions, prefill=prefill)
    order = by_length(tokenizer, all_texts)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not progress):
        rows_of = torch.tensor(order[start:start + batch_size])
        batch = [instructions[i] for i in rows_of.tolist()]
        prompts = texts = [all_texts[i] for i in rows_of.tolist()]
        prompt_lengths = None
        if answer_tokens:
            answers = generate(loaded, batch, max_new_tokens=answer_tokens, batch_size=batch_size, prefill=prefill)
            prompt_lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in prompts]
            texts = [t + a for t, a in zip(prompts, answers)]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                        return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")
        captured.clear()
        hooks = [module.register_forward_pre_hook(lambda _m, args, key=key: capture(key, args))
                 for key, module in modules.items()]
        try:
            model(**enc, use_cache=False)
        except _AllCaptured:
            pass
        finally:
            for hook in hooks:
                hook.remove()
        if positions == "instruction_end":
            mask = _instruction_end_mask(prompts, batch, enc["input_ids"], offsets)
        else:
            mask = enc["attention_mask"].bool()
        # left padding: a row's real tokens are its last `n` positions
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        width = enc["input_ids"].shape[1]
        gen = torch.zeros_like(mask)
        if prompt_lengths is not None:
            for row, (n, p) in enumerate(zip(lengths, prompt_lengths)):
                gen[row, width - n + p:] = True
        for key in chunks:
            chunks[key].append(captured[key][mask])
        prompt_index.append(rows_of[mask.nonzero()[:, 0]])
        generated_flags.append(gen[mask])
    return WriterInputs({k: torch.cat(v) for k, v in chunks.items()}, torch.cat(prompt_index),
                        torch.cat(generated_flags))


def load_for_fit(model: str, write_direction: str, dtype: str, *,
                 reads: tuple[str, ...]) -> tuple[LoadedModel, str, DirectionFile]:
    """The transformers model to fit on, its fingerprint, and the write direction, which must be for these
    weights and of a kind in `reads` (`DirectionFile.read_kind`); only its ŝ is used."""
    from ..core.direction_file import load_direction
    from ..core.errors import RosiError
    from ..core.fingerprint import fingerprint_checkpoint
    from .hf_model import load_hf_model

    loaded = load_hf_model(model, dtype=getattr(torch, dtype))
    fingerprint = fingerprint_checkpoint(model)
    write = load_direction(write_direction)
    if write.read_kind not in reads:
        raise RosiError(f"rosi: --write-direction is a {write.read_kind!r} direction file; this extraction takes "
                        f"{' or '.join(map(repr, reads))} files (their vector is the write direction)")
    if write.model_fingerprint != fingerprint:
        raise RosiError(f"rosi: --write-direction is for {write.model_fingerprint}, the model is {fingerprint}")
    return loaded, fingerprint, write


def collect_sources(loaded: LoadedModel, writers: list[Writer], *, n_harmful: int, answer_tokens: int,
                    harmful_answer_tokens: int = 0, wrapped_goals: int = 0, wrapped_benign: int = 0,
                    templates: dict[str, str] | None = None, batch_size: int = 16, forms: tuple[str, ...] = (),
                    n_benign: int | None = None, progress: bool = True) -> tuple[list[WriterInputs], list[WriterInputs]]:
    """(harmful, benign) input sources of every gated fit, from the extraction split.

    harmful: the first `n_harmful` goals at the instruction's end (+ the model's own
    answer of `harmful_answer_tokens`); benign: every harmless and borderline request
    at every position and its own answer of `answer_tokens`. `wrapped_goals` further
    goals and `wrapped_benign` benign requests under each fit-only wrapper of
    `templates` add a source each, grouped per request so the held-out split keeps a
    request's wrappers together. `forms`: the goals and harmless requests in rotating forms, alternating with
    requests as people write them (`forms.fit_prompts`; empty: as the split has them). `n_benign`: answer only
    that many benign requests, harmless and borderline alternating (None: every one, harmless first), the
    count `rosi harden --time-budget` scales: answering them is the fit's largest cost.
    """
    from . import prompts
    from .forms import fit_prompts

    benign_fit = benign_fit_requests(forms, n_benign)
    goals = list(fit_prompts("harmful", "extraction", forms))
    common = {"batch_size": batch_size, "progress": progress}
    harmful = [collect_inputs(loaded, writers, goals[:n_harmful], positions="instruction_end",
                              answer_tokens=harmful_answer_tokens,
                              desc="harmful inputs" + (" (+ own answers)" if harmful_answer_tokens else ""), **common)]
    benign = [collect_inputs(loaded, writers, benign_fit, positions="all", answer_tokens=answer_tokens,
                             desc="benign inputs (+ own answers)", **common)]
    templates = templates or prompts.fit_wrapper_templates()
    if wrapped_goals:
        harmful.append(collect_inputs(
            loaded, writers, list(prompts.fit_wrapped(goals[n_harmful:n_harmful + wrapped_goals], templates)),
            positions="instruction_end", desc="wrapped harmful inputs", **common).grouped(len(templates)))
    if wrapped_benign:
        benign.append(collect_inputs(
            loaded, writers, list(prompts.fit_wrapped(benign_fit[:wrapped_benign], templates)), positions="all",
            desc="wrapped benign inputs", **common).grouped(len(templates)))
    return harmful, benign


def benign_fit_requests(forms: tuple[str, ...] = (), n: int | None = None) -> list[str]:
    """The benign requests a gate fit answers (`collect_sources`): the extraction split's harmless requests
    (`forms.fit_prompts`) and its borderline ones; all of them harmless first (None), or the first `n` of the
    two alternating, so a smaller fit keeps both kinds."""
    from . import prompts
    from .forms import fit_prompts

    harmless, borderline = list(fit_prompts("benign", "extraction", forms)), list(prompts.borderline("extraction"))
    if n is None:
        return harmless + borderline
    return prompts.interleave(harmless, borderline)[:n]


def held_out_split(inputs: WriterInputs, fraction: float = 0.25) -> tuple[WriterInputs, WriterInputs]:
    """(fit, held-out) by prompt: the last `fraction` of the prompts are never fitted on."""
    n_prompts = int(inputs.prompt_index.max()) + 1
    cut = n_prompts - max(1, int(round(fraction * n_prompts)))
    ids = torch.arange(n_prompts)
    return inputs.subset(ids[:cut]), inputs.subset(ids[cut:])


def split_sources(sources: list[WriterInputs]) -> tuple[WriterInputs, WriterInputs]:
    """(fit, held-out) of several prompt sources, each split on its own so every source is held out in proportion."""
    pairs = [held_out_split(source) for source in sources]
    return WriterInputs.concat([f for f, _ in pairs]), WriterInputs.concat([o for _, o in pairs])
