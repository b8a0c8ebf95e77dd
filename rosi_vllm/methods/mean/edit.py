"""The paper's rank-one edit ``W + α·ŝ·w̄ᵀ`` of every residual writer, and the same edit as a rank-1 LoRA."""

from __future__ import annotations

import torch

from ...core.injection import inject
from .format import MeanFormat


class MeanRead(MeanFormat):
    def edit(self, plan, name, tensor, hit) -> torch.Tensor:
        writer = hit[0]
        return inject(tensor, plan.unit_dir, plan.alpha, writer.layout, self.read_vector(plan, name, hit), name)

    def read_vector(self, plan, name: str, hit) -> torch.Tensor | None:
        """None: `inject` computes w̄ from the unedited weight. A fitted read vector here (gated) is the only change."""
        return None

    def adapter_read(self, plan, name, hit, stored) -> torch.Tensor:
        """w̄ of the base weight (float32 row mean), or the fitted read vector checked against the writer's input."""
        from ...core.injection import check_read_vector

        fitted = self.read_vector(plan, name, hit)
        if fitted is None:
            return stored[:].to(torch.float32).mean(dim=0)
        check_read_vector(fitted, stored.get_shape()[1], repr(name))
        return fitted

    def adapter_factors(self, plan, name, read, baseline):
        """``lora_A = rᵀ``, ``lora_B = (α − α₀)·ŝ``: the edit is linear in α, so the difference is one more edit."""
        return read[None, :], ((plan.alpha - (baseline.alpha if baseline else 0.0)) * plan.unit_dir)[:, None]
