"""Which checkpoint tensors write the residual stream, per architecture family.

ROSI edits every matrix whose output is added to the residual stream. Knowing
which tensors those are is the only model-specific knowledge the product needs,
so it lives here as data: one `ArchitectureSpec` per family, each a list of
`ResidualWriter` name patterns over *checkpoint* tensor names (the names in the
safetensors files, before vLLM renames or fuses anything). Adding a family is
adding a row, never an ``if``.

Patterns match the end of a name, so the same row serves text-only checkpoints
(``model.layers.3.mlp.down_proj.weight``) and multimodal wrappers
(``language_model.model.layers.3.mlp.down_proj.weight``).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .errors import RosiError


class Layout(enum.Enum):
    """Where d_model sits in a weight tensor."""

    #: nn.Linear ``[d_out = d_model, d_in]``: the delta is ``ŝ ⊗ W.mean(0)``.
    OUT_IN = "out_in"
    #: GPT-2 Conv1D and embedding tables ``[d_in, d_out = d_model]``: the same
    #: rank-one term transposed, ``W.mean(1) ⊗ ŝ``.
    IN_OUT = "in_out"


#: Target groups an operator may name in ``targets``.
ATTN_OUT = "attn_out"
MLP_OUT = "mlp_out"
EMBED = "embed"
KNOWN_TARGETS = (ATTN_OUT, MLP_OUT, EMBED)
#: The residual-stream writers the paper edits; the embedding is opt-in.
DEFAULT_TARGETS = (ATTN_OUT, MLP_OUT)


@dataclass(frozen=True)
class ResidualWriter:
    """A family of checkpoint tensors named by pattern: residual writers, and (``mlp_inputs``) the gated MLP
    input projections a threshold direction edits one row of."""

    target: str
    pattern: re.Pattern[str]
    layout: Layout

    def matches(self, name: str) -> re.Match[str] | None:
        return self.pattern.search(name)


#: Rows of a gated MLP's input projections (read=threshold transplants one neuron: its gate and up rows).
MLP_GATE = "mlp_gate"
MLP_UP = "mlp_up"


def _writer(target: str, suffix: str, layout: Layout = Layout.OUT_IN) -> ResidualWriter:
    # `suffix` uses {L} for the layer index and {E} for an expert index.
    regex = suffix.replace(".", r"\.").replace("{L}", r"(?P<layer>\d+)").replace("{E}", r"(?P<expert>\d+)")
    return ResidualWriter(target, re.compile(r"(?:^|\.)" + regex + r"$"), layout)


@dataclass(frozen=True)
class ArchitectureSpec:
    family: str
    architectures: tuple[str, ...]
    writers: tuple[ResidualWriter, ...]
    #: Gemma-2/3 normalise each sub-block's output (post-attention and
    #: post-feedforward RMSNorm) *before* adding it to the residual stream, so a
    #: rank-one term written by o_proj/down_proj is rescaled per channel and per
    #: token on its way in. See `SandwichNormPolicy`.
    sandwich_norm: bool = False
    #: A dense gated MLP's gate and up projections (targets MLP_GATE, MLP_UP; [d_intermediate, d_model]).
    #: A threshold direction (format v3) replaces one neuron's rows in them and its down_proj column; a
    #: family without them (plain MLPs, fused gate_up checkpoints, experts only) cannot take that edit.
    mlp_inputs: tuple[ResidualWriter, ...] = ()
    notes: str = ""
    aliases: tuple[str, ...] = field(default=())

    def writers_for(self, targets: tuple[str, ...]) -> tuple[ResidualWriter, ...]:
        return tuple(w for w in self.writers if w.target in targets)


_LLAMA_STYLE = (
    _writer(ATTN_OUT, "layers.{L}.self_attn.o_proj.weight"),
    # Dense MLP, Qwen2-MoE/Qwen3-MoE/DeepSeek experts, and shared experts
    # (Qwen2-MoE `shared_expert`, DeepSeek `shared_experts`).
    _writer(MLP_OUT, "layers.{L}.mlp.down_proj.weight"),
    _writer(MLP_OUT, "layers.{L}.mlp.experts.{E}.down_proj.weight"),
    _writer(MLP_OUT, "layers.{L}.mlp.shared_expert.down_proj.weight"),
    _writer(MLP_OUT, "layers.{L}.mlp.shared_experts.down_proj.weight"),
    _writer(EMBED, "embed_tokens.weight", Layout.IN_OUT),
)

_GATED_MLP = (
    _writer(MLP_GATE, "layers.{L}.mlp.gate_proj.weight"),
    _writer(MLP_UP, "layers.{L}.mlp.up_proj.weight"),
)

ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        family="llama",
        architectures=(
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "GemmaForCausalLM",
            "Phi3ForCausalLM",
            "Qwen2MoeForCausalLM",
            "Qwen3MoeForCausalLM",
            "DeepseekV2ForCausalLM",
            "DeepseekV3ForCausalLM",
            "OlmoForCausalLM",
            "GraniteForCausalLM",
        ),
        writers=_LLAMA_STYLE,
        mlp_inputs=_GATED_MLP,
        notes="o_proj and down_proj (every routed and shared expert for MoE); Phi-3's fused "
        "qkv/gate_up are inputs, not writers, so they are untouched.",
    ),
    ArchitectureSpec(
        family="mixtral",
        architectures=("MixtralForCausalLM",),
        writers=(
            _writer(ATTN_OUT, "layers.{L}.self_attn.o_proj.weight"),
            _writer(MLP_OUT, "layers.{L}.block_sparse_moe.experts.{E}.w2.weight"),
            _writer(EMBED, "embed_tokens.weight", Layout.IN_OUT),
        ),
        notes="every expert's w2 (its down projection).",
    ),
    ArchitectureSpec(
        family="gemma2",
        architectures=(
            "Gemma2ForCausalLM",
            "Gemma3ForCausalLM",
            "Gemma3ForConditionalGeneration",
        ),
        writers=_LLAMA_STYLE,
        sandwich_norm=True,
        mlp_inputs=_GATED_MLP,
        notes="sandwich norms: o_proj/down_proj outputs pass through post-attention/"
        "post-feedforward RMSNorm before the residual add; refused unless "
        "sandwich_norm='through_norm'.",
    ),
    ArchitectureSpec(
        family="gpt2",
        architectures=("GPT2LMHeadModel",),
        writers=(
            # Conv1D stores [d_in, d_out]: the transposed layout.
            _writer(ATTN_OUT, "h.{L}.attn.c_proj.weight", Layout.IN_OUT),
            _writer(MLP_OUT, "h.{L}.mlp.c_proj.weight", Layout.IN_OUT),
            _writer(EMBED, "wte.weight", Layout.IN_OUT),
        ),
        notes="Conv1D weights are [d_in, d_out]; the delta is transposed accordingly.",
    ),
    ArchitectureSpec(
        family="gpt_neox",
        architectures=("GPTNeoXForCausalLM",),
        writers=(
            _writer(ATTN_OUT, "layers.{L}.attention.dense.weight"),
            _writer(MLP_OUT, "layers.{L}.mlp.dense_4h_to_h.weight"),
            _writer(EMBED, "embed_in.weight", Layout.IN_OUT),
        ),
        notes="attention.dense and mlp.dense_4h_to_h; parallel-residual or not, both write "
        "the residual stream.",
    ),
)


class SandwichNormPolicy(enum.Enum):
    """What to do on an architecture whose writers feed a norm, not the residual."""

    #: Default: fail closed. ROSI's guarantee ("adds α·(w̄·x)·ŝ to the residual")
    #: does not hold, and silently serving something else is worse than not starting.
    REFUSE = "refuse"
    #: Edit the pre-norm weights anyway. The added term is then rescaled by the
    #: post-norm's per-channel gain and its per-token RMS; α must be re-tuned on
    #: this model and is not comparable with non-sandwich models.
    THROUGH_NORM = "through_norm"


def spec_for_architecture(architecture: str) -> ArchitectureSpec:
    for spec in ARCHITECTURES:
        if architecture in spec.architectures:
            return spec
    supported = ", ".join(sorted(a for s in ARCHITECTURES for a in s.architectures))
    raise RosiError(
        f"rosi: architecture {architecture!r} has no residual-writer table entry; supported: {supported}"
    )


def validate_targets(targets: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    targets = tuple(targets)
    unknown = [t for t in targets if t not in KNOWN_TARGETS]
    if unknown:
        raise RosiError(
            f"rosi: unknown target(s) {unknown}; choose from {list(KNOWN_TARGETS)}"
        )
    if not targets:
        raise RosiError("rosi: targets is empty; nothing would be injected")
    return tuple(dict.fromkeys(targets))
