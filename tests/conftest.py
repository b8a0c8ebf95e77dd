"""Shared fixtures: tiny checkpoints are built once per session and reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rosi_vllm.checkpoint import model_shape
from rosi_vllm.direction_file import DirectionFile, save_direction
from rosi_vllm.fingerprint import fingerprint_checkpoint
from rosi_vllm.tiny_models import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **kw) -> path; cached per (family, options) for the session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("tiny")

    def get(family: str = "llama", **kwargs) -> Path:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = family + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = build_tiny_model(family, root / name, **kwargs)
        return cache[key]

    return get


def random_vector(hidden: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, generator=gen)


def write_direction(model_dir: Path, out: Path, *, alpha: float = 8.0, layer: int = 1, seed: int = 1,
                    vector: torch.Tensor | None = None) -> Path:
    shape = model_shape(model_dir)
    vec = random_vector(shape.hidden_size, seed) if vector is None else vector
    return save_direction(
        out,
        DirectionFile(vec, shape.architecture, shape.hidden_size, shape.num_layers, layer, alpha,
                      fingerprint_checkpoint(model_dir), {"method": "test"}),
    )


@pytest.fixture
def direction_for(tmp_path):
    def make(model_dir: Path, **kwargs) -> Path:
        return write_direction(model_dir, tmp_path / f"dir-{len(list(tmp_path.iterdir()))}.safetensors", **kwargs)

    return make


DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def deploy_script(relative: str):
    """Import a script under deploy/ (scripts, not a package) by path, e.g. ``deploy_script("validate")``."""
    import importlib.util

    path = DEPLOY / f"{relative}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
