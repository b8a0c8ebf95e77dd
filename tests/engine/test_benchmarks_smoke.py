"""Every benchmark runs end to end in its smoke mode and writes JSON + PNG (numbers: benchmarks/README.md).

The research studies' smoke runs: tests/research/test_research_smoke.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_smoke_in_process
from tests.helpers import load_smoke_result as load

#: smoke runs keep vLLM's engine core in the benchmark's own process: one Python process fewer to start (and to
#: import vLLM and torch into) per engine, which is most of a tiny engine's start-up; what they assert is unchanged
SMOKE_ENV = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@pytest.fixture(scope="module")
def served_smokes(tmp_path_factory) -> dict[str, Path]:
    """The P1 and P3 smoke runs (each serves its engines in turn), started at once in processes of their own: a
    smoke run checks what the benchmark writes, not its timings, and the two overlap on the cores. module → its
    output folder."""
    runs = {}
    for module in ("p1_inference", "p3_adapters"):
        out = tmp_path_factory.mktemp(module)
        log = open(out / "smoke.log", "w")
        runs[module] = (out, log, subprocess.Popen(
            [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out-dir", str(out)], cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, env=SMOKE_ENV))
    for out, log, proc in runs.values():
        proc.wait(timeout=900)
        log.close()
    return {module: (out, proc.returncode, (out / "smoke.log").read_text()[-4000:])
            for module, (out, _, proc) in runs.items()}


def smoke_output(served_smokes, module: str) -> Path:
    out, returncode, log_tail = served_smokes[module]
    assert returncode == 0, log_tail
    return out


@pytest.mark.engine
def test_p1_inference_smoke(served_smokes):
    data = load(smoke_output(served_smokes, "p1_inference"), "p1_inference_smoke")
    for level in ("1", "4"):
        row = data["ratios_rosi_over_base"][level]
        assert all(v > 0 for v in row.values())
        for arm in ("base", "rosi"):
            assert data["rounds"][0][arm][level]["decode"]["failed"] == 0


@pytest.mark.engine
def test_p3_adapters_smoke(served_smokes):
    data = load(smoke_output(served_smokes, "p3_adapters"), "p3_adapters_smoke")
    assert set(data["throughput_ratio_vs_baked"]) == {"lora-default", "adapters x1", "adapters x4"}
    assert all(cell["failed"] == 0 for arm in data["arms"].values() for cell in arm.values())


def test_p2_load_time_smoke(tmp_path):
    run_smoke_in_process("benchmarks.p2_load_time", tmp_path)
    row = load(tmp_path, "p2_load_time_smoke")["in_process"][0]
    assert row["ratio_rosi_over_base"] > 0 and all(m > 0 for m in row["delta_math_s"])


def test_p5_tenant_layer_smoke(tmp_path):
    run_smoke_in_process("benchmarks.p5_tenant_layer", tmp_path)
    result = load(tmp_path, "p5_tenant_layer_smoke")
    data = result["in_process"]
    assert data["requests"] == 512 and data["overhead_p50_ms"] > 0
    multi = result["in_process_multiprocess_metrics"]  # a subprocess with prometheus-client in multiprocess mode
    assert multi["requests"] == 512 and multi["cpu_us_per_request"]["rosi"] > 0
    cpu = data["cpu_us_per_request"]  # the layer does strictly more than a do-nothing middleware
    assert cpu["rosi"] > cpu["passthrough"] > 0 and data["cpu_us_added"] == cpu["rosi"] - cpu["passthrough"]


def test_percentile_and_median_interpolate_like_numpy():
    from benchmarks._common import median, percentile

    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0.5) == median(values) == 2.5
    assert percentile(values, 0.99) == pytest.approx(3.97) and percentile(values, 0.0) == 1.0
    assert percentile([], 0.99) is None and median(iter([])) is None
