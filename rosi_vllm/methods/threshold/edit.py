"""The threshold edit: per window layer, one MLP neuron's gate row becomes ``c·(g − t·u)``, its up row ``u`` and
its down column ``α·ŝ/c`` (`core.injection.threshold_rows`); as a LoRA, each replacement is the rank-1 delta
new minus old at that neuron (``lora_B = e_j``, ``lora_A = (row' − row)ᵀ``; for down_proj
``lora_B = α·ŝ/c − col``, ``lora_A = e_jᵀ``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.architectures import MLP_GATE, MLP_OUT, MLP_UP
from ...core.errors import RosiError
from ...core.injection import check_neuron_index, replace_slice, threshold_column, threshold_rows
from .format import ThresholdFormat


@dataclass(frozen=True)
class Transplant:
    """What one layer's neuron becomes (`injection.threshold_rows`); the down column is the plan's."""

    index: int
    gate_row: torch.Tensor
    up_row: torch.Tensor


@dataclass(frozen=True)
class NeuronSlice:
    """The base weight's row (gate/up) or column (down) at the transplanted neuron, and the neuron count."""

    index: int
    neurons: int
    old: torch.Tensor  # float32


class ThresholdRead(ThresholdFormat):
    def default_targets(self, direction_file) -> tuple[str, ...]:
        return (MLP_OUT,)

    def plan_targets(self, spec, targets) -> tuple[str, ...]:
        """v3 edits the MLP only: its down projection and the two input projections of the same neuron."""
        if targets != (MLP_OUT,):
            raise RosiError(f"rosi: a threshold (format v3) direction edits the MLP (targets ['mlp_out']); "
                            f"got {list(targets)}")
        if not spec.mlp_inputs:
            raise RosiError(f"rosi: a threshold (format v3) direction transplants a neuron of a gated MLP "
                            f"(gate and up projections); architecture family {spec.family!r} has none")
        return (MLP_OUT, MLP_GATE, MLP_UP)

    def plan_fields(self, direction_file, alpha) -> dict:
        return {"transplants": {layer: Transplant(n.index, *threshold_rows(n.read, n.bias, direction_file.threshold,
                                                                          direction_file.sharpness))
                                for layer, n in direction_file.neurons.items()},
                "down_column": threshold_column(direction_file.unit, alpha, direction_file.sharpness)}

    def edit(self, plan, name, tensor, hit) -> torch.Tensor:
        """The layer's neuron gets its gate row, up row or down column."""
        writer, layer, expert = hit
        if expert is not None:
            raise RosiError(f"rosi: {name!r} is a mixture-of-experts expert; a threshold (format v3) direction "
                            "transplants a neuron of a dense MLP and cannot edit expert layers")
        if plan.alpha == 0:  # α = 0 is the unedited model in every format, not a neuron that writes nothing
            return tensor
        transplant = plan.transplants[layer]
        if writer.target == MLP_OUT:
            return replace_slice(tensor, transplant.index, plan.down_column, axis=1, name=repr(name))
        row = transplant.gate_row if writer.target == MLP_GATE else transplant.up_row
        return replace_slice(tensor, transplant.index, row, axis=0, name=repr(name))

    def describe(self, plan) -> str:
        return f" read=threshold window={sorted(plan.window)}"

    def adapter_read(self, plan, name, hit, stored) -> NeuronSlice:
        """The base slice the transplant replaces, read once (only the down column depends on α)."""
        writer, layer = hit[:2]
        axis = 1 if writer.target == MLP_OUT else 0
        shape = stored.get_shape()
        index = plan.transplants[layer].index
        check_neuron_index(index, shape[axis], repr(name))
        old = stored[:, index] if axis else stored[index]
        return NeuronSlice(index, shape[axis], old.to(torch.float32).reshape(-1))

    def adapter_factors(self, plan, name, read, baseline):
        delta = _slice_after(plan, name, read) - _slice_after(baseline, name, read)
        one_hot = torch.zeros(read.neurons)
        one_hot[read.index] = 1.0
        if plan.target(name)[0].target == MLP_OUT:
            return one_hot[None, :], delta[:, None]
        return delta[None, :], one_hot[:, None]


def _slice_after(plan, name: str, read: NeuronSlice) -> torch.Tensor:
    """The slice at the neuron once `plan` is applied (None, or α = 0: the base weight's own)."""
    if plan is None or plan.alpha == 0:
        return read.old
    writer, layer = plan.target(name)
    if writer.target == MLP_OUT:
        return plan.down_column
    transplant = plan.transplants[layer]
    return transplant.gate_row if writer.target == MLP_GATE else transplant.up_row
