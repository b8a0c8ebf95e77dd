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


def gated_reads(model_dir: Path, window=(1,), targets=("attn_out", "mlp_out"), seed: int = 3,
                scale: float = 1 / 8) -> dict[str, torch.Tensor]:
    """Seeded read vectors (standard normal × `scale`) of the right length for every writer of `window`
    (experts included), by checkpoint shape."""
    from safetensors import safe_open

    from rosi_vllm.architectures import spec_for_architecture
    from rosi_vllm.checkpoint import safetensors_files
    from rosi_vllm.direction_file import read_key

    spec = spec_for_architecture(model_shape(model_dir).architecture)
    gen = torch.Generator().manual_seed(seed)
    reads = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            for name in sorted(f.keys()):
                for writer in spec.writers_for(tuple(targets)):
                    match = writer.matches(name)
                    if match and match.groupdict().get("layer") and int(match["layer"]) in window:
                        expert = match.groupdict().get("expert")
                        key = read_key(int(match["layer"]), writer.target, int(expert) if expert else None)
                        reads[key] = torch.randn(f.get_slice(name).get_shape()[1], generator=gen) * scale
    return reads


def write_gated_direction(model_dir: Path, out: Path, *, window=(1,), alpha: float = 4.0,
                          reads: dict[str, torch.Tensor] | None = None, seed: int = 1, scale: float = 1 / 8) -> Path:
    """A format-v2 (gated) direction for `model_dir`: a seeded direction and read vectors for `window`."""
    shape = model_shape(model_dir)
    direction = direction_for_checkpoint(model_dir, random_vector(shape.hidden_size, seed), alpha=alpha,
                                         layer=max(window), method="test: gated", shape=shape)
    direction.reads = gated_reads(model_dir, window, scale=scale) if reads is None else reads
    direction.fit = {"method": "test"}
    direction.gate = {key: {"auroc": 0.5} for key in direction.reads}
    return save_direction(out, direction)
