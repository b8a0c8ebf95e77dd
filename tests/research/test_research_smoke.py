"""Every research study runs end to end in its smoke mode and writes JSON (+ PNG) (the studies: research/README.md).

A study without an engine runs in this process, through its ``main([...])``: no fresh Python, torch and transformers
import per study. Global RNG state is restored after each (a study may seed torch's). The safety sweep serves the
model with vLLM (``rosi eval``), so it keeps a process of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_smoke_in_process
from tests.helpers import load_smoke_result as load

#: the sweep keeps vLLM's engine core in its own process: one Python process fewer to start per engine
SMOKE_ENV = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


def run_smoke(module: str, out_dir: Path) -> None:
    run_smoke_in_process(f"research.{module}", out_dir)


def run_smoke_process(module: str, out_dir: Path) -> None:
    done = subprocess.run([sys.executable, "-m", f"research.{module}", "--smoke", "--out-dir", str(out_dir)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=SMOKE_ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_validation_kl_bounds_smoke(tmp_path):
    run_smoke("validation_kl_bounds", tmp_path)
    rows = load(tmp_path, "validation_kl_bounds_smoke")["rows"]
    assert [r["alpha"] for r in rows] == [2.0, 8.0] and all(r["kl_upper"] >= r["kl"] >= 0 for r in rows)


def test_safety_sweep_smoke(tmp_path):
    run_smoke_process("safety_sweep", tmp_path)
    rows = load(tmp_path, "safety_sweep_smoke")["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 8.0] and rows[0]["benign_kl_nats"] == 0.0


def test_steering_alternative_smoke(tmp_path):
    run_smoke("steering_alternative", tmp_path)
    data = load(tmp_path, "steering_alternative_smoke")
    assert data["token_agreement"] > 0.9  # hook and baked weights are the same math


def test_validation_alphas_smoke(tmp_path):
    run_smoke("validation_alphas", tmp_path)
    result = load(tmp_path, "validation_alphas_smoke")
    rows = result["candidates"]
    assert [r["alpha"] for r in rows] == [2.0, 8.0] and result["best"]["alpha"] in (2.0, 8.0)
    assert all(0 <= r["harmful_refusal"] <= 1 and r["kl_upper"] >= r["kl"] >= 0 for r in rows)
    assert rows[0]["jailbreak_success"] is not None  # the wrapped validation goals were attacked


def test_gate_fit_time_smoke(tmp_path):
    run_smoke("gate_fit_time", tmp_path)
    data = json.loads((tmp_path / "gate_fit_time_smoke.json").read_text())
    for name in ("float64_full", "randomized", "benign_top_space"):
        assert data[name]["top_space_seconds"] > 0 and data[name]["held_out_auroc"] > 0.99
        assert data[name]["principal_cosines_vs_float64"]["p05"] > 0.99  # the same space, three ways


def test_gated_extraction_time_smoke(tmp_path):
    run_smoke("gated_extraction_time", tmp_path)
    data = load(tmp_path, "gated_extraction_time_smoke")
    assert [run["dtype"] for run in data["runs"]] == ["float32", "bfloat16"]
    for run in data["runs"]:
        assert {"load_and_collect", "fit", "select_kl_screen", "select_stage2"} <= set(run["stage_seconds"])
        assert run["seconds"] >= sum(run["stage_seconds"].values()) - 1
        assert 1 <= run["candidates_generated"] <= run["candidates"] and run["selected"]["alpha"] == 2.0


def test_jailbreak_gate_smoke(tmp_path):
    run_smoke("jailbreak_gate", tmp_path)
    result = load(tmp_path, "jailbreak_gate_smoke")
    from rosi_vllm.extraction.prompts import JAILBREAK_TEMPLATES, PREFILL_ATTACKS

    assert set(result["sets"]) == {"plain", "benign", *JAILBREAK_TEMPLATES, *PREFILL_ATTACKS}
    assert result["goals_split"] == "validation"
    for name, row in result["sets"].items():
        assert len(row["gate"]) == row["n"] == 3 and 0 <= row["refused_edited"] <= row["n"]
        assert abs(row["mean_gate"] - sum(row["gate"]) / row["n"]) < 1e-9
        assert row["prefill"] == PREFILL_ATTACKS.get(name, "")
        assert all(text.startswith(row["prefill"]) for text in row["edited_openings"])  # judged with the prefill
    assert [row["alpha"] for row in result["frontier"]] == [1.0, 4.0]
    for row in result["frontier"]:
        assert row["kl_upper"] >= row["kl"] >= 0 and set(row["refused"]) == set(result["sets"])
        assert all(0 <= row["refused"][name] <= result["sets"][name]["n"] for name in row["refused"])


def test_threshold_gate_smoke(tmp_path):
    from rosi_vllm.extraction.prompts import FIT_WRAPPER_TEMPLATES, JAILBREAK_TEMPLATES, PREFILL_ATTACKS

    run_smoke("threshold_gate", tmp_path)
    result = load(tmp_path, "threshold_gate_smoke")
    assert result["layers"] == [0, 1] and set(result["gates"]) == {"0", "1"}
    assert [row["variant"] for row in result["variants"]] == [
        "unedited", "linear gate α=2 (shipped file)", "threshold L0,1 α=4 t=0.5",
        "threshold L0,1 α=4 t=0.5 + linear gate α=1"]
    unedited, *edited = result["variants"]
    assert unedited["kl"] == 0
    for row in edited:
        assert row["kl_upper"] >= row["kl"] >= 0 and row["jailbreak_success"]["n"] == len(JAILBREAK_TEMPLATES)
    assert edited[1]["kl"] != edited[2]["kl"]  # the linear gate was added
    assert result["chosen"] in (None, *(row["variant"] for row in edited[1:]))
    assert all(isinstance(row["feasible"], bool) for row in result["variants"])
    sizes = {"harmful": 3, "benign": 3, "borderline": 3, "wrapped": len(FIT_WRAPPER_TEMPLATES),
             **{f"jailbreak_{name}": 1 for name in JAILBREAK_TEMPLATES}, **dict.fromkeys(PREFILL_ATTACKS, 1)}
    for row in result["variants"]:
        assert {name: cell["n"] for name, cell in row["refused"].items()} == sizes
        assert all(0 <= cell["k"] <= cell["n"] for cell in row["refused"].values())


def test_extraction_time_smoke(tmp_path):
    run_smoke("extraction_time", tmp_path)
    rows = load(tmp_path, "extraction_time_smoke")["rows"]
    assert [r["n_pairs"] for r in rows] == [4, 8]


def test_generation_batch_cost_smoke(tmp_path):
    run_smoke("generation_batch_cost", tmp_path)
    rows = load(tmp_path, "generation_batch_cost_smoke")["rows"]
    assert [r["batch"] for r in rows] == [1, 4, 8]
    one, eight = rows[0], rows[-1]
    # the cost model reproduces the two batches it is built from; where noise (a busy machine) made the batch of
    # eight cost less a step than the batch of one, the marginal cost is clamped at 0 and the model errs long
    assert abs(one["model_seconds_per_step"] - one["seconds_per_step"]) < 1e-3
    if eight["seconds_per_step"] >= one["seconds_per_step"]:
        assert abs(eight["model_seconds_per_step"] - eight["seconds_per_step"]) < 1e-3
    else:
        assert eight["model_seconds_per_step"] == pytest.approx(one["seconds_per_step"], abs=1e-3)
    steps = [r["model_seconds_per_step"] for r in rows]
    assert steps == sorted(steps)  # a larger batch never costs less a step
