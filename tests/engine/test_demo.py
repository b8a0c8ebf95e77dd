"""`rosi demo` end to end through its real entry point (one engine start), and Ctrl-C leaving nothing running.

The reduced run (one harmful and one benign prompt) checks what the demo
promises: both arms answered through their own tenant key and variant, the
printed counts agree with the per-prompt judgments and with the server's own
`rosi_*` counters, the intervals contain their rates, and the server's whole
process group is gone afterwards. The interrupt test stops the demo while its
engine is still loading (a partial start, not a second full one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.engine


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rosi_vllm.cli", "demo", *args]


def demo_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_reduced_demo_shows_both_arms_and_cleans_up(tmp_path):
    workdir = tmp_path / "demo"
    done = subprocess.run(demo_command("--prompts", "1", "--workdir", str(workdir)), cwd=tmp_path, env=demo_env(),
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "base answer" in out and "hardened answer" in out and "latency hardened/base" in out
    assert f"vLLM log {workdir / 'vllm.log'}" in out and f"demo folder {workdir}" in out
    assert "rosi_refusals_total" in out
    assert "Loading" not in out and "INFO" not in out  # vLLM's own log went to the file
    assert (workdir / "vllm.log").stat().st_size > 0

    result = json.loads((workdir / "demo.json").read_text())
    answers = result["answers"]
    assert len(answers) == 4 and {(a["set"], a["arm"]) for a in answers} == {
        (s, arm) for s in ("harmful", "benign") for arm in ("base", "hardened")}
    assert all(a["text"].strip() for a in answers)
    assert all(a["variant"] == result["tenants"][a["arm"]]["variant"] for a in answers)  # served by the arm's variant
    for arm, summary in result["arms"].items():
        for kind in result["prompt_sets"]:
            r = summary[f"{kind}_refusal"]
            mine = [a for a in answers if a["arm"] == arm and a["set"] == kind]
            assert (r["k"], r["n"]) == (sum(a["refused"] for a in mine), len(mine))
            assert r["ci95"][0] <= r["rate"] <= r["ci95"][1]
    assert result["latency_ratio_hardened_over_base"] > 0
    assert result["metrics_agree"] is True
    for tenant in ("demo-base", "demo-hardened"):
        assert any(line.startswith("rosi_refusals_total") and f'tenant="{tenant}"' in line
                   for line in result["metrics_lines"])
    assert result["direction"]["file"] == "directions/smollm2-135m-instruct-gated-wrapped.safetensors"  # portable paths
    assert result["server"]["log"] == "vllm.log"
    if "ROSI_CACHE" not in os.environ:  # models are cached under the home folder
        assert result["model_dir"] == "~/.cache/rosi-vllm/models/smollm2-135m-instruct"
    assert (workdir / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert group_gone(result["server"]["pgid"]), "the demo left its vLLM server running"


def test_ctrl_c_stops_the_server(tmp_path):
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(demo_command("--prompts", "1", "--workdir", str(workdir)), cwd=tmp_path, env=demo_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pgid = None
    try:
        deadline = time.monotonic() + 180
        while pgid is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if found := re.search(r"process group (\d+)", line):
                pgid = int(found.group(1))
        assert pgid is not None, "the demo never started its server"
        time.sleep(3)  # the engine is loading
        assert not group_gone(pgid)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "rosi: demo interrupted" in err
        assert group_gone(pgid), "Ctrl-C left the vLLM server running"
    finally:
        if proc.poll() is None:
            proc.kill()
        if pgid is not None and not group_gone(pgid):
            os.killpg(pgid, signal.SIGKILL)
