"""Every default of `rosi harden`, and the rules that turn measurements of the model into settings.

Nothing here names a model: the method follows the architecture table and the checkpoint's own tensor names,
the dtype follows a timing of the model's own forward passes, and `--time-budget` scales prompt counts and
token lengths from the model's own measured per-prompt cost (`scale_for_budget`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

#: methods `rosi harden` chooses between (rosi extract --method ...)
THRESHOLD, GATED = "threshold", "gated"


@dataclass(frozen=True)
class HardenConfig:
    """Every default of `rosi harden`. Counts are prompts, lengths are generated tokens, fractions are of the
    model's depth (layers) or of a measured quantity (named in the comment)."""

    # -- write direction (refusal contrast) --
    #: harmful extraction prompts answered (unedited model) to measure its refusal rate and split refused/complied
    extract_n: int = 120
    extract_tokens: int = 16
    #: refused and complied prompts each group needs for a contrast; below it in refused, the safety system prompt
    #: is used for extraction; below it in complied even then, the direction is harmful − harmless (mean-diff)
    min_per_group: int = 8
    #: the same as a share of `extract_n`: a model refusing less than this is prompted with the safety prompt
    min_refusal_fraction: float = 0.10
    #: the write direction's layer: within this band of depth, the candidate whose direction, written at the MLP
    #: output of the edit band's middle layer, makes the unedited model refuse the most harmful requests it had
    #: complied with (a causal test; ties and no refusal at all: the largest split-half separation)
    write_band: tuple[float, float] = (0.25, 0.85)
    #: candidate layers of that test: the `write_candidates` best separated and as many spread over the band
    write_candidates: int = 4
    #: complied-with harmful requests each candidate writes into (harmless ones if the model complied with
    #: none), and the tokens generated for each
    induce_n: int = 8
    induce_tokens: int = 12
    #: strengths of the test (the best counts), as fractions of the median residual norm where it writes
    induce_fractions: tuple[float, ...] = (0.25, 0.5)
    # -- gate fit and selection (extraction.threshold / extraction.gated) --
    #: candidate layers of the edit, as a band of depth
    edit_band: tuple[float, float] = (1 / 3, 2 / 3)
    #: most candidate layers a gated fit gets (spread evenly over `edit_band`)
    gated_max_layers: int = 8
    #: α grid as fractions of the median residual norm at the write layer (measured), bisected to the KL budget
    alpha_fractions: tuple[float, ...] = (0.0625, 0.125, 0.25, 0.5)
    budget_steps: int = 3
    #: doublings past the grid's top while the KL upper bound stays within budget (a gate closed on benign text
    #: barely moves KL, so the grid's top must not cap α): up to 2**grow_steps × the top, 4 × the residual norm
    grow_steps: int = 3
    #: the fit and the selection see every harmful goal and harmless request in one of these forms, rotating, so
    #: a gate cannot learn the benchmarks' imperative phrasing as harm (`extraction.forms.FIT_FORMS`)
    forms: tuple[str, ...] = ("imperative", "question", "first_person", "long_context")
    min_auroc: float = 0.9
    n_harmful: int = 120
    #: benign requests the fit answers (`writer_inputs.benign_fit_requests`: the extraction split's harmless and
    #: borderline ones alternating; 180 is all of them): the fit's largest cost, so `--time-budget` scales it too
    n_benign: int = 180
    wrapped: int = 40
    answer_tokens: int = 32
    val_n: int = 60
    stage1_n: int = 24
    stage1_tokens: int = 16
    max_new_tokens: int = 32
    finalists: int = 3
    batch_size: int = 16
    # -- verification (rosi eval, test split) --
    eval_limit: int | None = None
    jailbreak_goals: int = 20
    eval_tokens: int = 48
    #: the evaluation engines skip graph compilation: measured on SmolLM2 (2 CPU cores, 482 prompts × 24 tokens),
    #: compiling cost ~75 s of start-up and saved about 30 s of decoding (research/results/harden/measurements-2026-12-04.json)
    eval_compile: bool = False
    # -- dtype rule --
    #: bfloat16 is chosen when its measured time is at most this share of float32's (float32 is exact)
    bf16_speedup_needed: float = 0.9
    probe_prompts: int = 8
    probe_tokens: int = 8
    #: --time-budget never scales below this (the smallest run that still measures something)
    min_scale: float = 1 / 32

    @property
    def min_extract_n(self) -> int:
        """The fewest extraction prompts at which a model refusing `min_refusal_fraction` of them still gives
        `min_per_group` refused ones: the floor of `extract_n` under `--time-budget`."""
        return min(self.extract_n, math.ceil(self.min_per_group / self.min_refusal_fraction))

    def scaled(self, factor: float) -> HardenConfig:
        """Prompt counts × `factor`, token lengths × √`factor` (both with floors; not the extraction answers'
        length, which decides whether a refusal is seen), everything else unchanged:
        how `--time-budget` trades prompts for time. The harmful fit prompts, plain and wrapped, scale by
        √`factor` too: the fit reads them with one forward pass each and generates nothing, so they cost a
        small share of the run, while the read vector they fit (one coordinate per hidden unit) is what the
        whole edit rests on. `factor` ≥ 1 returns the defaults."""
        if factor >= 1:
            return self

        def count(n: int, floor: int, exponent: float = 1.0) -> int:
            return max(floor, int(round(n * factor ** exponent)))

        def tokens(n: int, floor: int = 4) -> int:
            return max(floor, int(round(n * math.sqrt(factor))))

        limit = count(100, 4) if self.eval_limit is None else count(self.eval_limit, 4)
        return dataclasses.replace(
            self, extract_n=count(self.extract_n, self.min_extract_n), induce_n=count(self.induce_n, 4),
            n_harmful=count(self.n_harmful, 16, 0.5), n_benign=count(self.n_benign, 48),
            wrapped=count(self.wrapped, 0, 0.5),
            answer_tokens=tokens(self.answer_tokens), val_n=count(self.val_n, 8), stage1_n=count(self.stage1_n, 4),
            stage1_tokens=tokens(self.stage1_tokens), max_new_tokens=tokens(self.max_new_tokens),
            finalists=count(self.finalists, 1), budget_steps=count(self.budget_steps, 1),
            eval_limit=limit, jailbreak_goals=count(self.jailbreak_goals, 2), eval_tokens=tokens(self.eval_tokens, 8))


#: --time-budget's default, minutes: the issue's target for a 0.5B model on 2 CPU cores (a larger model gets the
#: smallest scale, `HardenConfig.min_scale`, and takes what that costs; 0 turns the scaling off)
DEFAULT_TIME_BUDGET_MIN = 10.0

#: --time-budget: the scales tried, largest first; the first whose estimate fits is used
SCALE_LADDER = tuple(2 ** (-k / 2) for k in range(0, 11))


@dataclass(frozen=True)
class Cost:
    """Measured seconds on this machine (timing probe at the chosen dtype): per prompt per generated token in a
    batch of `HardenConfig.probe_prompts`, per prompt forward pass, one load of the model; per decoding step of
    a batch of one (0: not measured, a step costs `gen_token`); and a fixed cost per vLLM engine start (not
    measured: ~20–30 s on 2 CPU cores, less on a GPU machine, so the estimate errs long)."""

    gen_token: float
    forward: float
    load: float = 0.0
    engine_start: float = 30.0
    gen_step: float = 0.0
    #: prompts in the probe's batch (what `gen_token` was measured at)
    probe_batch: int = HardenConfig.probe_prompts

    def generate(self, prompts: int, tokens: int, batch: int) -> float:
        """Seconds for transformers to generate `tokens` tokens for each of `prompts` prompts in batches of
        `batch`: a decoding step costs `gen_step` plus, for each further prompt in the batch, the marginal
        cost the two probe batches imply. Why not prompts × tokens × `gen_token`: small batches (selection's
        stage 1 sends a few prompts per set) cost per prompt about twice what the probe's batch did (measured
        on Qwen2.5-Coder-0.5B, research/results/harden/README.md)."""
        if prompts <= 0 or tokens <= 0:
            return 0.0
        step = self.gen_step or self.gen_token
        n = self.probe_batch
        marginal = max(0.0, (n * self.gen_token - step) / (n - 1)) if self.gen_step and n > 1 else self.gen_token
        full, rest = divmod(prompts, batch)
        seconds = full * tokens * (step + (batch - 1) * marginal)
        return seconds + (tokens * (step + (rest - 1) * marginal) if rest else 0.0)


#: vLLM's eager generation per prompt-token as a share of transformers' measured `Cost.gen_token`, for the plan
#: made before anything ran on vLLM: about 0.5 on SmolLM2-135M and 0.67 on Qwen2.5-Coder-0.5B on 2 CPU cores
#: (the base evaluations of research/results/harden/*-natural-data.json); the larger, rounded up, so the plan
#: errs long. The base evaluation then measures it, and the edit is sized into what is left (`run.harden`)
VLLM_TOKEN_SHARE = 0.75

#: the wrappers every gate fit puts each wrapped request under (`prompts.FIT_WRAPPER_TEMPLATES`)
FIT_WRAPPERS = 5


def estimate_stages(config: HardenConfig, cost: Cost, *, eval_prompts: int | None = None) -> dict[str, float]:
    """Seconds per stage of `run.STAGES` after the probe, from the prompt counts and lengths of `config` and the
    measured `cost` (a rough model: transformers' generation is `Cost.generate` in the run's batches, forward
    passes prompts × forward, plus a model load per stage that loads one and an engine start per evaluation;
    selection's stage 1 is costed for every candidate, as if all were within the KL budget; vLLM's eager
    generation at `VLLM_TOKEN_SHARE` of transformers' measured per-token cost)."""
    c = config
    g, f, gen, bs = cost.gen_token, cost.forward, cost.generate, c.batch_size
    windows, alphas = 3, len(c.alpha_fractions)
    candidates = windows * alphas + windows * (c.budget_steps + c.grow_steps)
    eval_n = eval_prompts if eval_prompts is not None else 4 * (c.eval_limit or 100) + 6 * c.jailbreak_goals
    benign = c.n_benign
    sets = 4 if c.wrapped else 3  # validation sets each candidate generates in one run: harmful, benign, borderline (+ wrapped)
    return {
        "write_direction": c.extract_n * answer_seconds(c, cost) + induce_seconds(c, cost),
        "base_eval": cost.engine_start + eval_n * c.eval_tokens * g * VLLM_TOKEN_SHARE,
        # fit (collect inputs, answer the benign fit requests, find the quietest neurons) + selection (KL screen,
        # stage 1 for every candidate within the KL budget: three sets each, stage 2 for the finalists and base)
        "edit": cost.load + ((c.n_harmful + FIT_WRAPPERS * c.wrapped * 2) * f + benign * f
                             + gen(benign, c.answer_tokens, bs) + gen(48, 8, bs)
                             + candidates * c.val_n * f
                             + (candidates + 1) * gen(sets * c.stage1_n, c.stage1_tokens, bs)
                             + (c.finalists + 1) * gen(sets * c.val_n, c.max_new_tokens, bs)),
        # + transformers: the benign KL (a model load, the benign test prompts) and the gate's reads per form (the
        # style-shift prompts; a pass that stops at the window, costed as a whole one: on Qwen2.5-Coder-0.5B the
        # hardened evaluation took about a minute longer than the base one)
        "hardened_eval": (cost.engine_start + eval_n * c.eval_tokens * g * VLLM_TOKEN_SHARE + cost.load
                          + (c.eval_limit or 100) * f + eval_n * f),
    }


def answer_seconds(config: HardenConfig, cost: Cost) -> float:
    """Seconds per extraction prompt the write stage answers (a forward pass and its answer, in full batches)."""
    bs = config.batch_size
    return cost.forward + cost.generate(bs, config.extract_tokens, bs) / bs


def induce_seconds(config: HardenConfig, cost: Cost) -> float:
    """Seconds of the write stage's induced-refusal test: every candidate layer at every strength, written into
    the complied-with prompts (`run.induced_refusal`; counted twice, as measured)."""
    c = config
    return 2 * c.write_candidates * len(c.induce_fractions) * cost.generate(c.induce_n, c.induce_tokens, c.batch_size)


def affordable_extraction(config: HardenConfig, cost: Cost, seconds: float) -> int:
    """The most extraction prompts the write stage may answer in its last pass so that, with a safety-prompt pass
    of `extract_n` before it and the induced-refusal test, it takes at most `seconds`; never fewer than
    `extract_n`. The write stage answers more prompts when the model refuses too few for a contrast
    (`prompts_needed`): on a model that refuses almost nothing that is the whole extraction split, which on a
    large model would spend the budget before the edit starts; past this cap the direction is the mean
    difference instead (too few refused for a contrast)."""
    per = answer_seconds(config, cost)
    spare = seconds - induce_seconds(config, cost) - config.extract_n * per
    return max(config.extract_n, int(spare / per + 1e-9) if per > 0 else config.extract_n)


def scale_for_budget(config: HardenConfig, cost: Cost, budget_seconds: float | None,
                     eval_prompts=None, *, stages: tuple[str, ...] | None = None,
                     at_most: float = 1.0) -> tuple[float, HardenConfig]:
    """The largest scale of `SCALE_LADDER` (≥ `config.min_scale`, ≤ `at_most`) whose estimate of `stages`
    (None: every stage) fits `budget_seconds`, and the config at that scale; no budget: (1, config).
    Deterministic given the measured `cost`. `eval_prompts`: config → how many prompts each evaluation sends
    (None: `estimate_stages`' own guess). With `stages` and `at_most`: the re-plan of the stages left once
    the first ones took what they took (`run.harden`)."""
    if budget_seconds is None:
        return 1.0, config
    ladder = [s for s in SCALE_LADDER if config.min_scale <= s <= at_most + 1e-12] or [config.min_scale]
    for scale in ladder:
        scaled = config.scaled(scale)
        n = eval_prompts(scaled) if eval_prompts else None
        estimate = estimate_stages(scaled, cost, eval_prompts=n)
        if sum(v for k, v in estimate.items() if stages is None or k in stages) <= budget_seconds:
            return scale, scaled
    return ladder[-1], config.scaled(ladder[-1])


def choose_dtype(seconds: dict[str, float], speedup_needed: float = HardenConfig.bf16_speedup_needed) -> str:
    """bfloat16 when it measured at most `speedup_needed` × float32's time, float32 otherwise (and when bfloat16
    was not measured)."""
    if "bfloat16" not in seconds or "float32" not in seconds:
        return "float32"
    return "bfloat16" if seconds["bfloat16"] <= speedup_needed * seconds["float32"] else "float32"


def prompts_needed(refused: int, answered: int, min_per_group: int, available: int) -> int:
    """How many extraction prompts to answer in all so that, at the refusal share measured on the first
    `answered`, about `min_per_group` are refused (a margin of a quarter over the expectation); `answered`
    when that many already are, `available` at most, and all of them when nothing was refused yet."""
    if refused >= min_per_group:
        return answered
    if refused == 0:
        return available
    return min(available, max(answered, math.ceil(1.25 * min_per_group * answered / refused)))


def choose_threads(seconds: dict[int, float]) -> int:
    """The torch thread count that measured fastest (ties: the fewer threads). On a CPU shared with other
    processes, OpenMP threads that spin-wait for each other can make more threads several times slower."""
    return min(seconds, key=lambda n: (seconds[n], n))


def method_for(spec, tensor_names) -> tuple[str, str]:
    """(method, why): the threshold edit where the architecture table lists a separate gate and up projection
    (`spec.mlp_inputs`) *and* this checkpoint has tensors matching both; the gated edit otherwise."""
    from ..core.architectures import MLP_GATE, MLP_UP

    rows = {w.target: w for w in spec.mlp_inputs}
    if MLP_GATE not in rows or MLP_UP not in rows:
        return GATED, f"the {spec.family} row of the architecture table lists no separate gate and up projection"
    names = list(tensor_names)
    missing = [t for t in (MLP_GATE, MLP_UP) if not any(rows[t].matches(n) for n in names)]
    if missing:
        return GATED, (f"the {spec.family} row lists gate and up projections but this checkpoint has no tensor "
                       f"matching {', '.join(missing)} (fused or absent)")
    return THRESHOLD, f"the {spec.family} row lists a separate gate and up projection and the checkpoint has both"


def band_layers(num_layers: int, band: tuple[float, float], most: int | None = None) -> list[int]:
    """Layers from ``band[0]·n`` up to ``band[1]·n`` (at least one), at most `most` of them spread evenly."""
    lo = min(num_layers - 1, int(band[0] * num_layers))
    hi = max(lo + 1, int(math.ceil(band[1] * num_layers)))
    layers = list(range(lo, min(hi, num_layers)))
    if most and len(layers) > most:
        step = len(layers) / most
        layers = sorted({layers[int(i * step)] for i in range(most)})
    return layers


def separation(projections_a, projections_b) -> float:
    """|mean a − mean b| / pooled standard deviation (Cohen's d) of two groups of scalar projections."""
    import torch

    a, b = torch.as_tensor(projections_a, dtype=torch.float64), torch.as_tensor(projections_b, dtype=torch.float64)
    if len(a) < 2 or len(b) < 2:
        return 0.0
    pooled = math.sqrt((float(a.var()) * (len(a) - 1) + float(b.var()) * (len(b) - 1)) / (len(a) + len(b) - 2))
    return abs(float(a.mean() - b.mean())) / pooled if pooled > 0 else 0.0


def split_half_separation(group_a, group_b) -> float:
    """Separation of two groups ``[n, hidden]`` along their mean difference, cross-fitted: the direction from
    the even-indexed rows scores the odd ones and vice versa (mean of both), so a direction that only fits its
    own prompts scores low."""
    scores = []
    for fit, held in ((0, 1), (1, 0)):
        direction = group_a[fit::2].mean(0) - group_b[fit::2].mean(0)
        norm = float(direction.norm())
        if norm == 0 or len(group_a[held::2]) < 2 or len(group_b[held::2]) < 2:
            scores.append(0.0)
            continue
        unit = direction / norm
        scores.append(separation(group_a[held::2] @ unit, group_b[held::2] @ unit))
    return sum(scores) / len(scores)
