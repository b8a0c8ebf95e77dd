"""`rosi harden` end to end on a tiny random Qwen2 of 3 layers (a shape no other test uses): two vLLM engines
(the base and hardened evaluations), everything else in-process with transformers, the smallest `--time-budget` scale.

A random model refuses nothing, so the targets are missed: the command must say so in its one verdict line
(exit status 1) and still write every file, not crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.core.fingerprint import fingerprint_checkpoint


@pytest.mark.engine
def test_harden_end_to_end_on_a_tiny_model(tiny_model, tmp_path):
    model = tiny_model("qwen2", layers=3)
    out = tmp_path / "tiny-hardened.safetensors"
    run = subprocess.run([sys.executable, "-m", "rosi_vllm.cli", "harden", str(model), "--out", str(out),
                          "--time-budget", "0.1"], capture_output=True, text=True, timeout=900,
                         env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})  # one process fewer per engine
    assert run.returncode == 1, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("rosi harden:")]
    assert len(lines) == 1 and "TARGETS MISSED" in lines[0], run.stdout[-2000:]
    direction = load_direction(out)
    assert direction.read_kind == "threshold" and direction.model_fingerprint == fingerprint_checkpoint(model)
    report_dir = tmp_path / "tiny-hardened"
    report = json.loads((report_dir / "harden.json").read_text())
    assert report["method"] == "threshold" and report["verdict"] == lines[0] and not report["targets_met"]
    assert list(report["stage_seconds"]) == ["probe", "write_direction", "base_eval", "edit", "hardened_eval"]
    assert set(report["dtype_timings"]) == {"float32", "bfloat16"} and report["scale"] < 1
    for name in ("base-eval.json", "hardened-eval.json", "eval.png", "write-direction.safetensors"):
        assert (report_dir / name).is_file(), name
    hardened = json.loads((report_dir / "hardened-eval.json").read_text())
    assert "benign_kl_nats" in hardened and "harmful_refusal" in hardened
    # XSTest (the shipped copy) by default, as many of each label as the other sets' limit; the gate per form
    limit = report["eval_options"]["limit"]
    assert report["eval_options"]["xstest"] == "shipped" and hardened["xstest_safe_refusal"]["n"] == limit
    assert "XSTest safe" in [c["name"] for c in report["checks"]]
    gate = hardened["gate_auroc_by_form"]["per_form"]
    assert {"question", "story_frame", "all"} <= set(gate) and gate["all"]["n_harmful"] > 0
    assert report["scale"] <= report["scale_planned"]
    # a random model refuses nothing, so a contrast would need the whole extraction split: the budget caps it
    capped = report["write"]["extension_capped_by_budget"]
    assert capped["answered"] < capped["needed"] and report["write"]["n"] == capped["answered"]
    card = out.with_suffix(".md").read_text()
    assert lines[0] in card and "vllm serve" in card and "rosi harden" in card
    # P4 (harden time) collects what the run recorded: one row per report, its stages as measured
    from benchmarks.p4_harden_time import main as p4

    assert p4(["--smoke", str(report_dir / "harden.json"), "--out-dir", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "p4_harden_time_smoke.json").read_text())["rows"][0]
    assert row["stage_seconds"] == report["stage_seconds"] and row["seconds"] == report["seconds"]
    assert (tmp_path / "p4_harden_time_smoke.png").stat().st_size > 1000
