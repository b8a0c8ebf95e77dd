"""Helpers the tests share (imported as ``tests.helpers``; fixtures stay in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import direction_for_checkpoint, save_direction

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

    from rosi_vllm.core.architectures import spec_for_architecture
    from rosi_vllm.core.checkpoint import safetensors_files
    from rosi_vllm.core.direction_file import read_key

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


def write_threshold_direction(model_dir: Path, out: Path, *, window=(1,), alpha: float = 4.0, index: int = 5,
                              threshold: float = 0.5, sharpness: float = 10.0, seed: int = 1,
                              scale: float = 1 / 8) -> Path:
    """A format-v3 (threshold) direction for `model_dir`: neuron `index` of every `window` layer, with seeded
    read and bias vectors (standard normal × `scale`)."""
    from rosi_vllm.core.direction_file import ThresholdNeuron

    shape = model_shape(model_dir)
    direction = direction_for_checkpoint(model_dir, random_vector(shape.hidden_size, seed), alpha=alpha,
                                         layer=max(window), method="test: threshold", shape=shape)
    gen = torch.Generator().manual_seed(seed + 10)
    direction.neurons = {layer: ThresholdNeuron(index, torch.randn(shape.hidden_size, generator=gen) * scale,
                                                torch.randn(shape.hidden_size, generator=gen) * scale)
                         for layer in window}
    direction.threshold, direction.sharpness = threshold, sharpness
    direction.fit = {"method": "test"}
    direction.gate = {str(layer): {"auroc": 0.5} for layer in window}
    return save_direction(out, direction)


def rewrite_direction_file(path: Path, tensors: dict | None = None, metadata: dict | None = None) -> Path:
    """Overwrite tensors and metadata of a saved direction file past its writer's checks (None deletes a key),
    to make the defects a reader must refuse."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        current = {k: f.get_tensor(k) for k in f.keys()}
    current.update(tensors or {})
    meta.update(metadata or {})
    save_file({k: v for k, v in current.items() if v is not None}, str(path),
              metadata={k: v for k, v in meta.items() if v is not None})
    return path


def plan_for(model_dir: Path, direction: Path, alpha: float, **kwargs):
    """The injection plan of `direction` on `model_dir` at `alpha`, fingerprint verified, as the loader builds it."""
    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan

    return build_plan(load_direction(direction), model_shape(model_dir),
                      checkpoint_fingerprint=fingerprint_checkpoint(model_dir), alpha=alpha, **kwargs)


def run_smoke_in_process(module: str, out_dir: Path) -> None:
    """``python -m <module> --smoke --out-dir <out_dir>``, in this process through the script's ``main([...])``:
    no fresh Python, torch and transformers import per smoke run. Global RNG state is restored afterwards."""
    import importlib

    script = importlib.import_module(module)
    with torch.random.fork_rng(devices=[]):
        assert script.main(["--smoke", "--out-dir", str(out_dir)]) == 0


def load_smoke_result(out_dir: Path, name: str) -> dict:
    """A smoke run's ``<name>.json`` after the checks every smoke result shares: a plot beside it, the command
    that reproduces it (with --smoke) and the machine it ran on."""
    import json

    data = json.loads((out_dir / f"{name}.json").read_text())
    assert (out_dir / f"{name}.png").stat().st_size > 1000
    assert data["command"].startswith("python") and "--smoke" in data["command"]
    assert data["machine"]["cpus"] >= 1
    return data
