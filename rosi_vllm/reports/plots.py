"""The one matplotlib set-up: headless (Agg), saved and closed even when drawing fails."""

from __future__ import annotations

import contextlib
from pathlib import Path


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
