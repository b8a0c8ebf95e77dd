"""Validate a direction against a model, then edit a (name, tensor) stream.

`build_plan` is where every fail-closed rule lives: a plan exists only if the
direction, α, targets and checkpoint agree. The plan is immutable; each pass over
a checkpoint is an `InjectionRun` with its own counts, so a plan used twice
checks completeness twice. `InjectionPlan.apply` wraps any iterator of checkpoint
tensors (vLLM's weight iterator, or a safetensors
file being rewritten offline) and swaps each residual writer for its edited
copy. It checks at the end of the stream that every requested target was found
in every layer, so an architecture whose names drifted cannot come up
half-hardened. What each matched writer becomes is its method's edit
(`rosi_vllm.methods`: w̄ or a fitted read vector, or a transplanted neuron),
matched and counted the same way whatever the method. No vLLM import: the offline `rosi inject` path and the loader
share this code, which is what makes them equivalent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from .alpha_policy import check_alpha
from .architectures import (
    EMBED,
    ArchitectureSpec,
    ResidualWriter,
    SandwichNormPolicy,
    spec_for_architecture,
    validate_targets,
)
from .checkpoint import ModelShape
from .direction_file import DirectionFile
from .errors import RosiError


@dataclass
class InjectionStats:
    edited: Counter = field(default_factory=Counter)  # target -> matrices edited
    seen: Counter = field(default_factory=Counter)  # target -> matrices found in the stream (edited or not kept)
    layers: dict = field(default_factory=dict)  # target -> set of layer indices
    skipped_extra_layers: int = 0
    left_to_other_stages: int = 0  # pipeline parallelism: writers this process streams but does not keep
    outside_window: int = 0  # gated: writers of layers outside the window, left as they are
    math_seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.edited.values())


@dataclass(frozen=True)
class InjectionPlan:
    """What to inject where, fixed once validated. Each pass over a checkpoint is an `InjectionRun`."""

    spec: ArchitectureSpec
    writers: tuple[ResidualWriter, ...]
    targets: tuple[str, ...]
    unit_dir: torch.Tensor
    alpha: float
    num_layers: int
    direction_id: str
    fingerprint_verified: bool
    #: gated (format v2): read-vector key → h; empty: the paper's w̄, computed from each weight
    reads: Mapping[str, torch.Tensor] = field(default_factory=dict)
    #: gated and threshold: the only layers edited; None: every layer
    window: frozenset[int] | None = None
    #: threshold (format v3): layer → its neuron's new rows; with `down_column`, its new down_proj column
    transplants: Mapping = field(default_factory=dict)
    down_column: torch.Tensor | None = None
    #: the edit method (`rosi_vllm.methods`) whose edit each matched writer gets
    method: object = None

    @property
    def edit_key(self) -> tuple:
        """What makes two plans the same edit of a checkpoint: the direction's content id (read vectors and
        neurons included), α and the targets. Generators key the variants they have already produced by it."""
        return (self.direction_id, self.alpha, self.targets)

    def match(self, name: str) -> tuple[ResidualWriter, int | None] | None:
        hit = self._hit(name)
        return None if hit is None else hit[:2]

    def _hit(self, name: str) -> tuple[ResidualWriter, int | None, int | None] | None:
        for writer in self.writers:
            found = writer.matches(name)
            if found:
                groups = found.groupdict()
                layer, expert = groups.get("layer"), groups.get("expert")
                return writer, (int(layer) if layer is not None else None), (int(expert) if expert is not None else None)
        return None

    def edits_layer(self, layer: int | None) -> bool:
        """Whether writers of `layer` are edited: every layer, or a gated direction's window."""
        return self.window is None or layer in self.window

    def target(self, name: str) -> tuple[ResidualWriter, int | None] | None:
        """The writer `name` is if it is to be edited; None for other tensors and for extra layers."""
        hit = self.match(name)
        if hit is not None and self.is_extra_layer(hit[1]):
            return None
        return hit

    def is_extra_layer(self, layer: int | None) -> bool:
        """A layer past the model's count, e.g. DeepSeek-V3's multi-token-prediction block: not on the served path."""
        return layer is not None and layer >= self.num_layers

    def start(self) -> InjectionRun:
        """A fresh pass over a checkpoint, with its own counts and completeness check."""
        return InjectionRun(self)

    def apply(self, weights: Iterable[tuple[str, torch.Tensor]], kept: Callable[[str], bool] | None = None,
              run: InjectionRun | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the stream with every residual writer edited; raise at its end if any target was missed.

        ``kept``: which tensors this process keeps (None: all), see `InjectionRun.edit`.
        ``run``: pass one (from `start`) to read its counts afterwards; by default each call starts its own.
        """
        run = run or self.start()
        for name, tensor in weights:
            yield name, run.edit(name, tensor, kept)
        run.check_complete()


@dataclass
class InjectionRun:
    """One pass of a plan over a checkpoint stream: what it edited, and whether that was everything."""

    plan: InjectionPlan
    stats: InjectionStats = field(default_factory=InjectionStats)

    def edit(self, name: str, tensor: torch.Tensor, kept: Callable[[str], bool] | None = None) -> torch.Tensor:
        """Return `tensor` edited if `name` is a targeted residual writer, else unchanged.

        ``kept(name)`` False means this process drops the tensor after reading it
        (a layer of another pipeline stage): it is counted as present, so the
        completeness check still covers every layer, and passed on unedited.
        """
        hit = self.plan._hit(name)
        if hit is None:
            return tensor
        writer, layer, _ = hit
        if self.plan.is_extra_layer(layer):
            self.stats.skipped_extra_layers += 1
            return tensor
        if kept is not None and not kept(name):
            self.stats.left_to_other_stages += 1
            self._record_seen(writer, layer)
            return tensor
        if not self.plan.edits_layer(layer):
            self.record_present(writer, layer)
            return tensor
        started = time.perf_counter()
        edited = self.plan.method.edit(self.plan, name, tensor, hit)
        self.stats.math_seconds += time.perf_counter() - started
        self.record_edit(writer, layer)
        return edited

    def record_edit(self, writer: ResidualWriter, layer: int | None) -> None:
        """Count one matrix edited by other means (an adapter built for it); `check_complete` reads the counts."""
        self.stats.edited[writer.target] += 1
        self._record_seen(writer, layer)

    def record_present(self, writer: ResidualWriter, layer: int | None) -> None:
        """Count a writer outside a gated window: present (for completeness), deliberately not edited."""
        self.stats.outside_window += 1
        self._record_seen(writer, layer)

    def _record_seen(self, writer: ResidualWriter, layer: int | None) -> None:
        self.stats.seen[writer.target] += 1
        if layer is not None:
            self.stats.layers.setdefault(writer.target, set()).add(layer)

    def check_complete(self) -> None:
        plan = self.plan
        for target in plan.targets:
            if self.stats.seen[target] == 0:
                raise RosiError(
                    f"rosi: no checkpoint tensor matched target {target!r} for architecture family "
                    f"{plan.spec.family!r}; refusing to serve an unhardened model"
                )
            if target == EMBED:
                continue
            missing = sorted(set(range(plan.num_layers)) - self.stats.layers.get(target, set()))
            if missing:
                raise RosiError(
                    f"rosi: target {target!r} found in {plan.num_layers - len(missing)} of "
                    f"{plan.num_layers} layers (missing {missing[:8]}); refusing a partial injection"
                )

    def summary(self) -> str:
        plan = self.plan
        per_target = ", ".join(f"{t}={self.stats.edited[t]}" for t in plan.targets)
        other = self.stats.left_to_other_stages
        elsewhere = f" (+{other} in other pipeline stages' layers, edited there)" if other else ""
        read = plan.method.describe(plan)
        return (
            f"rosi: direction={plan.direction_id}{read} alpha={plan.alpha:g} "
            f"edited {self.stats.total} matrices ({per_target}){elsewhere} "
            f"in {self.stats.math_seconds * 1000:.1f} ms; fingerprint "
            f"{'verified' if plan.fingerprint_verified else 'NOT verified (verify_fingerprint=false)'}"
        )


def build_plan(
    direction_file: DirectionFile,
    shape: ModelShape,
    *,
    alpha: float | None = None,
    targets: tuple[str, ...] | list[str] | None = None,
    allow_negative_alpha: bool = False,
    sandwich_norm: SandwichNormPolicy = SandwichNormPolicy.REFUSE,
    checkpoint_fingerprint: str | None = None,
) -> InjectionPlan:
    """Check that `direction_file` may be injected into the model `shape`; return the plan.

    ``checkpoint_fingerprint`` is the fingerprint of the weights about to be
    loaded; ``None`` means verification was disabled by the operator.
    ``targets`` None: the direction's own (every residual writer for v1; the
    writers a gated v2 direction has read vectors for).
    """
    method = direction_file.method
    targets = validate_targets(direction_file.default_targets if targets is None else targets)
    spec = spec_for_architecture(shape.architecture)
    targets = method.plan_targets(spec, targets)
    if direction_file.architecture != shape.architecture:
        raise RosiError(
            f"rosi: direction was extracted from a {direction_file.architecture}, "
            f"the model is a {shape.architecture}"
        )
    if direction_file.hidden_size != shape.hidden_size:
        raise RosiError(
            f"rosi: direction has hidden_size {direction_file.hidden_size}, the model has {shape.hidden_size}"
        )
    if direction_file.num_layers != shape.num_layers:
        raise RosiError(
            f"rosi: direction was extracted from a {direction_file.num_layers}-layer model, "
            f"this one has {shape.num_layers} layers"
        )
    if checkpoint_fingerprint is not None and checkpoint_fingerprint != direction_file.model_fingerprint:
        raise RosiError(
            f"rosi: model fingerprint mismatch: direction is for {direction_file.model_fingerprint}, "
            f"checkpoint is {checkpoint_fingerprint} (different weights, e.g. a fine-tune); "
            'extract a direction for these weights or set "verify_fingerprint": false'
        )
    chosen_alpha = check_alpha(
        direction_file.recommended_alpha if alpha is None else float(alpha), allow_negative_alpha
    )
    if spec.sandwich_norm and sandwich_norm is SandwichNormPolicy.REFUSE:
        raise RosiError(
            f"rosi: {shape.architecture} has sandwich norms (residual writers feed an RMSNorm, not the "
            'residual stream); set "sandwich_norm": "through_norm" to inject before the norm and re-tune alpha'
        )
    if EMBED in targets and shape.tie_word_embeddings:
        raise RosiError(
            "rosi: target 'embed' on a model with tied word embeddings would also edit the lm_head; refused"
        )
    writers = spec.writers_for(targets) + tuple(w for w in spec.mlp_inputs if w.target in targets)
    missing = [t for t in targets if not any(w.target == t for w in writers)]
    if missing:
        raise RosiError(f"rosi: architecture family {spec.family!r} has no writer for target(s) {missing}")
    method.check_plan(direction_file, targets)
    return InjectionPlan(
        spec=spec,
        writers=writers,
        targets=targets,
        unit_dir=direction_file.unit,
        alpha=chosen_alpha,
        num_layers=shape.num_layers,
        direction_id=direction_file.direction_id,
        fingerprint_verified=checkpoint_fingerprint is not None,
        window=frozenset(direction_file.window) if direction_file.window else None,
        method=method,
        **method.plan_fields(direction_file, chosen_alpha),
    )
