"""Fit read vectors that fire on harm: the gated (format v2) ROSI edit ``W' = W + α·ŝ·hᵀ``.

The paper's read vector w̄ makes every writer add ``α·(w̄·a)·ŝ`` for every input
``a``; since ``w̄·a`` is the mean coordinate of the writer's own output, harmful
and benign requests get the same push. Here each edited writer gets its own h,
fitted on the writer's *inputs* (o_proj: the concatenated head outputs;
down_proj: ``act(gate)⊙up``) so that ``h·a ≈ 1`` on harmful requests and
``h·a ≈ 0`` on benign ones, including every token the model generates while
answering them (the edit fires at every position). It is still one rank-one
delta per writer, applied at load time.

Inputs are collected with forward pre-hooks on the writers:
- harmful: from the last instruction token through the end of the chat template
  (where the model decides whether to refuse);
- benign and borderline-benign: every prompt position and every position of the
  model's own greedy answer.

Fits (`fit_read_vector`):
- ``nullspace``: AlphaSteer's null-space regression (arXiv 2506.07022). P spans the
  bottom-ρ eigenvectors of the *uncentred* benign second moment, and
  ``h = P (P A_hᵀA_h P + λP)⁺ P A_hᵀ 1``: rank one by construction and no bias,
  because benign inputs (their mean included) fall outside P. λ is relative to
  the mean eigenvalue of ``P A_hᵀA_h P`` so one value serves every writer.
- ``meandiff``: the cheap baseline ``h ∝ (I − m̂m̂ᵀ)(μ_harm − μ_benign)``, m̂ the unit benign mean.
Either way h is then scaled so the median harmful ``h·a`` on the fit data is 1
(the regression undershoots it), which makes α comparable across writers.

Which window, targets and α ship is decided on validation text in `gated_selection`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core.architectures import spec_for_architecture
from ..core.direction_file import DirectionFile, read_key
from .extract import LoadedModel, chat_texts
from .gated_selection import BUDGET_STEPS, select_gated, write_report
from .hf_eval import by_length, generate

FITS = ("nullspace", "meandiff")


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


#: writers this wide or narrower get the benign spectrum from a float64 eigen-decomposition; wider ones
#: (Qwen's 4864-wide down_proj input) from a float32 one (`python -m benchmarks.gate_fit_time` times it
#: beside a full float64 decomposition and the randomized range finder it replaced)
FLOAT64_BASIS_MAX_DIM = 2048


def benign_top_space(benign: torch.Tensor, k: int, *, float64_max_dim: int = FLOAT64_BASIS_MAX_DIM) -> torch.Tensor:
    """Orthonormal ``[d_in, k]`` (float64): the `k` directions of the uncentred benign second moment
    ``A_bᵀA_b / n`` with the largest eigenvalues, descending. The null-space fit's P is their complement.

    The moment is formed once per writer and shared by every ρ and λ tried. Only its top `k`
    eigenvectors are computed (LAPACK's MRRR driver), in float64 up to `float64_max_dim` and in
    float32 above: activation spectra fall steeply, so float32 rounding moves only the split near
    the ρ boundary, where the eigenvalues are already tiny beside the top ones.
    """
    import scipy.linalg

    d = benign.shape[1]
    k = max(0, min(k, d - 1))
    if k == 0:
        return torch.zeros(d, 0, dtype=torch.float64)
    moment = benign.float().T @ benign.float() / benign.shape[0]
    if d <= float64_max_dim:
        moment = moment.double()
    _, vectors = scipy.linalg.eigh(moment.numpy(), subset_by_index=[d - k, d - 1], driver="evr",
                                   check_finite=False)
    return torch.from_numpy(vectors[:, ::-1].copy()).double()


def fit_read_vector(harmful: torch.Tensor, benign: torch.Tensor, *, method: str = "nullspace", rho: float = 0.7,
                    lam: float = 0.1, top_space: torch.Tensor | None = None) -> torch.Tensor:
    """h for one writer from its harmful and benign inputs ``[n, d_in]``; scaled so the harmful median of h·a is 1.

    ``top_space``: `benign_top_space(benign, k)` with ``k ≥ d_in − ⌊ρ·d_in⌋`` when the caller already has it.
    The null-space regression ``h = P (P A_hᵀA_h P + rP)⁺ P A_hᵀ 1``, with P the complement of the
    benign top space and the ridge r = λ × the mean eigenvalue of ``P A_hᵀA_h P`` over P's dimensions,
    is solved with ``B = A_h P`` in whichever form is smaller: ``Bᵀ (BBᵀ + rI)⁻¹ 1`` (n_h × n_h) or
    ``(BᵀB + rI)⁻¹ Bᵀ1`` (d × d); both equal the expression above.
    """
    if method not in FITS:
        raise ValueError(f"unknown fit {method!r}; known: {FITS}")
    if method == "meandiff":
        a_h, a_b = harmful.double(), benign.double()
        m_hat = a_b.mean(0) / a_b.mean(0).norm()
        diff = a_h.mean(0) - a_b.mean(0)
        h = diff - (diff @ m_hat) * m_hat
    else:
        d = harmful.shape[1]
        kept = max(1, int(rho * d))  # bottom-ρ: the directions benign inputs hardly use
        if top_space is not None and top_space.shape[1] < d - kept:
            raise ValueError(f"top_space has {top_space.shape[1]} columns, ρ={rho} needs {d - kept}")
        top = benign_top_space(benign, d - kept) if top_space is None else top_space[:, : d - kept]
        a_h = harmful.double()
        b = a_h - (a_h @ top) @ top.T
        trace = float((b * b).sum())
        if trace / kept <= 1e-12:  # harmful inputs have no component outside the benign span
            return torch.zeros(d)
        ridge = lam * trace / kept
        ones = torch.ones(b.shape[0], dtype=b.dtype)
        if b.shape[0] <= d:
            gram = b @ b.T
            h = b.T @ torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=b.dtype), ones)
        else:
            gram = b.T @ b
            h = torch.linalg.solve(gram + ridge * torch.eye(d, dtype=b.dtype), b.T @ ones)
    scores = harmful.double() @ h
    median = scores.median()
    if not torch.isfinite(median) or median <= 0:
        return torch.zeros(harmful.shape[1])  # this writer cannot gate: it reads no harmful signal
    return (h / median).float()


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half: the Mann-Whitney AUROC."""
    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    scores = torch.cat([positive, negative]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # average ranks over ties
    unique, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gate_statistics(h: torch.Tensor, harmful: torch.Tensor, benign: torch.Tensor,
                    benign_generated: torch.Tensor) -> dict:
    """How well ``h·a`` separates held-out harmful inputs from benign prompt and generated-answer inputs."""
    s_h, s_b, s_g = harmful.float() @ h, benign.float() @ h, benign_generated.float() @ h
    q = torch.tensor([0.5, 0.95, 0.999])

    def quantiles(x):
        return x.float().quantile(q).tolist() if len(x) else [math.nan] * 3

    h_q, b_q, g_q = quantiles(s_h), quantiles(s_b), quantiles(s_g)
    return {
        "auroc": auroc(s_h, torch.cat([s_b, s_g])),
        "auroc_prompt": auroc(s_h, s_b),
        "auroc_generated": auroc(s_h, s_g),
        "harmful_median": h_q[0],
        "benign_p95": b_q[1],
        "benign_p999": b_q[2],
        "generated_p95": g_q[1],
        "generated_p999": g_q[2],
        "benign_max_abs": float(torch.cat([s_b, s_g]).abs().max()) if len(s_b) + len(s_g) else math.nan,
    }


# -- fit, gate check and selection: `rosi extract --method gated` -----------------------------------------------

#: a layer joins the window only if every target's gate reaches this held-out AUROC
DEFAULT_MIN_AUROC = 0.9


@dataclass
class GateFit:
    """Read vectors of one (ρ, λ) setting for every candidate writer, with held-out gate statistics."""

    method: str
    rho: float
    lam: float
    reads: dict[str, torch.Tensor]
    stats: dict[str, dict]

    @property
    def mean_auroc(self) -> float:
        return sum(s["auroc"] for s in self.stats.values()) / len(self.stats)

    def settings(self) -> dict:
        return {"fit": self.method, "rho": self.rho, "lambda": self.lam}


def load_for_fit(model: str, write_direction: str, dtype: str, *,
                 reads: tuple[str, ...]) -> tuple[LoadedModel, str, DirectionFile]:
    """The transformers model to fit on, its fingerprint, and the write direction, which must be for these
    weights and of a kind in `reads` (`DirectionFile.read_kind`); only its ŝ is used."""
    from ..core.direction_file import load_direction
    from ..core.errors import RosiError
    from ..core.fingerprint import fingerprint_checkpoint
    from .extract import load_hf_model

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
                    templates: dict[str, str] | None = None, batch_size: int = 16,
                    progress: bool = True) -> tuple[list[WriterInputs], list[WriterInputs]]:
    """(harmful, benign) input sources of every gated fit, from the extraction split.

    harmful: the first `n_harmful` goals at the instruction's end (+ the model's own
    answer of `harmful_answer_tokens`); benign: every harmless and borderline request
    at every position and its own answer of `answer_tokens`. `wrapped_goals` further
    goals and `wrapped_benign` benign requests under each fit-only wrapper of
    `templates` add a source each, grouped per request so the held-out split keeps a
    request's wrappers together.
    """
    from . import prompts

    benign_fit = list(prompts.harmless("extraction")) + list(prompts.borderline("extraction"))
    goals = list(prompts.harmful("extraction"))
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


def fit_gates(writers: list[Writer], harmful: list[WriterInputs], benign: list[WriterInputs],
              settings, *, progress: bool = False) -> list[GateFit]:
    """One `GateFit` per (method, ρ, λ) in `settings`: fitted on the fit part, scored on the held-out part.

    `harmful` / `benign`: the sources of each side (plain and wrapped requests), held out per source.
    """
    from tqdm import tqdm

    h_fit, h_out = split_sources(harmful)
    b_fit, b_out = split_sources(benign)
    rhos = [rho for method, rho, _ in settings if method == "nullspace"]
    bases = {}
    for w in tqdm(writers, desc="fit: benign spectra", unit="writer", disable=not progress or not rhos):
        if rhos:
            d = b_fit.by_writer[w.key].shape[1]
            bases[w.key] = benign_top_space(b_fit.by_writer[w.key], d - max(1, int(min(rhos) * d)))
    fits = []
    for method, rho, lam in tqdm(settings, desc="fit: read vectors", unit="setting", disable=not progress):
        reads, stats = {}, {}
        for w in writers:
            h = fit_read_vector(h_fit.by_writer[w.key], b_fit.by_writer[w.key], method=method, rho=rho, lam=lam,
                                top_space=bases.get(w.key))
            generated = b_out.generated
            reads[w.key] = h
            stats[w.key] = gate_statistics(h, h_out.by_writer[w.key], b_out.by_writer[w.key][~generated],
                                           b_out.by_writer[w.key][generated])
        fits.append(GateFit(method, rho, lam, reads, stats))
    return fits


def windows_from_gates(fit: GateFit, targets_options=(("attn_out", "mlp_out"), ("mlp_out",)),
                       min_auroc: float = DEFAULT_MIN_AUROC) -> list[tuple[tuple[int, ...], tuple[str, ...]]]:
    """Candidate (window, targets): for each target set, the layers where every target's gate is good enough."""
    layers = sorted({int(key.split(".")[0]) for key in fit.stats})
    out = []
    for targets in targets_options:
        window = tuple(layer for layer in layers
                       if all(fit.stats.get(read_key(layer, t), {}).get("auroc", 0) >= min_auroc for t in targets))
        if window and (window, targets) not in out:
            out.append((window, targets))
    return out


def gated_direction(write: DirectionFile, fit: GateFit, window, targets) -> DirectionFile:
    """A copy of the write direction `write` carrying `fit`'s read vectors for `window` × `targets`."""
    import copy

    keys = [read_key(layer, t) for layer in window for t in targets]
    direction = copy.copy(write)
    direction.provenance = dict(write.provenance)
    direction.reads = {k: fit.reads[k] for k in keys}
    direction.fit = {**fit.settings(), "window": list(window), "targets": list(targets)}
    direction.gate = {k: {s: round(v, 4) for s, v in fit.stats[k].items()} for k in keys}
    return direction


#: the (fit, ρ, λ) grid `--fit-grid` tries; ρ = 0.7, λ = 1 had the best held-out AUROC in every run recorded
#: in benchmarks/results/extraction (both models, plain and wrapped), so by default only it and the cheap
#: mean-difference baseline (the ablation row) are fitted
SETTINGS_GRID = (("nullspace", 0.7, 1.0), ("nullspace", 0.5, 1.0), ("nullspace", 0.7, 0.1), ("meandiff", 0.0, 0.0))
DEFAULT_SETTINGS = (("nullspace", 0.7, 1.0), ("meandiff", 0.0, 0.0))


def extract_gated(model: str, write_direction: str, out, *, layers=None, settings=DEFAULT_SETTINGS,
                  alphas=(4.0, 8.0, 16.0), min_auroc: float = DEFAULT_MIN_AUROC, n_harmful: int = 160,
                  answer_tokens: int = 32, val_n: int = 60, stage1_n: int = 24, stage1_tokens: int = 16,
                  max_new_tokens: int = 32, finalists: int = 3, batch_size: int = 16, report_dir=None,
                  wrapped_goals: int = 0, wrapped_benign: int = 0, dtype: str = "float32",
                  budget_steps: int = BUDGET_STEPS, trailing_wrappers: bool = False, harmful_answer_tokens: int = 0,
                  progress: bool = True) -> dict:
    """`rosi extract --method gated`: fit read vectors, check the gates, select window/targets/α, write format v2.

    `write_direction`: a v1 direction file for this checkpoint whose vector is the
    write direction ŝ (e.g. a refusal-contrast or mean-diff extraction). Returns the
    report (also written as ``gate.json`` + ``gate.png`` in `report_dir`).

    `wrapped_goals` > 0 also fits on that many further extraction goals under every
    fit-only wrapper (`prompts.FIT_WRAPPER_TEMPLATES`, never the test's jailbreak
    templates), with `wrapped_benign` benign requests under the same wrappers as
    benign, and makes the selection attack validation goals with those wrappers.
    `trailing_wrappers` adds `prompts.TRAILING_FIT_WRAPPER_TEMPLATES` to them (goals
    followed by an instruction about the answer's form).

    `dtype`: the transformers model's for every forward pass and generation
    ("bfloat16" runs about twice as fast on CPUs with bf16 units, and is what vLLM
    serves; "float32" reproduces the directions shipped before it existed).
    Inputs are fitted in float32 or wider either way.

    `harmful_answer_tokens` > 0 also fits, on the harmful side, the positions of
    the model's own greedy answer of that many tokens to each plain harmful goal:
    refused or not, the reply to a harmful request is still harmful context, and a
    gate that fires only until the reply starts is silent once a request has made
    the model begin complying (an instruction on the reply's first words, an
    assistant prefill). Alignment that stops after the first tokens is "shallow"
    in the sense of Qi et al. (arXiv 2406.05946).

    `budget_steps`: bisection steps toward the largest α within the KL budget for
    each window whose `alphas` straddle it (`gated_selection.alphas_at_budget`;
    0: the grid only, as runs recorded before it existed).
    """
    import time
    from pathlib import Path

    from ..core.direction_file import save_direction
    from ..core.errors import RosiError
    from ..core.injection_plan import build_plan
    from . import prompts

    started = time.perf_counter()
    loaded, fingerprint, write = load_for_fit(model, write_direction, dtype, reads=("mean",))
    n = loaded.num_layers
    layers = list(layers or range(max(1, n // 4), n - 1, max(1, n // 10)))
    writers = find_writers(loaded, set(layers))
    templates = prompts.fit_wrapper_templates(trailing=trailing_wrappers)
    harmful, benign = collect_sources(loaded, writers, n_harmful=n_harmful, answer_tokens=answer_tokens,
                                      harmful_answer_tokens=harmful_answer_tokens, wrapped_goals=wrapped_goals,
                                      wrapped_benign=wrapped_benign, templates=templates, batch_size=batch_size,
                                      progress=progress)
    benign_fit_n = len(prompts.harmless("extraction")) + len(prompts.borderline("extraction"))
    collected = time.perf_counter()
    fits = fit_gates(writers, harmful, benign, settings, progress=progress)
    fit = max(fits, key=lambda f: f.mean_auroc)
    fitted = time.perf_counter()
    fit_seconds = fitted - started
    if progress:
        print(f"gate: {len(writers)} writers, best fit {fit.settings()} (mean held-out AUROC {fit.mean_auroc:.3f}) "
              f"in {fit_seconds:.0f} s")

    windows = windows_from_gates(fit, min_auroc=min_auroc)
    if not windows:
        raise RosiError(f"rosi: no layer's gate reached held-out AUROC {min_auroc}; lower --min-auroc or widen --layers")

    def plan_of(spec):
        window, targets, alpha = spec
        return build_plan(gated_direction(write, fit, window, targets), loaded.shape, alpha=alpha,
                          checkpoint_fingerprint=fingerprint)

    selection = select_gated(loaded, plan_of, windows, alphas, val_n=val_n, stage1_n=stage1_n,
                             stage1_tokens=stage1_tokens, max_new_tokens=max_new_tokens, finalists=finalists,
                             batch_size=batch_size, budget_steps=budget_steps,
                             wrapper_templates=templates if wrapped_goals else None, progress=progress)
    best = selection.best
    stages = {"load_and_collect": round(collected - started, 1), "fit": round(fitted - collected, 1),
              "select": round(time.perf_counter() - fitted, 1), **selection.seconds}
    direction = gated_direction(write, fit, best.window, best.targets)
    direction.recommended_alpha = best.alpha
    direction.provenance = {**write.provenance, "write_direction": Path(write_direction).name,
                            "method": "extract: gated read vectors (rosi_vllm.extraction.gated)",
                            "extract_seconds": f"{time.perf_counter() - started:.1f}"}
    path = save_direction(out, direction)
    report = {
        "model": model, "direction_file": str(path), "write_direction": str(write_direction),
        "seconds": round(time.perf_counter() - started, 1), "fit_seconds": round(fit_seconds, 1),
        "stage_seconds": stages,
        "n_harmful_fit": n_harmful, "n_benign_fit": benign_fit_n, "answer_tokens": answer_tokens,
        "harmful_answer_tokens": harmful_answer_tokens,
        "wrapped_goals": wrapped_goals, "wrapped_benign": wrapped_benign, "val_n": val_n, "finalists": finalists,
        "fit_wrappers": list(templates) if wrapped_goals or wrapped_benign else [],
        "layers": layers, "chosen_fit": fit.settings(),
        "gates": [{**f.settings(), "mean_auroc": f.mean_auroc, "writers": f.stats} for f in fits],
        "dtype": dtype, "budget_steps": budget_steps, **selection.report(),
    }
    written = write_report(report, out, report_dir, "gate", plot_gates)
    if progress:
        print(f"selected {best.summary()}")
        print(f"wrote {path} (format v2, direction {direction.direction_id}); report {written}")
    return report


def plot_gates(report: dict, path) -> None:
    """Per layer: held-out AUROC of each writer's gate, and harmful median vs benign/generated p95 of h·a."""
    from ..reports.plots import figure

    chosen = next(g for g in report["gates"] if {k: g[k] for k in ("fit", "rho", "lambda")} == report["chosen_fit"])
    with figure(path, (12, 4.5), ncols=2) as (_, (ax1, ax2)):
        for gate in report["gates"]:
            for target, marker in (("attn_out", "o"), ("mlp_out", "s")):
                rows = sorted((int(k.split(".")[0]), s["auroc"]) for k, s in gate["writers"].items()
                              if k.endswith(target))
                ax1.plot([r[0] for r in rows], [r[1] for r in rows], marker=marker, alpha=0.8,
                         label=f"{target} {gate['fit']} ρ={gate['rho']:g} λ={gate['lambda']:g}")
        ax1.set_xlabel("layer")
        ax1.set_ylabel("held-out AUROC of h·a (harmful vs benign)")
        ax1.set_title("gate quality per writer")
        ax1.legend(fontsize=6)
        keys = sorted(chosen["writers"], key=lambda k: (int(k.split(".")[0]), k))
        xs = range(len(keys))
        for stat, label in (("harmful_median", "harmful median"), ("benign_p95", "benign prompt p95"),
                            ("generated_p95", "benign answer p95")):
            ax2.plot(xs, [chosen["writers"][k][stat] for k in keys], marker="o", label=label)
        ax2.set_xticks(list(xs), [k.replace("_out", "") for k in keys], rotation=60, fontsize=7)
        ax2.set_ylabel("h·a (held out)")
        ax2.set_title(f"chosen fit {report['chosen_fit']}")
        ax2.legend(fontsize=7)
