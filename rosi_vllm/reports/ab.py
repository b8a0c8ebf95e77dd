"""``rosi ab report``: per-arm refusal and latency of an A/B experiment, from the server's metrics.

Reads the Prometheus text the server exports (a ``/metrics`` URL or a saved
file; counters are cumulative since the server started, and every series of
an experiment carries its ``experiment`` label). With several API-server
processes or replicas, point it at a Prometheus-federated dump or sum the
scrapes first: counts simply add.

Statistics: Wilson 95 % intervals per arm; the difference of refusal rates
(treatment − control) with Newcombe's hybrid-score 95 % interval and a pooled
two-proportion z-test p-value; latency means from histogram sums and medians
interpolated inside histogram buckets (as PromQL's ``histogram_quantile``), so
medians are bucket-resolution estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import RosiError
from ..core.stats import wilson_interval
from .plots import figure, write_json_and_plot


@dataclass
class ArmStats:
    arm: str
    variant: str
    requests: float = 0
    judged: float = 0
    refusals: float = 0
    tokens: float = 0
    e2e_sum: float = 0
    e2e_count: float = 0
    ttft_sum: float = 0
    ttft_count: float = 0
    e2e_buckets: dict[float, float] = field(default_factory=dict)
    ttft_buckets: dict[float, float] = field(default_factory=dict)

    @property
    def refusal_rate(self) -> float:
        return self.refusals / self.judged if self.judged else 0.0

    def summary(self) -> dict:
        lo, hi = wilson_interval(int(self.refusals), int(self.judged))
        return {
            "arm": self.arm, "variant": self.variant, "requests": self.requests, "judged": self.judged,
            "refusals": self.refusals, "refusal_rate": self.refusal_rate, "refusal_ci95": [lo, hi],
            "ttft_mean_s": _div(self.ttft_sum, self.ttft_count), "ttft_p50_s": bucket_quantile(self.ttft_buckets, 0.5),
            "e2e_mean_s": _div(self.e2e_sum, self.e2e_count), "e2e_p50_s": bucket_quantile(self.e2e_buckets, 0.5),
            "tokens_per_s": _div(self.tokens, self.e2e_sum),
        }


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Quantile from cumulative histogram buckets {upper bound: count}, linear inside a bucket."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank, prev_bound, prev_count = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            inside = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / inside if inside else 0.0)
        prev_bound, prev_count = bound, count
    return prev_bound


def read_metrics_text(source: str) -> str:
    if source.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(source, timeout=30) as response:  # noqa: S310 (operator-given URL)
            return response.read().decode("utf-8")
    return Path(source).read_text(encoding="utf-8")


#: exported sample name → ArmStats field it adds to
_COUNTER_FIELDS = {
    "rosi_requests_total": "requests", "rosi_judged_responses_total": "judged", "rosi_refusals_total": "refusals",
    "rosi_generated_tokens_total": "tokens", "rosi_e2e_seconds_sum": "e2e_sum", "rosi_e2e_seconds_count": "e2e_count",
    "rosi_ttft_seconds_sum": "ttft_sum", "rosi_ttft_seconds_count": "ttft_count",
}
_BUCKET_FIELDS = {"rosi_e2e_seconds_bucket": "e2e_buckets", "rosi_ttft_seconds_bucket": "ttft_buckets"}


def collect_arms(metrics_text: str, tenant: str, experiment: str) -> dict[str, ArmStats]:
    from prometheus_client.parser import text_string_to_metric_families

    arms: dict[str, ArmStats] = {}
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            labels = s.labels
            if labels.get("tenant") != tenant or labels.get("experiment") != experiment:
                continue
            arm = arms.setdefault(labels["arm"], ArmStats(labels["arm"], labels.get("variant", labels["arm"])))
            if s.name in _COUNTER_FIELDS:
                field_name = _COUNTER_FIELDS[s.name]
                setattr(arm, field_name, getattr(arm, field_name) + s.value)
            elif s.name in _BUCKET_FIELDS:
                buckets = getattr(arm, _BUCKET_FIELDS[s.name])
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
    return arms


def compare_refusal(control: ArmStats, treatment: ArmStats) -> dict:
    """Difference treatment − control: Newcombe hybrid-score interval and two-sided z-test p-value."""
    n1, n2 = int(control.judged), int(treatment.judged)
    k1, k2 = int(control.refusals), int(treatment.refusals)
    p1, p2 = control.refusal_rate, treatment.refusal_rate
    l1, u1 = wilson_interval(k1, n1)
    l2, u2 = wilson_interval(k2, n2)
    diff = p2 - p1
    lo = diff - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2)
    hi = diff + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
    p_value = None
    if n1 and n2:
        pooled = (k1 + k2) / (n1 + n2)
        se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
        p_value = 1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return {"control": control.arm, "treatment": treatment.arm, "difference": diff, "difference_ci95": [lo, hi],
            "p_value": p_value, "significant_at_0.05": p_value is not None and p_value < 0.05}


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def build_report(metrics_text: str, tenant: str, experiment: str, control: str | None = None) -> dict:
    arms = collect_arms(metrics_text, tenant, experiment)
    if len(arms) < 2:
        raise RosiError(f"rosi: found {len(arms)} arm(s) of experiment {experiment!r} for tenant {tenant!r} in the "
                        "metrics; is the experiment configured and has it served traffic?")
    control_name = control or ("base" if "base" in arms else sorted(arms)[0])
    if control_name not in arms:
        raise RosiError(f"rosi: control arm {control_name!r} not among {sorted(arms)}")
    base = arms[control_name]
    summaries = {name: arm.summary() for name, arm in sorted(arms.items())}
    comparisons = []
    for name, arm in sorted(arms.items()):
        if name == control_name:
            continue
        s, c = summaries[name], summaries[control_name]
        comparisons.append({
            **compare_refusal(base, arm),
            "ttft_mean_ratio": _ratio(s["ttft_mean_s"], c["ttft_mean_s"]),
            "e2e_mean_ratio": _ratio(s["e2e_mean_s"], c["e2e_mean_s"]),
            "e2e_p50_ratio": _ratio(s["e2e_p50_s"], c["e2e_p50_s"]),
            "tokens_per_s_ratio": _ratio(s["tokens_per_s"], c["tokens_per_s"]),
        })
    return {"tenant": tenant, "experiment": experiment, "control": control_name, "arms": summaries,
            "comparisons": comparisons}


def format_report(report: dict) -> str:
    def f(x, spec=".3f"):
        return "n/a" if x is None else format(x, spec)

    lines = [f"experiment {report['experiment']} (tenant {report['tenant']}), control arm {report['control']}",
             f"{'arm':<12} {'variant':<12} {'judged':>7} {'refusal':>8} {'95% CI':>15} {'TTFT ms':>8} "
             f"{'e2e ms':>8} {'tok/s':>8}"]
    for a in report["arms"].values():
        ttft = None if a["ttft_mean_s"] is None else a["ttft_mean_s"] * 1000
        e2e = None if a["e2e_mean_s"] is None else a["e2e_mean_s"] * 1000
        lines.append(f"{a['arm']:<12} {a['variant']:<12} {a['judged']:>7.0f} {a['refusal_rate']:>8.3f} "
                     f"{a['refusal_ci95'][0]:>7.3f}-{a['refusal_ci95'][1]:.3f} {f(ttft, '.1f'):>8} "
                     f"{f(e2e, '.1f'):>8} {f(a['tokens_per_s'], '.1f'):>8}")
    for c in report["comparisons"]:
        lo, hi = c["difference_ci95"]
        lines.append(f"{c['treatment']} - {c['control']}: refusal {c['difference']:+.3f} (95% CI {lo:+.3f} to "
                     f"{hi:+.3f}, p={f(c['p_value'], '.3g')}{', significant' if c['significant_at_0.05'] else ''}); "
                     f"TTFT x{f(c['ttft_mean_ratio'])}, e2e x{f(c['e2e_mean_ratio'])}, "
                     f"tokens/s x{f(c['tokens_per_s_ratio'])}")
    return "\n".join(lines)


def plot_report(report: dict, path: str | Path) -> None:
    with figure(path, size=(10, 4), ncols=2) as (_, (ax1, ax2)):
        _draw_report(report, ax1, ax2)


def _draw_report(report: dict, ax1, ax2) -> None:
    arms = list(report["arms"].values())
    names = [a["arm"] for a in arms]
    rates = [a["refusal_rate"] for a in arms]
    err = [[r - a["refusal_ci95"][0] for r, a in zip(rates, arms)], [a["refusal_ci95"][1] - r for r, a in zip(rates, arms)]]
    ax1.bar(names, rates, yerr=err, capsize=6, color=["gray" if n == report["control"] else "C0" for n in names])
    ax1.set_ylabel("refusal rate (95% Wilson CI)")
    ax1.set_title(f"{report['experiment']}: refusal by arm")
    ax1.set_ylim(0, 1)
    metrics = ["ttft_mean_ratio", "e2e_mean_ratio", "tokens_per_s_ratio"]
    for i, comp in enumerate(report["comparisons"]):
        values = [comp[m] if comp[m] is not None else 0 for m in metrics]
        ax2.bar([j + i * 0.8 / len(report["comparisons"]) for j in range(len(metrics))], values,
                width=0.8 / len(report["comparisons"]), label=f"{comp['treatment']} / {comp['control']}")
    ax2.axhline(1.0, color="black", linewidth=0.8)
    ax2.set_xticks(range(len(metrics)), ["TTFT", "e2e latency", "tokens/s"])
    ax2.set_title("latency and throughput ratio vs control")
    ax2.legend(fontsize=8)


def write_report(report: dict, out: str | Path) -> tuple[Path, Path]:
    return write_json_and_plot(report, out, lambda png: plot_report(report, png))
