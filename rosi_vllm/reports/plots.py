"""The one matplotlib set-up: headless (Agg), saved and closed even when drawing fails; and the one way a
report is written: its JSON, then its figure beside it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path


def write_json_and_plot(data: dict, json_path: str | Path, plot: Callable[[Path], object], *,
                        ensure_ascii: bool = True) -> tuple[Path, Path]:
    """Write `data` as indented JSON at `json_path`, then ``plot(png)`` with png beside it (same name, ``.png``).

    The JSON first, so a figure that fails to draw never costs the numbers. Returns (json path, png path).
    """
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(data, indent=2, ensure_ascii=ensure_ascii) + "\n")
    png = json_path.with_suffix(".png")
    plot(png)
    return json_path, png


@contextlib.contextmanager
def figure(path: str | Path, size=(8, 4), ncols: int = 1, nrows: int = 1, dpi: int = 110):
    """Yield (figure, axes) on the Agg backend; on exit lay it out, save it to `path` and close it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)
