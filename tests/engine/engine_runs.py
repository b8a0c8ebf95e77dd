"""Cases and engine runs the engine tests share: a direction of each kind with its formula reference, and the probe.

`build_case` writes a direction and an independent float64 reference checkpoint with the same
edit (tests/reference.py); `run_probe` runs tests/engine_probe.py, several single-worker engines
in one process (``jobs``) or one TP/PP engine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rosi_vllm.core.direction_file import load_direction
from tests.helpers import ROOT, write_direction, write_gated_direction, write_threshold_direction
from tests.reference import reference_inject_checkpoint, reference_transplant_checkpoint

ALPHA = 32.0
#: checkpoint tensor name of each gated read-vector key on the tiny Llama
LLAMA_WRITERS = {"attn_out": "model.layers.{}.self_attn.o_proj.weight", "mlp_out": "model.layers.{}.mlp.down_proj.weight"}


def build_case(model: Path, family: str, kind: str, work: Path) -> tuple[Path, Path]:
    """(direction file, reference checkpoint with the same edit written from the formula) for `kind` on `model`."""
    reference = work / "reference-checkpoint"
    if kind == "threshold":
        # reads of scale 1/16 cross t = 0.5 on some tokens and not others, so the threshold is exercised,
        # and keep the push in the range the v1 tests exercise (see the gated case below)
        direction = write_threshold_direction(model, work / "direction.safetensors", window=(0, 1), alpha=ALPHA,
                                              index=7, scale=1 / 16)
        d = load_direction(direction)
        reference_transplant_checkpoint(model, reference, {layer: (n.index, n.read, n.bias)
                                                           for layer, n in d.neurons.items()},
                                        d.direction, ALPHA, d.threshold, d.sharpness)
        return direction, reference
    reads = None
    if kind == "gated":
        # h at 1/64 keeps the edit in the range the v1 tests exercise: a random h at α = 32 and
        # larger saturates the tiny model, where bf16 TP reduction order alone moves logprobs by 5e-2
        direction = write_gated_direction(model, work / "direction.safetensors", window=(0, 1), alpha=ALPHA,
                                          scale=1 / 64)
        reads = {LLAMA_WRITERS[key.split(".")[1]].format(key.split(".")[0]): h
                 for key, h in load_direction(direction).reads.items()}
    else:
        direction = write_direction(model, work / "direction.safetensors", alpha=ALPHA)
    reference_inject_checkpoint(model, reference, family, 2, load_direction(direction).direction, ALPHA, reads)
    return direction, reference


def run_probe(out: Path, model: Path | None = None, *, jobs: dict | None = None, load_format="auto", extra=None,
              tp=1, pp=1, env=None, eager=False, expect_failure=False, lora=None):
    """One probe process: `jobs` (name → {model, load_format, extra, lora}) run in turn in it, or one engine."""
    cmd = [sys.executable, str(ROOT / "tests" / "engine_probe.py"), "--out", str(out), "--tp", str(tp),
           "--pp", str(pp)] + (["--eager"] if eager else [])
    if jobs is not None:
        jobs_file = out.with_suffix(".jobs.json")
        jobs_file.write_text(json.dumps({name: {k: str(v) if isinstance(v, Path) else v for k, v in job.items()}
                                         for name, job in jobs.items()}))
        cmd += ["--jobs", str(jobs_file)]
    else:
        cmd += ["--model", str(model), "--load-format", load_format] + (["--lora", str(lora)] if lora else [])
        cmd += ["--extra", json.dumps(extra)] if extra is not None else []
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=900)
    log = proc.stdout + proc.stderr
    if expect_failure:
        assert proc.returncode != 0, log[-4000:]
        return log
    assert proc.returncode == 0, log[-4000:]
    out.with_suffix(".log").write_text(log)
    return json.loads(out.read_text())


def job_logs(log: str) -> dict[str, str]:
    """The probe's log cut at its ``engine_probe: job NAME`` lines: what each engine logged."""
    parts, name = {}, None
    for line in log.splitlines():
        if line.startswith("engine_probe: job "):
            name = line.removeprefix("engine_probe: job ")
            parts[name] = ""
        elif name is not None:
            parts[name] += line + "\n"
    return parts


def max_prompt_logprob_diff(a: list[dict], b: list[dict]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        assert x["prompt_token_ids"] == y["prompt_token_ids"]
        for p, q in zip(x["prompt_logprobs"][1:], y["prompt_logprobs"][1:], strict=True):
            worst = max(worst, abs(p - q))
    return worst
