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
old at that neuron. Each method's factors are its own (`rosi_vllm.methods`, the
method's `edit.py`); this module reads the base weights once and writes PEFT's format.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .architectures import Layout
from .checkpoint import safetensors_files
from .errors import RosiError
from .injection_plan import InjectionPlan

PEFT_PREFIX = "base_model.model."


def writer_read_vectors(plan: InjectionPlan, model_dir: str | Path) -> dict[str, object]:
    """The read vector r of every residual writer the plan targets: h (gated) or w̄ (float32 row mean), read once;
    for a threshold plan, the base slice each transplant replaces: whatever the plan's method needs
    (`Method.adapter_read`).

    None marks a writer outside a gated window: present, not edited. What is read
    depends only on the base weights and the direction file, not on α, so callers
    building many adapters (one per α or per candidate layer) reuse it.
    """
    from safetensors import safe_open

    reads: dict[str, object] = {}
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
                reads[name] = plan.method.adapter_read(plan, name, plan._hit(name), f.get_slice(name))
    return reads


def lora_tensors(plan: InjectionPlan, reads: dict[str, object],
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
        lora_a, lora_b = plan.method.adapter_factors(plan, name, read, baseline)
        tensors[f"{module}.lora_A.weight"] = lora_a.to(dtype).contiguous().clone()
        tensors[f"{module}.lora_B.weight"] = lora_b.to(dtype).contiguous().clone()  # no shared storage
        run.record_edit(*plan.target(name))
    run.check_complete()
    return tensors


def target_module_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors})


def write_adapter(plan: InjectionPlan, model_dir: str | Path, out_dir: str | Path, *,
                  reads: dict[str, object] | None = None, dtype: torch.dtype = torch.float32,
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
