"""What every edit method provides, and the rules they share.

A method is one folder (`rosi_vllm/methods/<name>/`), like one of vLLM's model
loaders or one of PEFT's tuners: its file-format section (`format.py`: the keys
and tensors it adds to a direction file, and their checks), its edit of a
checkpoint's tensor stream and its LoRA-adapter form (`edit.py`), its settings
(`config.py`) and its fit (`fit.py`, extraction code: the only part that may
import `rosi_vllm.extraction`). `Method` gathers the first three for the core,
which looks a method up by a file's ``format_version`` or by its ``read`` kind
in the registry (`rosi_vllm.methods`) and never branches on the kind itself.

The defaults here are the mean read's (the paper's edit): no section, every
layer, every residual writer. A method overrides what it changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..core.architectures import DEFAULT_TARGETS, ArchitectureSpec
from ..core.errors import RosiError

if TYPE_CHECKING:
    from ..core.direction_file import DirectionFile
    from ..core.injection_plan import InjectionPlan


#: a layer's gate is good enough to edit only if its held-out AUROC reaches this (every fit's default)
MIN_AUROC = 0.9


@dataclass(frozen=True)
class SelectionConfig:
    """The selection settings every method's fit shares (validation split sizes, completion lengths, batch).

    Each method's `config.py` extends it; its defaults are the only defaults: the fit's keyword defaults and
    `rosi extract`'s flags and help text read them.
    """

    alphas: tuple[float, ...] | None = None  # None: the method's own grid (mean: selected around the model's scale)
    val_n: int = 60  # validation prompts per set, stage 2
    stage1_n: int = 24  # validation prompts per set, stage 1 grid
    stage1_tokens: int = 16  # completion length, stage 1
    max_new_tokens: int = 32  # completion length, stage 2
    finalists: int = 3  # candidates scored on the whole validation split with full-length completions
    budget_steps: int = 3  # bisection steps toward the largest α within the KL budget (0: the grid only)
    grow_steps: int = 0  # doublings of α past the grid while the whole grid is within the KL budget (0: none)
    #: fit and validate on goals and harmless requests in these forms, rotating, alternating with requests as
    #: people write them (`extraction.forms.fit_prompts`;
    #: empty: the splits' own phrasing, as every research run before forms existed)
    forms: tuple[str, ...] = ()
    batch_size: int = 32


class Method:
    #: the file's ``read`` metadata and `DirectionFile.read_kind`
    read: str = ""
    #: the file's ``format_version``: a file is one method's, never two
    format_version: str = ""
    #: prefix of the tensors this method's section adds to the file ("" for none)
    tensor_prefix: str = ""
    #: the metadata keys this method adds to the shared header
    metadata_keys: tuple[str, ...] = ()
    #: what those tensors are, in the error naming them in another method's file
    tensor_noun: str = ""
    #: prefixes of other methods' tensors this method's file reports among its stray keys rather than by their
    #: method's name (the v1 reader's wording, older than the newer sections it names)
    foreign_tensors_as_keys: tuple[str, ...] = ()

    # -- file format section ----------------------------------------------------------------
    def carried_by(self, direction_file: DirectionFile) -> bool:
        """Whether `direction_file` is this method's (its section is filled)."""
        raise NotImplementedError

    def digest(self, direction_file: DirectionFile, digest) -> None:
        """Feed the section into the file's content id (`DirectionFile.direction_id`, a sha256)."""

    def metadata(self, direction_file: DirectionFile) -> dict[str, str]:
        """The metadata this method adds to the shared header."""
        return {}

    def tensors(self, direction_file: DirectionFile, where: str) -> dict[str, torch.Tensor]:
        """The section's tensors, by file name, checked and as float32 on the CPU (`save_direction` writes them)."""
        return {}

    def load(self, meta: dict[str, str], sections: dict[str, dict[str, torch.Tensor]], *, hidden_size: int,
             num_layers: int, where: str) -> dict:
        """The `DirectionFile` fields of this method's section, from a file already checked up to its header.

        ``sections``: every method's tensors, by tensor prefix then name without it, so a method can refuse
        another's (`refuse_foreign_tensors`).
        """
        return {}

    # -- edit ------------------------------------------------------------------------------
    def default_targets(self, direction_file: DirectionFile) -> tuple[str, ...]:
        """The writers edited when the operator names none."""
        return DEFAULT_TARGETS

    def window(self, direction_file: DirectionFile) -> tuple[int, ...]:
        """The only layers edited; empty: every layer."""
        return ()

    def plan_targets(self, spec: ArchitectureSpec, targets: tuple[str, ...]) -> tuple[str, ...]:
        """The targets the plan matches in the checkpoint, from the operator's (validated) ones."""
        return targets

    def check_plan(self, direction_file: DirectionFile, targets: tuple[str, ...]) -> None:
        """Refuse what this method cannot edit (fail closed, before any weight is read)."""

    def plan_fields(self, direction_file: DirectionFile, alpha: float) -> dict:
        """The `InjectionPlan` fields this method fills (read vectors, transplants)."""
        return {}

    def edit(self, plan: InjectionPlan, name: str, tensor: torch.Tensor, hit: tuple) -> torch.Tensor:
        """`tensor` (the writer `name`, matched as ``hit``: writer, layer, expert) with the edit applied."""
        raise NotImplementedError

    def describe(self, plan: InjectionPlan) -> str:
        """What the load log adds after the direction id (the read and its window)."""
        return ""

    def inspect(self, direction_file: DirectionFile) -> dict:
        """What `rosi inspect` shows of the section: its read, and for a windowed method the window, targets,
        fit and gate statistics."""
        return {"read": self.read}

    # -- adapter form ----------------------------------------------------------------------
    def adapter_read(self, plan: InjectionPlan, name: str, hit: tuple, stored):
        """What the adapter of writer `name` needs from the base weights (``stored``: a safetensors slice),
        read once and reused for every α."""
        raise NotImplementedError

    def adapter_factors(self, plan: InjectionPlan, name: str, read,
                        baseline: InjectionPlan | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(lora_A [1, d_in], lora_B [d_out, 1]) of one matrix: the plan's edit minus the baseline's, float32."""
        raise NotImplementedError


def refuse_foreign_tensors(method: Method, others: list[Method], sections: dict[str, dict], where: str) -> None:
    """A file is one method's: tensors of another method's section are refused, by that method's name for them."""
    for other in others:
        found = (sections.get(other.tensor_prefix) if other is not method and other.tensor_prefix
                 and other.tensor_prefix not in method.foreign_tensors_as_keys else None)
        if found:
            raise RosiError(f"rosi: {where!r} is format_version {method.format_version} but carries version-"
                            f"{other.format_version} {other.tensor_noun} "
                            f"{sorted(other.tensor_prefix + k for k in found)[:4]}; a file is one version or another")


def float32_cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous().cpu()
