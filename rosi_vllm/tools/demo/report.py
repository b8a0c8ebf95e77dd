"""What the demo shows: the side-by-side table, refusal per arm with intervals, latency, metrics; JSON and PNG.

Pure functions of the answers and the server's ``/metrics`` text (no server,
no network), so the formatting and the arithmetic are unit-tested. Rates are
`stats.rate` (Wilson 95 % intervals); the latency ratio is of per-arm medians
of the client-side end-to-end time.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ...core.stats import rate
from ...reports.plots import write_json_and_plot
from .client import Answer

TABLE_WORDS = 8
PROMPT_WIDTH = 30
#: an answer column's width range: 8 words fit in the upper end; the terminal's width picks inside it
ANSWER_WIDTH = (28, 56)
#: /metrics series that carry the demo's numbers: refusal rate = refusals / judged; mean e2e = sum / count
METRIC_SERIES = ("rosi_judged_responses_total", "rosi_refusals_total", "rosi_e2e_seconds_sum",
                 "rosi_e2e_seconds_count")


def first_words(text: str, words: int = TABLE_WORDS) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" …" if len(parts) > words else "")


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _yes(refused: bool) -> str:
    return "REFUSED" if refused else "-"


def pairs(answers: list[Answer], arms: tuple[str, ...]) -> list[tuple[str, str, dict[str, Answer]]]:
    """(set, prompt, arm → answer), in prompt order."""
    rows: dict[tuple[str, str], dict[str, Answer]] = {}
    for a in answers:
        rows.setdefault((a.set, a.prompt), {})[a.arm] = a
    return [(kind, prompt, by_arm) for (kind, prompt), by_arm in rows.items() if set(by_arm) == set(arms)]


def answer_width(columns: int | None = None) -> int:
    """Width of each answer column so that a line fits `columns` (default: the terminal's, else 150)."""
    import shutil

    columns = columns or shutil.get_terminal_size((150, 24)).columns
    lo, hi = ANSWER_WIDTH
    return max(lo, min(hi, (columns - 8 - 1 - PROMPT_WIDTH - 9 - len("refused? base / hardened")) // 2))


def format_table(answers: list[Answer], arms: tuple[str, str] = ("base", "hardened"), columns: int | None = None) -> str:
    """One line per prompt: prompt | base answer | hardened answer | refused? (base / hardened)."""
    left, right = arms
    width = answer_width(columns)
    head = (f"{'':8} {'prompt':{PROMPT_WIDTH}} | {left + ' answer':{width}} | "
            f"{right + ' answer':{width}} | refused? {left} / {right}")
    lines = [head, "-" * len(head)]
    for kind, prompt, by_arm in pairs(answers, arms):
        a, b = by_arm[left], by_arm[right]
        lines.append(f"{kind:8} {clip(prompt, PROMPT_WIDTH):{PROMPT_WIDTH}} | "
                     f"{clip(first_words(a.text), width):{width}} | "
                     f"{clip(first_words(b.text), width):{width}} | {_yes(a.refused)} / {_yes(b.refused)}")
    return "\n".join(lines)


def arm_summary(answers: list[Answer], arms: tuple[str, ...], sets: tuple[str, ...]) -> dict:
    """arm → {"<set>_refusal": rate dict, "e2e_median_s", "e2e_s"}."""
    out = {}
    for arm in arms:
        mine = [a for a in answers if a.arm == arm]
        out[arm] = {f"{kind}_refusal": rate(a.refused for a in mine if a.set == kind) for kind in sets}
        out[arm]["e2e_s"] = [round(a.e2e_s, 4) for a in mine]
        out[arm]["e2e_median_s"] = statistics.median(a.e2e_s for a in mine)
    return out


def latency_ratio(summary: dict, treated: str = "hardened", control: str = "base") -> float:
    return summary[treated]["e2e_median_s"] / summary[control]["e2e_median_s"]


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def format_rate(r: dict) -> str:
    return f"{r['k']}/{r['n']} = {_pct(r['rate'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"


def format_rates(summary: dict, sets: tuple[str, ...], shipped: dict | None = None,
                 shipped_source: str = "") -> str:
    """Refusal per arm with intervals, a warning about small n, and the shipped full-split measurement."""
    n = max(summary[arm][f"{kind}_refusal"]["n"] for arm in summary for kind in sets)
    lines = [f"refusal per arm (judge substring-v1, Wilson 95 % intervals; n={n} per set is small, "
             "so these intervals are wide):"]
    for arm, s in summary.items():
        lines.append(f"  {arm:9} " + "   ".join(f"{kind} refused {format_rate(s[f'{kind}_refusal'])}"
                                                for kind in sets))
    if shipped:
        shipped_n = shipped["rosi"][f"{sets[0]}_refusal"]["n"]
        lines.append(f"measured on the whole test split (n={shipped_n} per set; {shipped_source}):")
        for arm, key in (("base", "base"), ("hardened", "rosi")):
            lines.append(f"  {arm:9} " + "   ".join(f"{kind} refused {format_rate(shipped[key][f'{kind}_refusal'])}"
                                                    for kind in sets))
    return "\n".join(lines)


def format_latency(summary: dict, arm_notes: str) -> str:
    h, b = summary["hardened"]["e2e_median_s"], summary["base"]["e2e_median_s"]
    return (f"latency hardened/base = {h / b:.2f} (median end-to-end time per request, same prompts, one request "
            f"at a time, arms interleaved: hardened {h:.2f} s, base {b:.2f} s; {arm_notes})")


# ---- /metrics -------------------------------------------------------------------------------------------------------

def metric_lines(text: str, tenants: tuple[str, ...]) -> list[str]:
    """The ``rosi_*`` sample lines of the demo's tenants that carry refusal and latency, plus the direction."""
    keep = []
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name == "rosi_direction_info":
            keep.append(line)
        elif name in METRIC_SERIES and any(f'tenant="{t}"' in line for t in tenants):
            keep.append(line)
    return keep


def metric_counts(text: str, tenants: dict[str, str]) -> dict:
    """arm → {"judged", "refusals", "e2e_sum_s", "e2e_count"} summed over the tenant's series (tenants: arm → name)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"rosi_judged_responses_total": "judged", "rosi_refusals_total": "refusals",
              "rosi_e2e_seconds_sum": "e2e_sum_s", "rosi_e2e_seconds_count": "e2e_count"}
    by_tenant = {name: arm for arm, name in tenants.items()}
    out = {arm: dict.fromkeys(wanted.values(), 0.0) for arm in tenants}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            arm = by_tenant.get(sample.labels.get("tenant", ""))
            if sample.name in wanted and arm:
                out[arm][wanted[sample.name]] += sample.value
    return out


def metrics_agree(summary: dict, counts: dict, sets: tuple[str, ...]) -> bool:
    """The server's own refusal counters saw what the demo judged (same judge, same texts)."""
    return all(counts[arm]["judged"] == sum(summary[arm][f"{k}_refusal"]["n"] for k in sets)
               and counts[arm]["refusals"] == sum(summary[arm][f"{k}_refusal"]["k"] for k in sets)
               for arm in summary)


# ---- files ----------------------------------------------------------------------------------------------------------

def plot(result: dict, path: Path) -> Path:
    """Refusal per arm and prompt set, Wilson intervals; the shipped full-split measurement as markers."""
    from ...reports.plots import figure

    sets, arms = result["prompt_sets"], list(result["arms"])
    shipped = result.get("shipped_measurement") or {}
    with figure(path, (7, 4)) as (_, ax):
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(sets))]
            rates = [result["arms"][arm][f"{k}_refusal"] for k in sets]
            vals = [r["rate"] for r in rates]
            errs = [[v - r["ci95"][0] for v, r in zip(vals, rates)], [r["ci95"][1] - v for v, r in zip(vals, rates)]]
            ax.bar(xs, vals, width * 0.9, yerr=errs, capsize=4, ecolor="black", label=f"{arm} (demo, n={rates[0]['n']})")
            key = "rosi" if arm == "hardened" else "base"
            if key in shipped:
                ref = [shipped[key][f"{k}_refusal"] for k in sets]
                ax.errorbar([x + width * 0.3 for x in xs], [r["rate"] for r in ref],
                            yerr=[[r["rate"] - r["ci95"][0] for r in ref], [r["ci95"][1] - r["rate"] for r in ref]],
                            fmt="D", color="0.35", markersize=4, capsize=2, elinewidth=1,
                            label=f"whole test split, n={ref[0]['n']} (shipped eval)" if i == len(arms) - 1 else None)
        ax.set_xticks(range(len(sets)))
        ax.set_xticklabels([f"{k} prompts refused" for k in sets])
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("refusal rate (95 % Wilson interval)")
        ax.set_title(f"{result['model']}: base vs hardened (α={result['direction']['alpha']:g}) on one server",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
    return path


def write_outputs(result: dict, folder: Path) -> tuple[Path, Path]:
    return write_json_and_plot(result, folder / "demo.json", lambda png: plot(result, png), ensure_ascii=False)
