"""Models and directions for the benchmarks: the embedded model when pulled, tiny ones for smoke runs."""

from __future__ import annotations

from pathlib import Path

import torch


def resolve_model(name: str, work: Path) -> Path:
    """A registered model name (pulled if needed), a folder, or ``tiny`` (random Llama, for smoke runs)."""
    if name == "tiny":
        from rosi_vllm.testing.tiny_models import build_tiny_model

        out = work / "tiny-llama"
        return out if (out / "config.json").exists() else build_tiny_model("llama", out)
    if Path(name).is_dir():
        return Path(name)
    from rosi_vllm.tools.models import pull

    return Path(pull(name))


def direction_for(model: Path, work: Path, shipped: str | None = None, alpha: float = 8.0) -> tuple[Path, str]:
    """The shipped direction for `model` if given, else a seeded random unit direction.

    For speed and memory the direction's values are irrelevant (same tensors, same
    shapes); the result records which one was used.
    """
    if shipped and Path(shipped).exists():
        return Path(shipped), f"shipped {shipped}"
    from rosi_vllm.core.checkpoint import model_shape
    from rosi_vllm.core.direction_file import direction_for_checkpoint, save_direction

    shape = model_shape(model)
    vector = torch.randn(shape.hidden_size, generator=torch.Generator().manual_seed(0))
    out = work / f"{model.name}-random-direction.safetensors"
    save_direction(out, direction_for_checkpoint(model, vector, alpha=alpha, shape=shape,
                                                 method="benchmark: seeded random unit vector"))
    return out, "random unit vector (seed 0)"


def unique_prompts(n: int, words: int, tag: str) -> list[str]:
    """Distinct prompts (no prefix-cache hits between requests) of about `words` words."""
    body = " ".join(f"word{i % 97}" for i in range(words))
    return [f"{tag} request {i}: {body}" for i in range(n)]


#: the API key of the one benchmark tenant (`served_tenant_config`)
BENCH_KEY = "sk-bench-key"


def served_tenant_config(path: Path, judge_sample_rate: float | None = None) -> Path:
    """A tenant file with one tenant (key `BENCH_KEY`) on the baked variant: the tenant layer's served arm.

    `judge_sample_rate` None leaves the key out (its default: every response judged), so the file also
    serves a baseline tree from before the key existed.
    """
    import yaml

    from rosi_vllm.serving.tenant_config import key_digest

    spec = {"version": 1, "policies": {"raw_completions": "allow"}, "variants": {"standard": "baked"},
            "tenants": {"t": {"api_key_sha256": [key_digest(BENCH_KEY)], "default_variant": "standard"}}}
    if judge_sample_rate is not None:
        spec["judge_sample_rate"] = judge_sample_rate
    path.write_text(yaml.safe_dump(spec))
    return path
