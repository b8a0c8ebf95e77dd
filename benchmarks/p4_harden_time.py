"""P4 harden time: wall time per stage of `rosi harden`, per model, against the issue's time targets.

    rosi harden smollm2-135m-instruct --out /tmp/h/smollm2.safetensors        # each run writes harden.json
    python -m benchmarks.p4_harden_time /tmp/h/smollm2/harden.json /tmp/h/qwen/harden.json
    python -m benchmarks.p4_harden_time --smoke REPORT                         # CI: one report, out-dir given

The runs themselves are `rosi harden` (minutes each); this collects what they recorded (`stage_seconds`, the
estimate per stage made after the probe, the scale the time budget chose, the dtype, the machine) into one
JSON and a PNG of stacked stage times with each run's target. Targets on 2 CPU cores (the issue's): ≤ 10 min
for a 0.5B model, ≤ 45 min for a 1.5B one (`TARGETS`), none stated for larger ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import benchmark_parser, write_with_plot

#: (largest parameter count, target minutes) on 2 CPU cores: the "0.5B" and "1.5B" classes (tensor counts run
#: higher than the names: an untied output head counts again)
TARGETS = ((1.0e9, 10.0), (2.5e9, 45.0))


def target_minutes(parameters: int | None) -> float | None:
    """The issue's time target for a model of this size on this machine (None: no target stated)."""
    if parameters is None:
        return None
    return next((minutes for limit, minutes in TARGETS if parameters <= limit), None)


def parameter_count(model_path: str) -> int | None:
    """Parameters of a safetensors checkpoint folder, from its tensor headers (None when it is not there)."""
    from rosi_vllm.core.checkpoint import safetensors_files, tensor_records

    try:
        return sum(math.prod(r.shape) for r in tensor_records(safetensors_files(model_path)))
    except Exception:  # noqa: BLE001 - a report moved to another machine: no count, no target
        return None


def row_of(report_path: Path) -> dict:
    report = json.loads(report_path.read_text())
    parameters = parameter_count(report["model_path"])
    return {"model": report["model"], "report": str(report_path), "parameters": parameters,
            "target_minutes": target_minutes(parameters), "seconds": report["seconds"],
            "stage_seconds": report["stage_seconds"], "stage_estimates": report.get("stage_estimates", {}),
            "time_budget_min": report.get("time_budget_min"), "scale": report.get("scale"),
            "dtype": report.get("dtype"), "method": report.get("method"), "verdict": report.get("verdict"),
            "reproduce": report.get("reproduce")}


def plot(payload: dict, path: Path) -> None:
    rows = payload["rows"]
    stages = list(dict.fromkeys(s for r in rows for s in r["stage_seconds"]))
    with figure(path, (10.5, 1.4 + 0.9 * len(rows))) as (_, ax):
        for i, row in enumerate(rows):
            left = 0.0
            for j, stage in enumerate(stages):
                minutes = row["stage_seconds"].get(stage, 0.0) / 60
                ax.barh(i, minutes, left=left, color=f"C{j}", label=stage if i == 0 else None)
                left += minutes
            if row["target_minutes"]:
                ax.plot([row["target_minutes"]] * 2, [i - 0.4, i + 0.4], color="black", linestyle="--",
                        label="target" if i == 0 else None)
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{r['model']}\n(budget {r['time_budget_min']} min, scale {r['scale']:.2f})"
                            for r in rows])
        ax.invert_yaxis()  # the first report on top
        ax.set_xlabel("minutes (wall)")
        ax.set_title("P4: rosi harden wall time per stage")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))


def main(argv=None) -> int:
    parser = benchmark_parser(__doc__, __spec__.name)
    parser.add_argument("reports", nargs="+", help="harden.json of each run (the folder named after --out)")
    args = parser.parse_args(argv)
    rows = [row_of(Path(p)) for p in args.reports]
    for row in rows:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in row["stage_seconds"].items())
        target = f"target {row['target_minutes']:g} min" if row["target_minutes"] else "no target"
        print(f"{row['model']}: {row['seconds'] / 60:.1f} min ({target}): {stages}")
    name = "p4_harden_time_smoke" if args.smoke else "p4_harden_time"
    path = write_with_plot(name, {"rows": rows}, args.out_dir, plot, args.command)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
