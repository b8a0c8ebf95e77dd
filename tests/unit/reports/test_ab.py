"""`rosi ab report` statistics, on metrics text produced by the real metric definitions."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from rosi_vllm.core.errors import RosiError
from rosi_vllm.reports.ab import (
    ArmStats,
    bucket_quantile,
    build_report,
    compare_refusal,
    format_report,
    write_report,
)
from rosi_vllm.serving.metrics import RosiMetrics


def test_two_proportion_comparison():
    control = ArmStats("base", "base", judged=100, refusals=10)
    treatment = ArmStats("strict", "strict", judged=100, refusals=30)
    c = compare_refusal(control, treatment)
    assert c["difference"] == pytest.approx(0.2)
    # pooled p = 0.2, se = sqrt(0.2*0.8*0.02) = 0.0566, z = 3.536
    assert c["p_value"] == pytest.approx(math.erfc(0.2 / math.sqrt(0.2 * 0.8 * 0.02) / math.sqrt(2)))
    assert c["p_value"] == pytest.approx(4.07e-4, rel=0.01) and c["significant_at_0.05"]
    lo, hi = c["difference_ci95"]
    assert 0 < lo < 0.2 < hi < 0.4
    same = compare_refusal(control, ArmStats("b", "b", judged=100, refusals=11))
    assert not same["significant_at_0.05"] and same["difference_ci95"][0] < 0 < same["difference_ci95"][1]


def test_bucket_quantile_interpolates_like_histogram_quantile():
    assert bucket_quantile({0.1: 0, 0.2: 10, math.inf: 10}, 0.5) == pytest.approx(0.15)
    assert bucket_quantile({0.1: 5, 0.2: 10, math.inf: 10}, 0.5) == pytest.approx(0.1)
    assert bucket_quantile({}, 0.5) is None


def test_report_from_exported_metrics(tmp_path):
    registry = CollectorRegistry()
    m = RosiMetrics(registry)
    for arm, refused, latency in (("base", 5, 0.2), ("strict", 40, 0.2)):
        labels = ("beta", arm, "exp1", arm)
        for i in range(100):
            m.requests.labels(*labels, "chat", "200").inc()
            m.responses.labels(*labels).inc()
            if i < refused:
                m.refusals.labels(*labels).inc()
            m.e2e.labels(*labels).observe(latency)
            m.ttft.labels(*labels).observe(latency / 4)
            m.generated_tokens.labels(*labels).inc(10)
    m.requests.labels("acme", "standard", "", "none", "chat", "200").inc()  # other tenants are ignored
    report = build_report(generate_latest(registry).decode(), "beta", "exp1")
    assert report["control"] == "base"
    assert report["arms"]["base"]["refusal_rate"] == 0.05 and report["arms"]["strict"]["refusal_rate"] == 0.40
    comp = report["comparisons"][0]
    assert comp["difference"] == pytest.approx(0.35) and comp["significant_at_0.05"]
    assert comp["e2e_mean_ratio"] == pytest.approx(1.0) and comp["tokens_per_s_ratio"] == pytest.approx(1.0)
    assert report["arms"]["base"]["tokens_per_s"] == pytest.approx(1000 / 20.0)
    assert "strict - base: refusal +0.350" in format_report(report)
    json_path, png = write_report(report, tmp_path / "ab.json")
    assert json_path.exists() and png.stat().st_size > 1000
    with pytest.raises(RosiError, match="found 0 arm"):
        build_report(generate_latest(registry).decode(), "beta", "nope")
