"""Argument types shared by the command groups."""

from __future__ import annotations


def targets(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


def floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def model_path(name_or_path: str) -> str:
    """A registered model name (pulled on demand) or a local checkpoint folder."""
    from ..tools.models import REGISTRY, pull

    return str(pull(name_or_path)) if name_or_path in REGISTRY else name_or_path
