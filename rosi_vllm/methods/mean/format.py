"""Format v1's section: none. A v1 file is the shared header and the direction, and nothing of another method."""

from __future__ import annotations

from ...core.direction_file import FORMAT_VERSION, READ_PREFIX
from ...core.errors import RosiError
from ..base import Method


class MeanFormat(Method):
    read = "mean"
    format_version = FORMAT_VERSION
    foreign_tensors_as_keys = (READ_PREFIX,)

    def carried_by(self, direction_file) -> bool:
        return True  # the registry asks it last: a file with no other method's section is the paper's

    def inspect(self, direction_file) -> dict:
        return {"read": "mean (w̄ of each weight)"}

    def load(self, meta, sections, *, hidden_size, num_layers, where) -> dict:
        stray = [prefix + key for prefix in self.foreign_tensors_as_keys for key in sorted(sections.get(prefix, {}))]
        from .. import METHODS

        stray += sorted({k for method in METHODS for k in method.metadata_keys if k in meta})
        if stray:
            raise RosiError(f"rosi: {where!r} is format_version 1 but carries version-2/3 keys {stray[:5]}; "
                            "a file is one version or another")
        return {}
