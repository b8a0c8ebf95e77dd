"""Helpers the tests share (imported as ``tests.helpers``; fixtures stay in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from rosi_vllm.checkpoint import model_shape
from rosi_vllm.direction_file import direction_for_checkpoint, save_direction

ROOT = Path(__file__).resolve().parents[1]


def random_vector(hidden: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, generator=gen)


def write_direction(model_dir: Path, out: Path, *, alpha: float = 8.0, layer: int = 1, seed: int = 1,
                    vector: torch.Tensor | None = None) -> Path:
    shape = model_shape(model_dir)
    vec = random_vector(shape.hidden_size, seed) if vector is None else vector
    return save_direction(out, direction_for_checkpoint(model_dir, vec, alpha=alpha, layer=layer, method="test",
                                                        shape=shape))


DEPLOY = ROOT / "deploy"


def deploy_script(relative: str):
    """Import a script under deploy/ (scripts, not a package) by path, e.g. ``deploy_script("validate")``."""
    import importlib.util

    path = DEPLOY / f"{relative}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
