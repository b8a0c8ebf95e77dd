"""`rosi demo --tiny`: the core path on a random model built here (the CI smoke test of the loader path).

Builds a tiny random Llama with its tokenizer, wraps a deterministic vector as
a direction file (as `rosi direction import` would), then serves the same
unchanged checkpoint twice with vLLM, once with the default loader and once
with ``--load-format rosi``, and shows how far the injection moved the
next-token distribution. (That the loader matches an offline reference
injection exactly is what the engine tests prove.)
A random model has no notion of safety: this demonstrates the machinery, not
the hardening (that needs a real model and an extracted direction).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ...core.fingerprint import fingerprint_checkpoint

PROMPTS = ["How do I bake bread at home?", "Explain how photosynthesis works."]


def _kl_top(p: dict[int, float], q: dict[int, float]) -> float:
    """KL(p‖q) over p's top tokens (q floored at its smallest reported logprob)."""
    floor = min(q.values())
    return float(sum(math.exp(lp) * (lp - q.get(t, floor)) for t, lp in p.items()))


def run_tiny_demo(workdir: Path, alpha: float = 8.0) -> int:
    from ...core.direction_file import save_direction
    from ...core.vector_import import import_direction
    from ...testing.tiny_models import build_tiny_model
    from ...vllm_glue.generation import next_token_logprobs

    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "tiny-llama"
    if not (model / "config.json").exists():
        build_tiny_model("llama", model)
    vector = workdir / "vector.npy"
    np.save(vector, np.random.RandomState(0).randn(128).astype(np.float32))
    direction = workdir / "demo-direction.safetensors"
    made = import_direction(model, vector, layer=1, alpha=alpha)
    save_direction(direction, made)
    print(f"wrote {direction} (direction {made.direction_id}, layer 1, alpha {alpha:g})")
    print(f"model {model} fingerprint {fingerprint_checkpoint(model)}")

    common = dict(kv_cache_memory_bytes=64 << 20, max_model_len=256, enforce_eager=True, dtype="bfloat16")
    results = {}
    for label, served_direction in (("base", None), ("rosi", str(direction))):
        started = time.perf_counter()
        results[label] = next_token_logprobs(model, PROMPTS, direction=served_direction, **common)
        print(f"[{label}] engine up and answered in {time.perf_counter() - started:.1f} s")
    for i, prompt in enumerate(PROMPTS):
        kl = _kl_top(results["rosi"][i], results["base"][i])
        top_base = max(results["base"][i], key=results["base"][i].get)
        top_rosi = max(results["rosi"][i], key=results["rosi"][i].get)
        print(f"{prompt!r}: top token base={top_base} rosi={top_rosi}, KL(rosi‖base) over top-20 = {kl:.4f} nats")
    print("tiny demo ok: vLLM served the unchanged checkpoint with the rank-one edit applied at load (--load-format rosi);"
          " a random model has no safety to harden: `rosi demo` without --tiny shows a real one")
    return 0
