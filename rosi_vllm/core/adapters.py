"""ROSI deltas as PEFT LoRA adapters.

The ROSI edit of one matrix, ``α · ŝ · rᵀ``, is exactly a rank-1 LoRA with
``lora_B = α·ŝ`` (``[d_model, 1]``) and ``lora_A = rᵀ`` (``[1, d_in]``) at
scaling ``lora_alpha / r = 1``, where r is the paper's w̄ or a gated direction's
fitted read vector h. Exporting it in PEFT's adapter format lets one
vLLM engine serve many α values (or many candidate layers, during selection)
on one copy of the base weights, chosen per request. Only the standard
``[d_out, d_in]`` (nn.Linear) layout is exported; GPT-2's Conv1D is refused.

A threshold direction (format v3) replaces one neuron's gate row, up row and down
column. Each replacement is itself a rank-1 delta on the base weight, new minus
old at that neuron: ``lora_B = e_j``, ``lora_A = (row' − row)ᵀ`` for gate_proj
and up_proj, ``lora_B = α·ŝ/c − col``, ``lora_A = e_jᵀ`` for down_proj. The old
slices are read once (`NeuronSlice`); only the down column depends on α.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .architectures import MLP_GATE, MLP_OUT, Layout
from .checkpoint import safetensors_files
from .errors import RosiError
from .injection import check_neuron_index, check_read_vector
from .injection_plan import InjectionPlan

PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class NeuronSlice:
    """v3: the base weight's row (gate/up) or column (down) at the transplanted neuron, and the neuron count."""

    index: int
    neurons: int
    old: torch.Tensor  # float32


def writer_read_vectors(plan: InjectionPlan, model_dir: str | Path) -> dict[str, torch.Tensor | NeuronSlice | None]:
    """The read vector r of every residual writer the plan targets: h (gated) or w̄ (float32 row mean), read once;
    for a threshold plan, the base slice each transplant replaces (`NeuronSlice`).

    None marks a writer outside a gated window: present, not edited. What is read
    depends only on the base weights and the direction file, not on α, so callers
    building many adapters (one per α or per candidate layer) reuse it.
    """
    from safetensors import safe_open

    reads: dict[str, torch.Tensor | None] = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                hit = plan.target(name)
                if hit is None:
                    continue
                if hit[0].layout is not Layout.OUT_IN:
                    raise RosiError(f"rosi: LoRA export supports nn.Linear layouts only; {name!r} is {hit[0].layout.value}")
                if not plan.edits_layer(hit[1]):
                    reads[name] = None
                    continue
                if plan.transplants:
                    reads[name] = _neuron_slice(plan, name, hit, f.get_slice(name))
                    continue
                fitted = plan.read_vector(name)
                if fitted is not None:
                    check_read_vector(fitted, f.get_slice(name).get_shape()[1], repr(name))
                reads[name] = fitted if fitted is not None else f.get_tensor(name).to(torch.float32).mean(dim=0)
    return reads


def _neuron_slice(plan: InjectionPlan, name: str, hit: tuple, stored) -> NeuronSlice:
    writer, layer = hit
    axis = 1 if writer.target == MLP_OUT else 0
    shape = stored.get_shape()
    index = plan.transplants[layer].index
    check_neuron_index(index, shape[axis], repr(name))
    old = stored[:, index] if axis else stored[index]
    return NeuronSlice(index, shape[axis], old.to(torch.float32).reshape(-1))


def _one_hot(index: int, size: int) -> torch.Tensor:
    vector = torch.zeros(size)
    vector[index] = 1.0
    return vector


def _slice_after(plan: InjectionPlan | None, name: str, read: NeuronSlice) -> torch.Tensor:
    """v3: the slice at the neuron once `plan` is applied (None, or α = 0: the base weight's own)."""
    if plan is None or plan.alpha == 0:
        return read.old
    writer, layer = plan.target(name)
    if writer.target == MLP_OUT:
        return plan.down_column
    transplant = plan.transplants[layer]
    return transplant.gate_row if writer.target == MLP_GATE else transplant.up_row


def _factors(plan: InjectionPlan, name: str, read: torch.Tensor | NeuronSlice,
             baseline: InjectionPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A [1, d_in], lora_B [d_out, 1]) of one matrix: the plan's edit minus the baseline's, float32."""
    if not isinstance(read, NeuronSlice):
        return read[None, :], ((plan.alpha - (baseline.alpha if baseline else 0.0)) * plan.unit_dir)[:, None]
    delta = _slice_after(plan, name, read) - _slice_after(baseline, name, read)
    one_hot = _one_hot(read.index, read.neurons)
    if plan.target(name)[0].target == MLP_OUT:
        return one_hot[None, :], delta[:, None]
    return delta[None, :], one_hot[:, None]


def lora_tensors(plan: InjectionPlan, reads: dict[str, torch.Tensor | NeuronSlice | None],
                 dtype: torch.dtype = torch.float32, baseline: InjectionPlan | None = None) -> dict[str, torch.Tensor]:
    """PEFT state dict of the plan's rank-1 deltas; refuses if a target is missing in any layer.

    ``baseline``: the same direction's plan already baked into the served weights (at
    another α); the adapter then carries the difference, ``edit(α) − edit(α₀)``.
    None: the served weights are the unedited checkpoint.
    """
    tensors: dict[str, torch.Tensor] = {}
    run = plan.start()
    for name, read in reads.items():
        if read is None:
            run.record_present(*plan.target(name))
            continue
        module = PEFT_PREFIX + name.removesuffix(".weight")
        lora_a, lora_b = _factors(plan, name, read, baseline)
        tensors[f"{module}.lora_A.weight"] = lora_a.to(dtype).contiguous().clone()
        tensors[f"{module}.lora_B.weight"] = lora_b.to(dtype).contiguous().clone()  # no shared storage
        run.record_edit(*plan.target(name))
    run.check_complete()
    return tensors


def target_module_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors})


def write_adapter(plan: InjectionPlan, model_dir: str | Path, out_dir: str | Path, *,
                  reads: dict[str, torch.Tensor | NeuronSlice | None] | None = None, dtype: torch.dtype = torch.float32,
                  baseline: InjectionPlan | None = None) -> Path:
    """Write `plan` as a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors); with
    `baseline`, for weights that already carry that plan (`lora_tensors`)."""
    from safetensors.torch import save_file

    tensors = lora_tensors(plan, reads if reads is not None else writer_read_vectors(plan, model_dir), dtype,
                           baseline)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 1, "lora_alpha": 1, "lora_dropout": 0.0,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "target_modules": target_module_names(tensors), "base_model_name_or_path": str(model_dir),
        "rosi": {"direction_id": plan.direction_id, "alpha": plan.alpha, "targets": list(plan.targets)},
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
