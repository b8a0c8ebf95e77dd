"""Format v3's section: ``read: threshold``; per edited layer L the neuron given up (metadata ``neurons``,
``{"L": index}``) and two float32 ``[hidden_size]`` tensors ``neuron.<L>.read`` (g) and ``neuron.<L>.bias`` (u);
the threshold t and the sharpness c."""

from __future__ import annotations

import json
import math

import torch

from ...core.direction_file import (
    K_FIT,
    K_GATE,
    K_READ,
    K_WINDOW,
    THRESHOLD_FORMAT_VERSION,
    ThresholdNeuron,
)
from ...core.errors import RosiError
from ..base import Method, float32_cpu

NEURON_PREFIX = "neuron."
K_NEURONS = "neurons"  # layer → index of the transplanted MLP neuron
K_THRESHOLD = "threshold"  # t, in units of g·x (whose harmful median the fit sets to 1)
K_SHARPNESS = "sharpness"  # c, how closely act(c·z)/c follows ReLU(z)
PARTS = ("read", "bias")


class ThresholdFormat(Method):
    read = "threshold"
    format_version = THRESHOLD_FORMAT_VERSION
    tensor_prefix = NEURON_PREFIX
    tensor_noun = "neuron tensors"
    metadata_keys = (K_READ, K_WINDOW, K_NEURONS, K_THRESHOLD, K_SHARPNESS, K_FIT, K_GATE)

    def carried_by(self, direction_file) -> bool:
        return bool(direction_file.neurons)

    def window(self, direction_file) -> tuple[int, ...]:
        return tuple(sorted(direction_file.neurons))

    def digest(self, direction_file, digest) -> None:
        for layer in sorted(direction_file.neurons):
            neuron = direction_file.neurons[layer]
            digest.update(f"{layer}:{neuron.index}:{direction_file.threshold!r}:{direction_file.sharpness!r}".encode())
            for vector in (neuron.read, neuron.bias):
                digest.update(vector.to(torch.float32).contiguous().numpy().tobytes())

    def metadata(self, direction_file) -> dict[str, str]:
        return {K_READ: self.read, K_WINDOW: json.dumps(list(self.window(direction_file))),
                K_NEURONS: json.dumps({str(k): v.index for k, v in sorted(direction_file.neurons.items())}),
                K_THRESHOLD: repr(float(direction_file.threshold)), K_SHARPNESS: repr(float(direction_file.sharpness)),
                K_FIT: json.dumps(direction_file.fit, sort_keys=True),
                K_GATE: json.dumps(direction_file.gate, sort_keys=True)}

    def inspect(self, direction_file) -> dict:
        return {"read": self.read, "window": list(self.window(direction_file)),
                "targets": list(direction_file.default_targets), "fit": direction_file.fit,
                "gate": direction_file.gate,
                "neurons": {str(k): n.index for k, n in sorted(direction_file.neurons.items())},
                "threshold": direction_file.threshold, "sharpness": direction_file.sharpness}

    def tensors(self, direction_file, where) -> dict[str, torch.Tensor]:
        check_settings(direction_file.threshold, direction_file.sharpness, where)
        tensors = {}
        for layer, neuron in direction_file.neurons.items():
            for part, vector in (("read", neuron.read), ("bias", neuron.bias)):
                vector = float32_cpu(vector)
                check_neuron_vector(f"{layer}.{part}", vector, direction_file.hidden_size, where)
                tensors[f"{NEURON_PREFIX}{layer}.{part}"] = vector
        return tensors

    def load(self, meta, sections, *, hidden_size, num_layers, where) -> dict:
        """``read: threshold``, a neuron index per window layer, its read and bias vectors, t and c; nothing else."""
        neuron_tensors = sections.get(NEURON_PREFIX, {})
        if meta.get(K_READ) != self.read:
            raise RosiError(f"rosi: {where!r} is format_version 3 but its read is {meta.get(K_READ)!r}, "
                            "not 'threshold'")
        try:
            window = json.loads(meta.get(K_WINDOW, "null"))
            indices = json.loads(meta.get(K_NEURONS, "null"))
            fit, gate = json.loads(meta.get(K_FIT, "{}")), json.loads(meta.get(K_GATE, "{}"))
            threshold, sharpness = float(meta.get(K_THRESHOLD, "nan")), float(meta.get(K_SHARPNESS, "nan"))
        except (json.JSONDecodeError, ValueError) as exc:
            raise RosiError(f"rosi: {where!r} has malformed version-3 metadata ({exc})") from None
        if not isinstance(indices, dict) or not indices or not all(
                k.isdigit() and isinstance(v, int) and v >= 0 for k, v in indices.items()):
            raise RosiError(f"rosi: {where!r} is format_version 3 but its neurons metadata {indices!r} is not a "
                            'non-empty {"<layer>": <neuron index>} object')
        check_settings(threshold, sharpness, where)
        layers = sorted(int(k) for k in indices)
        if window != layers:
            raise RosiError(f"rosi: {where!r} declares window {window} but has neurons for layers {layers}")
        if layers[-1] >= num_layers:
            raise RosiError(f"rosi: {where!r} has a neuron for layer {layers[-1]}, but the model has "
                            f"{num_layers} layers")
        expected = {f"{layer}.{part}" for layer in layers for part in PARTS}
        if set(neuron_tensors) != expected:
            missing, extra = sorted(expected - set(neuron_tensors)), sorted(set(neuron_tensors) - expected)
            raise RosiError(f"rosi: {where!r} neuron tensors do not match its neurons metadata (missing "
                            f"{[NEURON_PREFIX + k for k in missing[:4]]}, unexpected "
                            f"{[NEURON_PREFIX + k for k in extra[:4]]})")
        for key, tensor in neuron_tensors.items():
            check_neuron_vector(key, tensor, hidden_size, where)
        neurons = {layer: ThresholdNeuron(indices[str(layer)], neuron_tensors[f"{layer}.read"],
                                          neuron_tensors[f"{layer}.bias"]) for layer in layers}
        return {"fit": fit, "gate": gate, "neurons": neurons, "threshold": threshold, "sharpness": sharpness}


def check_settings(threshold: float, sharpness: float, where: str) -> None:
    if not (math.isfinite(threshold) and math.isfinite(sharpness) and sharpness > 0):
        raise RosiError(f"rosi: {where!r} needs a finite threshold and a positive finite sharpness "
                        f"(got threshold={threshold!r}, sharpness={sharpness!r})")


def check_neuron_vector(key: str, vector: torch.Tensor, hidden_size: int, where: str) -> None:
    if vector.dtype != torch.float32 or vector.ndim != 1 or vector.shape[0] != hidden_size:
        raise RosiError(f"rosi: {where!r} neuron tensor {NEURON_PREFIX + key!r} must be float32 [{hidden_size}] "
                        f"(the MLP input), got {vector.dtype} {tuple(vector.shape)}")
    if not torch.isfinite(vector).all():
        raise RosiError(f"rosi: {where!r} neuron tensor {NEURON_PREFIX + key!r} contains NaN or inf")
