"""The gated edit ``W + α·ŝ·hᵀ`` of the window's writers: the paper's edit with each writer's fitted h for w̄.

Every writer the plan edits must have its h (dense writers are checked when the
plan is built, mixture-of-experts experts as they stream): a writer edited with
w̄ instead would fire on every input, so a missing h fails closed.
"""

from __future__ import annotations

import torch

from ...core.architectures import DEFAULT_TARGETS, EMBED
from ...core.direction_file import read_key
from ...core.errors import RosiError
from ..mean.edit import MeanRead
from .format import GatedFormat


class GatedRead(GatedFormat, MeanRead):
    def default_targets(self, direction_file) -> tuple[str, ...]:
        """The writers with read vectors."""
        return tuple(t for t in DEFAULT_TARGETS if any(key.split(".")[1] == t for key in direction_file.reads))

    def check_plan(self, direction_file, targets) -> None:
        """Every dense writer the plan will edit has its read vector (experts are checked as they stream)."""
        if EMBED in targets:
            raise RosiError("rosi: target 'embed' has no read vector in a gated (format v2) direction; "
                            "use targets attn_out and mlp_out")
        dense = {key for key in direction_file.reads if ".expert." not in key}
        experts = {key.split(".expert.")[0] for key in direction_file.reads if ".expert." in key}
        needed = [read_key(layer, target) for layer in self.window(direction_file) for target in targets]
        missing = [key for key in needed if key not in dense and key not in experts]
        if missing:
            raise RosiError(f"rosi: gated direction has no read vector for {len(missing)} writer(s) in its window "
                            f"({', '.join('read.' + k for k in missing[:4])}); refusing a partial injection")

    def plan_fields(self, direction_file, alpha) -> dict:
        return {"reads": dict(direction_file.reads)}

    def read_vector(self, plan, name, hit) -> torch.Tensor:
        """h for the writer `name`; a writer in the window without one fails closed."""
        writer, layer, expert = hit
        key = read_key(layer, writer.target, expert)
        if key not in plan.reads:
            kind = ("a mixture-of-experts writer: gated mode needs a read vector for every expert"
                    if expert is not None else "a writer in the window without a read vector")
            raise RosiError(f"rosi: {name!r} is {kind} (no read.{key}); refusing a partial injection")
        return plan.reads[key]

    def describe(self, plan) -> str:
        return f" read=gated window={sorted(plan.window)}"
