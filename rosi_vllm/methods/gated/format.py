"""Format v2's section: ``read: gated``, one float32 read vector per edited writer (tensor
``read.<layer>.<target>[.expert.<E>]``), and the window of layers that have them."""

from __future__ import annotations

import json

import torch

from ...core.direction_file import (
    GATED_FORMAT_VERSION,
    K_FIT,
    K_GATE,
    K_READ,
    K_WINDOW,
    READ_PREFIX,
    check_read,
    parse_read_key,
    read_key_layer,
)
from ...core.errors import RosiError
from ..base import Method, float32_cpu


class GatedFormat(Method):
    read = "gated"
    format_version = GATED_FORMAT_VERSION
    tensor_prefix = READ_PREFIX
    tensor_noun = "read vectors"
    metadata_keys = (K_READ, K_WINDOW, K_FIT, K_GATE)

    def carried_by(self, direction_file) -> bool:
        return bool(direction_file.reads)

    def window(self, direction_file) -> tuple[int, ...]:
        return tuple(sorted({read_key_layer(key) for key in direction_file.reads}))

    def digest(self, direction_file, digest) -> None:
        for key in sorted(direction_file.reads):
            digest.update(key.encode())
            digest.update(direction_file.reads[key].to(torch.float32).contiguous().numpy().tobytes())

    def metadata(self, direction_file) -> dict[str, str]:
        return {K_READ: self.read, K_WINDOW: json.dumps(list(self.window(direction_file))),
                K_FIT: json.dumps(direction_file.fit, sort_keys=True),
                K_GATE: json.dumps(direction_file.gate, sort_keys=True)}

    def inspect(self, direction_file) -> dict:
        return {"read": self.read, "window": list(self.window(direction_file)),
                "targets": list(direction_file.default_targets), "fit": direction_file.fit,
                "gate": direction_file.gate}

    def tensors(self, direction_file, where) -> dict[str, torch.Tensor]:
        tensors = {}
        for key, read in direction_file.reads.items():
            read = float32_cpu(read)
            check_read(key, read, where)
            tensors[READ_PREFIX + key] = direction_file.reads[key] = read
        return tensors

    def load(self, meta, sections, *, hidden_size, num_layers, where) -> dict:
        """v2 has read vectors, ``read: gated`` and a window that matches them."""
        reads = sections.get(READ_PREFIX, {})
        if meta.get(K_READ) != self.read:
            raise RosiError(f"rosi: {where!r} is format_version 2 but its read is {meta.get(K_READ)!r}, not 'gated'")
        if not reads:
            raise RosiError(f"rosi: {where!r} is format_version 2 (gated) but has no read vectors")
        for key, read in reads.items():
            parse_read_key(key, where, num_layers)
            check_read(key, read, where)
        try:
            window = json.loads(meta.get(K_WINDOW, "null"))
            fit, gate = json.loads(meta.get(K_FIT, "{}")), json.loads(meta.get(K_GATE, "{}"))
        except json.JSONDecodeError as exc:
            raise RosiError(f"rosi: {where!r} has malformed version-2 metadata ({exc})") from None
        layers_with_reads = sorted({read_key_layer(k) for k in reads})
        if window != layers_with_reads:
            raise RosiError(f"rosi: {where!r} declares window {window} but has read vectors for layers "
                            f"{layers_with_reads}")
        return {"reads": reads, "fit": fit, "gate": gate}
