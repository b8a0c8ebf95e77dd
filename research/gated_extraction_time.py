"""Where `rosi extract --method gated` (and `--method threshold`) spends its time, run by run, from the reports.

    python -m research.gated_extraction_time --reports A/gate.json B/threshold.json ... \
        --out-dir research/results/extraction
    python -m research.gated_extraction_time --smoke    # CI: two tiny-model extractions, float32 and bfloat16

Each `gate.json` (`threshold.json`) holds its run's stage times (``stage_seconds``: load and input
collection, fit, selection, and since the KL screen its parts), the settings that
decide how much work there is (layers fitted, prompts, answer length, validation
prompts, dtype) and the point the run selected with its validation scores. This
puts them side by side, so a speed-up is read together with what it selected: a
faster extraction that picks a worse point is not faster at the same job.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import study_parser, write_with_plot

STAGES = (("load_and_collect", "load + collect inputs"), ("fit", "fit read vectors"),
          ("load_collect_and_fit", "load, collect + fit (threshold)"),
          ("select_kl_screen", "select: KL screen"), ("select_budget", "select: α at the KL budget"),
          ("select_stage1", "select: stage 1"),
          ("select_stage2", "select: stage 2"), ("select", "select (not split)"))


def summarise(path: Path) -> dict:
    """One run: its work settings, stage times and selected point, from its gate.json or threshold.json."""
    report = json.loads(Path(path).read_text())
    # a threshold report's gates are per layer, one pseudo-writer (the MLP input) each, one fit setting
    threshold = "threshold" in report
    stages = dict(report.get("stage_seconds") or {})
    if "select_stage2" in stages:  # the parts are given: the total would count them twice in the plot
        stages.pop("select")
    best = report["best"]
    # runs from before the KL screen generated text for every candidate of their stage 1
    screen = report.get("kl_screen") or [{"generated": True} for c in report["candidates"] if c["stage"] == 1]
    return {
        "report": str(path), "seconds": report["seconds"], "stage_seconds": stages,
        "dtype": report.get("dtype", "float32"), "layers": report["layers"],
        "method": "threshold" if threshold else "gated", "preset": report.get("preset"),
        "writers": len(report["gates"]) if threshold else len(report["gates"][0]["writers"]),
        "fit_settings": 1 if threshold else len(report["gates"]),
        "n_harmful_fit": report["n_harmful_fit"], "n_benign_fit": report.get("n_benign_fit"),
        "answer_tokens": report["answer_tokens"], "wrapped_goals": report.get("wrapped_goals", report.get("wrapped")),
        "wrapped_benign": report.get("wrapped_benign", report.get("wrapped")),
        "completions_generated": report.get("completions_generated"),
        "val_n": report.get("val_n"), "finalists": report.get("finalists"),
        "candidates": len(screen), "candidates_generated": sum(1 for c in screen if c["generated"]),
        "selected": {key: best[key] for key in ("window", "targets", "alpha", "harmful_refusal", "jailbreak_success",
                                                "benign_refusal", "borderline_refusal", "kl", "kl_upper",
                                                "feasible")},
    }


def plot(result: dict, path: Path) -> None:
    runs = result["runs"]
    labels = [f"{Path(r['report']).parent.name}\n{r.get('method', 'gated')}, {r['dtype']}, {r['writers']} writers"
              for r in runs]
    with figure(path, (10, 2.0 + 0.9 * len(runs))) as (fig, ax):
        left = [0.0] * len(runs)
        for key, label in STAGES:
            widths = [r["stage_seconds"].get(key, 0.0) for r in runs]
            if any(widths):
                ax.barh(range(len(runs)), widths, left=left, label=label)
                left = [a + b for a, b in zip(left, widths)]
        for i, r in enumerate(runs):
            s = r["selected"]
            ax.text(left[i] + 5, i, f"{r['seconds']:.0f} s; layers {s['window']} α={s['alpha']:g}: harmful "
                    f"{s['harmful_refusal']:.0%}, benign {s['benign_refusal']:.0%}"
                    f"{'' if s['feasible'] else ' (over the budget)'}", va="center", fontsize=7)
        ax.axvline(300, color="red", linestyle=":", label="5-minute target")
        ax.set_yticks(range(len(runs)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("seconds (2 CPU cores)")
        ax.set_xlim(0, max(left + [300]) * 1.75)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4)  # below: no run's text under it
        fig.suptitle("rosi extract --method gated / threshold: time per stage, with the point each run selected "
                     "(validation)",
                     fontsize=9)


def smoke_reports(work: Path) -> list[Path]:
    """Two tiny-model gated extractions, float32 and bfloat16, with their reports."""
    from ._common import tiny_gated_direction

    reports = []
    for dtype in ("float32", "bfloat16"):
        _, direction = tiny_gated_direction(work, dtype)
        reports.append(direction.with_suffix("") / "gate.json")
    return reports


def main(argv=None) -> int:
    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--reports", nargs="+", default=[], help="gate.json files written by rosi extract --method gated")
    args = parser.parse_args(argv)
    if args.smoke:
        reports = smoke_reports(Path(tempfile.mkdtemp(prefix="rosi-gated-time-")))
    elif args.reports:
        reports = [Path(r) for r in args.reports]
    else:
        parser.error("--reports is required (or --smoke)")
    result = {"runs": [summarise(r) for r in reports]}
    name = "gated_extraction_time" + ("_smoke" if args.smoke else "")
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    for run in result["runs"]:
        print(f"{run['report']}: {run['seconds']:.0f} s {run['stage_seconds']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
