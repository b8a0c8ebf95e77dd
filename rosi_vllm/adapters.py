"""ROSI deltas as PEFT LoRA adapters.

The ROSI edit of one matrix, ``α · ŝ · rᵀ``, is exactly a rank-1 LoRA with
``lora_B = α·ŝ`` (``[d_model, 1]``) and ``lora_A = rᵀ`` (``[1, d_in]``) at
scaling ``lora_alpha / r = 1``, where r is the paper's w̄ or a gated direction's
fitted read vector h. Exporting it in PEFT's adapter format lets one
vLLM engine serve many α values (or many candidate layers, during selection)
on one copy of the base weights, chosen per request. Only the standard
``[d_out, d_in]`` (nn.Linear) layout is exported; GPT-2's Conv1D is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .architectures import Layout
from .checkpoint import safetensors_files
from .errors import RosiError
from .injection import check_read_vector
from .injection_plan import InjectionPlan

PEFT_PREFIX = "base_model.model."


def writer_read_vectors(plan: InjectionPlan, model_dir: str | Path) -> dict[str, torch.Tensor | None]:
    """The read vector r of every residual writer the plan targets: h (gated) or w̄ (float32 row mean), read once.

    None marks a writer outside a gated window: present, not edited. r depends only
    on the base weights and the direction file, not on α, so callers building many
    adapters (one per α or per candidate layer) reuse it.
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
                fitted = plan.read_vector(name)
                if fitted is not None:
                    check_read_vector(fitted, f.get_slice(name).get_shape()[1], repr(name))
                reads[name] = fitted if fitted is not None else f.get_tensor(name).to(torch.float32).mean(dim=0)
    return reads


def lora_tensors(plan: InjectionPlan, reads: dict[str, torch.Tensor | None],
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """PEFT state dict of the plan's rank-1 deltas; refuses if a target is missing in any layer."""
    tensors: dict[str, torch.Tensor] = {}
    run = plan.start()
    b = (plan.alpha * plan.unit_dir)[:, None].to(dtype).contiguous()
    for name, read in reads.items():
        if read is None:
            run.record_present(*plan.target(name))
            continue
        module = PEFT_PREFIX + name.removesuffix(".weight")
        tensors[f"{module}.lora_A.weight"] = read[None, :].to(dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = b.clone()  # safetensors refuses shared storage
        run.record_edit(*plan.target(name))
    run.check_complete()
    return tensors


def target_module_names(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in tensors})


def write_adapter(plan: InjectionPlan, model_dir: str | Path, out_dir: str | Path, *,
                  reads: dict[str, torch.Tensor | None] | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write `plan` as a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import save_file

    tensors = lora_tensors(plan, reads if reads is not None else writer_read_vectors(plan, model_dir), dtype)
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
