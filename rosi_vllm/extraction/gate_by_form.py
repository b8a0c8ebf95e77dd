"""The gate's AUROC per request form: whether a direction's gate separates harm from harmless requests asked
the same way, or keys on the way they are asked (`rosi eval --style-shift` with a gated or threshold file).

Refusal per form (`eval_extras`) says what the hardened model did; it mixes the gate with the push and with
what the unedited model already refused. The gate's read on the prompts themselves isolates the gate: per
prompt, the read (``h·a`` of a gated writer, ``g·x`` of a threshold neuron) averaged over the positions from
the instruction's last token to the end of the prompt (where the fit put harm) and over the window; then
`forms.auroc_by_form` per ``source:form`` set and per form pooled over sources. A form whose harmful prompts
score no higher than its own benign ones (AUROC near 0.5) is one the gate does not see.
"""

from __future__ import annotations

import math

import torch

from ..methods import method_of
from ..methods.gated.fit import gate_inputs as gated_inputs
from ..methods.threshold.fit import gate_inputs as threshold_inputs
from . import forms
from .writer_inputs import collect_inputs

#: method (its ``read``) → (writer, read vector) pairs of a file's gate; methods without a gate are absent
GATE_INPUTS = {"gated": gated_inputs, "threshold": threshold_inputs}


def has_gate(direction_file) -> bool:
    return method_of(direction_file).read in GATE_INPUTS


@torch.no_grad()
def gate_scores(loaded, direction_file, instructions: list[str], *, batch_size: int = 16) -> list[float]:
    """Per instruction: the gate's read at the instruction's end, averaged over those positions and the window."""
    pairs = GATE_INPUTS[method_of(direction_file).read](loaded, direction_file)
    inputs = collect_inputs(loaded, [w for w, _ in pairs], list(instructions), positions="instruction_end",
                            batch_size=batch_size, progress=False)
    n = len(instructions)
    counts = torch.bincount(inputs.prompt_index, minlength=n).clamp_min(1).double()
    total = torch.zeros(n, dtype=torch.float64)
    for writer, read in pairs:
        reads = inputs.by_writer[writer.key].double() @ read.double()
        total += torch.zeros(n, dtype=torch.float64).index_add_(0, inputs.prompt_index, reads) / counts
    return (total / len(pairs)).tolist()


def gate_auroc_by_form(model: str, direction: str, harmful, benign, *, loaded=None) -> dict | None:
    """``{"per_set": ..., "per_form": ...}`` (`forms.auroc_by_form`, NaN written as None) of `direction`'s gate
    on `harmful` and `benign` `forms.FormPrompt`s, read on the unedited checkpoint (the first window layer's
    read is exactly what the served model reads; a later layer's sees, when served, the earlier layers' edit
    too); None for a file without a gate. `loaded`: the unedited transformers model of `model` when the
    caller has it."""
    from ..core.direction_file import load_direction
    from .hf_model import load_hf_model

    direction_file = load_direction(direction)
    if not has_gate(direction_file) or not harmful or not benign:
        return None
    loaded = loaded if loaded is not None else load_hf_model(model)
    h = gate_scores(loaded, direction_file, [p.text for p in harmful])
    b = gate_scores(loaded, direction_file, [p.text for p in benign])
    out = {}
    for key, label in (("per_set", lambda p: p.name), ("per_form", lambda p: p.form)):
        table = forms.auroc_by_form(h, [label(p) for p in harmful], b, [label(p) for p in benign])
        out[key] = {name: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
                    for name, row in table.items()}
    return out
