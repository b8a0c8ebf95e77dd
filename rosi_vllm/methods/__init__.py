"""The edit methods, one folder each, and the registry that names them.

A direction file says which method it is by its ``format_version`` (and its ``read``);
the core looks the method up here and asks it for its file section, its edit of the
checkpoint stream and its adapter form, so no code outside a method's folder branches
on the kind. Adding a method: a folder like the three below, and one line in `METHODS`
(docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

from .base import Method, refuse_foreign_tensors
from .gated import METHOD as GATED
from .mean import METHOD as MEAN
from .threshold import METHOD as THRESHOLD

#: every method, asked in this order which one a `DirectionFile` is (`method_of`): the paper's mean read,
#: which has no section of its own, is last
METHODS: tuple[Method, ...] = (
    THRESHOLD,
    GATED,
    MEAN,
)
BY_VERSION: dict[str, Method] = {method.format_version: method for method in METHODS}
BY_READ: dict[str, Method] = {method.read: method for method in METHODS}
#: the format versions this rosi-vllm reads, oldest first
READABLE_VERSIONS: tuple[str, ...] = tuple(sorted(BY_VERSION, key=int))
__all__ = ["BY_READ", "BY_VERSION", "METHODS", "READABLE_VERSIONS", "Method", "method_of", "refuse_foreign_tensors"]


def method_of(direction_file) -> Method:
    """The method whose section `direction_file` carries."""
    return next(method for method in METHODS if method.carried_by(direction_file))
