"""`vllm serve --load-format rosi` end to end, and every fail-closed case.

Every bad input goes through vLLM's real loader machinery in-process: the rosi
loader is built from a `LoadConfig` as vLLM builds it and asked for its weight
stream with a real `ModelConfig`; the test asserts the one `rosi:` error and at
which stage it comes (loader config, plan, or the checkpoint stream).

A bad input can fail at three stages, all of them inside vLLM's worker process
(the loader is built there: a served run's log shows each stage's error from the
worker), so `vllm serve` meets every refusal the same way. The real server is
started as an operator would start it for the first and the last stage (the loader
config, and the checkpoint stream after weights began to flow): the process exits
non-zero, prints the one-line `rosi:` error, and never answered /health in between
(polled every 0.5 s). Every case's stage is checked in-process; one `vllm serve`
per case would cost tens of seconds each for no additional path through vLLM.
"""

from __future__ import annotations

import shutil
import time

import pytest
import requests
import torch
from safetensors.torch import load_file, save_file

from rosi_vllm.core.checkpoint import model_shape
from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.testing.serve_process import start_server, wait_until
from tests.helpers import (
    gated_reads,
    rewrite_direction_file,
    write_direction,
    write_gated_direction,
    write_threshold_direction,
)

pytestmark = pytest.mark.engine


def test_serve_answers_completion_with_hardened_model(engines, tmp_path):
    """`vllm serve --load-format rosi` answers what the offline reference checkpoint answers in the engine."""
    from transformers import AutoTokenizer

    from tests.engine_probe import PROMPTS

    case = engines["cases"]["llama-v1"]
    model = case["model"]
    server = start_server(model, tmp_path / "serve.log", extra={"direction": str(case["direction"])})
    try:
        came_up, _ = wait_until(server)
        assert came_up, server.log()[-4000:]
        resp = requests.post(
            server.url + "/v1/completions",
            json={"model": str(model), "prompt": PROMPTS[0], "max_tokens": 8, "temperature": 0},
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        text = resp.json()["choices"][0]["text"]
        # the same greedy request through the offline reference checkpoint, in the engine (tests/engine/conftest.py)
        expected_ids = engines["outputs"]["llama-v1-reference"][0]["token_ids"]
        assert text == AutoTokenizer.from_pretrained(str(model)).decode(expected_ids)
        assert "rosi: direction=" in server.log()
    finally:
        server.stop()


def _bad_file(model, tmp, **kw):
    return {"direction": str(write_direction(model, tmp / "d.safetensors", **kw))}


def _raw_direction(model, tmp, vector, **meta):
    shape = model_shape(model)
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint

    metadata = {
        "format": "rosi-direction", "format_version": "1", "architecture": shape.architecture,
        "hidden_size": str(vector.shape[0]), "num_layers": str(shape.num_layers), "layer": "1",
        "recommended_alpha": "8.0", "model_fingerprint": fingerprint_checkpoint(model), **meta,
    }
    path = tmp / "raw.safetensors"
    save_file({"direction": vector}, str(path), metadata=metadata)
    return {"direction": str(path)}


def _corrupt(model, tmp):
    path = tmp / "corrupt.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    return {"direction": str(path)}


def _fine_tuned_model(model, tmp):
    """A copy of `model` with one matrix nudged, as a fine-tune would; served with the original's direction."""
    direction = write_direction(model, tmp / "d.safetensors")
    tuned = tmp / "tuned"
    shutil.copytree(model, tuned)
    tensors = load_file(str(tuned / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    tensors[name] = (tensors[name].float() * 1.01).to(tensors[name].dtype)
    save_file(tensors, str(tuned / "model.safetensors"), metadata={"format": "pt"})
    return tuned, {"direction": str(direction)}


def _gated(model, tmp, drop=None, shorten=None):
    """A format-v2 direction for layers 0 and 1 with one read vector removed or cut short."""
    reads = gated_reads(model, (0, 1))
    if drop:
        del reads[drop]
    if shorten:
        reads[shorten] = reads[shorten][:-5]
    return {"direction": str(write_gated_direction(model, tmp / "gated.safetensors", window=(0, 1), reads=reads))}


def _threshold_nan(model, tmp):
    """A format-v3 direction whose layer-1 read vector holds a NaN (written past the writer's own check)."""
    path = write_threshold_direction(model, tmp / "t.safetensors")
    read = load_direction(path).neurons[1].read.clone()
    read[3] = float("nan")
    return {"direction": str(rewrite_direction_file(path, {"neuron.1.read": read}))}


CASES = {
    "missing-file": (lambda m, t: {"direction": str(t / "nope.safetensors")}, "not found"),
    "corrupt-file": (_corrupt, "is not a valid safetensors direction file"),
    "wrong-format-version": (lambda m, t: _raw_direction(m, t, torch.randn(128), format_version="4"), "format_version '4'"),
    "gated-writer-without-read-vector": (lambda m, t: _gated(m, t, drop="1.attn_out"), "no read vector for 1 writer"),
    "gated-read-vector-wrong-length": (lambda m, t: _gated(m, t, shorten="1.mlp_out"), "the writer's input has"),
    "threshold-neuron-outside-the-mlp": (lambda m, t: {"direction": str(write_threshold_direction(
        m, t / "t.safetensors", index=10_000))}, "neuron 10000 is outside"),
    "threshold-on-attention": (lambda m, t: {"direction": str(write_threshold_direction(m, t / "t.safetensors")),
                                             "targets": ["attn_out"]}, "edits the MLP (targets ['mlp_out'])"),
    "threshold-nan-read": (lambda m, t: _threshold_nan(m, t), "contains NaN or inf"),
    "nan-direction": (lambda m, t: _raw_direction(m, t, torch.full((128,), float("nan"))), "NaN or inf"),
    "zero-norm": (lambda m, t: _raw_direction(m, t, torch.zeros(128)), "zero norm"),
    "wrong-hidden-size": (lambda m, t: _raw_direction(m, t, torch.randn(64)), "direction has hidden_size 64, the model has 128"),
    "fingerprint-mismatch": (_fine_tuned_model, "model fingerprint mismatch"),
    "unknown-target": (lambda m, t: {**_bad_file(m, t), "targets": ["o_proj"]}, "unknown target(s) ['o_proj']"),
    "negative-alpha": (lambda m, t: {**_bad_file(m, t), "alpha": -4}, "alpha=-4.0 is negative"),
    "unknown-key": (lambda m, t: {**_bad_file(m, t), "alhpa": 4}, "unknown model-loader-extra-config key(s) ['alhpa']"),
    "tied-embedding": (lambda m, t: {**_bad_file(m, t), "targets": ["embed"]}, "would also edit the lm_head"),
    "unsupported-architecture": (lambda m, t: _bad_file(m, t), "architecture 'OPTForCausalLM' has no residual-writer"),
}


#: The stage of each case the loader refuses (`_refusal_stage`), for every stage; the first and the last are served.
STAGE_CASES = {"config": "unknown-key", "plan": "fingerprint-mismatch", "stream": "gated-read-vector-wrong-length"}
SERVED_CASES = {stage: STAGE_CASES[stage] for stage in ("config", "stream")}


def _case_inputs(case, tiny_model, tmp_path):
    build, message = CASES[case]
    family = {"unsupported-architecture": "opt"}.get(case, "llama")
    model = tiny_model(family, tie_word_embeddings=True) if case == "tied-embedding" else tiny_model(family)
    extra = build(model, tmp_path)
    if isinstance(extra, tuple):
        model, extra = extra
    return model, extra, message


def _refusal_stage(model, extra) -> tuple[str, str]:
    """Drive the rosi loader as vLLM's worker does; return (stage, message) of its refusal."""
    from torch import nn
    from vllm.config import ModelConfig
    from vllm.config.load import LoadConfig

    from rosi_vllm.core.errors import RosiError
    from rosi_vllm.vllm_glue.loader import LOAD_FORMAT, RosiModelLoader

    load_config = LoadConfig(load_format=LOAD_FORMAT, model_loader_extra_config=extra)
    try:
        loader = RosiModelLoader(load_config)
    except RosiError as exc:
        return "config", str(exc)
    model_config = ModelConfig(model=str(model), dtype="bfloat16", max_model_len=256)
    try:
        loader._plan = loader._build_plan(model_config)
    except RosiError as exc:
        return "plan", str(exc)
    try:
        for _ in loader.get_all_weights(model_config, nn.Module()):
            pass
    except RosiError as exc:
        return "stream", str(exc)
    return "loaded", ""


@pytest.mark.parametrize("case", sorted(CASES))
def test_loader_refuses(case, tiny_model, tmp_path):
    model, extra, message = _case_inputs(case, tiny_model, tmp_path)
    stage, error = _refusal_stage(model, extra)
    assert stage != "loaded", f"the loader accepted {case}"
    assert error.startswith("rosi: ") and message in error, error
    assert "\n" not in error, "one line"
    if case in STAGE_CASES.values():
        assert STAGE_CASES[stage] == case, f"{case} now fails at stage {stage}: pick another case for that stage"


@pytest.fixture(scope="module")
def served_refusals(tiny_model, tmp_path_factory):
    """One `vllm serve` per served case, all started at once (each fails at load; most of a start is Python
    imports, which overlap on the two cores), waited for together: case → (came_up, exited, returncode, log)."""
    started = {}
    for case in sorted(SERVED_CASES.values()):
        work = tmp_path_factory.mktemp(case)
        model, extra, message = _case_inputs(case, tiny_model, work)
        started[case] = (start_server(model, work / "serve.log", extra=extra), message)
    outcomes, pending, deadline = {}, dict(started), time.monotonic() + 300
    try:
        while pending and time.monotonic() < deadline:  # every server polled every 0.5 s, as `wait_until` does
            for case, (server, message) in list(pending.items()):
                if server.healthy() or server.proc.poll() is not None:
                    outcomes[case] = (server.healthy(), server.proc.poll() is not None, server.proc.returncode,
                                      message)
                    del pending[case]
            time.sleep(0.5)
        for case, (server, message) in pending.items():
            outcomes[case] = (False, False, None, message)
    finally:
        for server, _ in started.values():
            server.stop()
    return {case: (*outcomes[case][:3], server.log(), outcomes[case][3]) for case, (server, _) in started.items()}


@pytest.mark.parametrize("case", sorted(SERVED_CASES.values()))
def test_serve_fails_closed(case, served_refusals):
    came_up, exited, returncode, log, message = served_refusals[case]
    assert not came_up, f"server came up despite {case}"
    assert exited and returncode != 0
    error_lines = [line for line in log.splitlines() if "rosi: " in line and message in line]
    assert error_lines, f"expected a line with {message!r}; log tail:\n{log[-3000:]}"
