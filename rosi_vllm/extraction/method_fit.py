"""The pipeline every fit on a write direction shares: load → fit → windows → select → save → report.

A method's fit (`rosi_vllm/methods/<name>/fit.py`) supplies only what differs: how
it fits, which candidate windows its gates allow, the direction a window makes and
its report's own keys. Loading the model and the write direction, refusing when no
gate is good enough, selecting window and α (`gated_selection.select_gated`, the
real edit applied through the plan), saving the file and writing the report are
written here once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.direction_file import DirectionFile, save_direction
from ..core.errors import RosiError
from ..core.injection_plan import build_plan
from .gated_selection import select_gated, write_report
from .hf_model import LoadedModel
from .writer_inputs import load_for_fit


@dataclass(frozen=True)
class FitStart:
    """The model to fit on, its fingerprint and the write direction (only its ŝ is used), with the clock started."""

    model: str
    write_direction: str
    loaded: LoadedModel
    fingerprint: str
    write: DirectionFile
    started: float

    def seconds(self) -> float:
        return time.perf_counter() - self.started


def start_fit(model: str, write_direction: str, dtype: str, *, reads: tuple[str, ...]) -> FitStart:
    """Load the model and the write direction, which must be for these weights and of a kind in `reads`."""
    started = time.perf_counter()
    loaded, fingerprint, write = load_for_fit(model, write_direction, dtype, reads=reads)
    return FitStart(model, write_direction, loaded, fingerprint, write, started)


def require_windows(windows: list, min_auroc: float) -> list:
    """The candidate windows, or a refusal: a direction edits only where its gate separates harm."""
    if not windows:
        raise RosiError(f"rosi: no layer's gate reached held-out AUROC {min_auroc}; lower --min-auroc or widen --layers")
    return windows


def select_and_save(run: FitStart, direction_of: Callable[[tuple, tuple], DirectionFile], windows: list, alphas, *,
                    selection_settings: dict, wrapper_templates: dict | None, method: str, out, report_dir,
                    stem: str, plot: Callable[[dict, object], None], report_of: Callable[[object], dict],
                    provenance: dict | None = None, summary_suffix: str = "", progress: bool = True) -> dict:
    """Select (window, targets, α) over `windows` × `alphas`, write the chosen direction to `out` and the report.

    `direction_of(window, targets)`: the method's direction for a window; `method`: the provenance line
    naming the fit; `report_of(selection)`: the method's own report keys, asked after the file is written
    (its timings included); `provenance`: keys the method sets beside those of the write direction.
    Returns the report (also ``<stem>.json`` and ``<stem>.png`` in `report_dir`).
    """
    def plan_of(spec):
        window, targets, alpha = spec
        return build_plan(direction_of(window, targets), run.loaded.shape, alpha=alpha,
                          checkpoint_fingerprint=run.fingerprint)

    selection = select_gated(run.loaded, plan_of, windows, alphas, wrapper_templates=wrapper_templates,
                             progress=progress, **selection_settings)
    best = selection.best
    direction = direction_of(best.window, best.targets)
    direction.recommended_alpha = best.alpha
    direction.provenance = {**run.write.provenance, **(provenance or {}),
                            "write_direction": Path(run.write_direction).name, "method": method,
                            "extract_seconds": f"{run.seconds():.1f}"}
    path = save_direction(out, direction)
    report = {"model": run.model, "direction_file": str(path), "write_direction": str(run.write_direction),
              "seconds": round(run.seconds(), 1), **report_of(selection), **selection.report()}
    written = write_report(report, out, report_dir, stem, plot)
    if progress:
        print(f"selected {best.summary()}{summary_suffix}")
        print(f"wrote {path} (format v{direction.format_version}, direction {direction.direction_id}); "
              f"report {written}")
    return report
