"""Shared by the research studies: their flags, result files with the exact command, the tiny gated direction.

The machine description and the statistics are the benchmarks' (`benchmarks._common`): one definition of both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks._common import machine, median
from benchmarks._setup import direction_for, resolve_model

__all__ = ["RESULTS", "direction_for", "machine", "median", "resolve_model", "study_parser", "tiny_gated_direction",
           "write_result", "write_with_plot"]

RESULTS = Path(__file__).resolve().parent / "results"


class _StudyParser(argparse.ArgumentParser):
    """Records on the parsed namespace, as ``command``, the command line that reproduces the run."""

    module = ""

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        argv = sys.argv[1:] if args is None else [str(a) for a in args]
        parsed.command = " ".join([Path(sys.executable).name, "-m", self.module, *argv])
        return parsed


def study_parser(doc: str, module: str) -> argparse.ArgumentParser:
    """The flags every study shares: --smoke (CI mode, seconds) and --out-dir (default research/results).

    `module` is the study's ``__spec__.name`` (``research.<name>``): with the argv given to ``main`` it makes the
    recorded command, also when a test calls ``main([...])`` in-process.
    """
    parser = _StudyParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.module = module
    parser.add_argument("--smoke", action="store_true", help="CI mode: tiny model, a few prompts, seconds")
    parser.add_argument("--out-dir", default=str(RESULTS))
    return parser


def write_result(name: str, payload: dict, out_dir, command: str) -> Path:
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


#: dtype -> (model, direction) of the tiny gated extractions made in this process
_TINY_GATED: dict[str, tuple[Path, Path]] = {}


def tiny_gated_direction(work: Path, dtype: str = "float32") -> tuple[Path, Path]:
    """The tiny random model and a gated direction extracted for it in seconds (layers 0 and 1, α=2), what the
    gated studies' smoke runs measure; the extraction's report is ``gate.json`` in the folder named after the
    direction (``<direction without .safetensors>/gate.json``).

    Made once per process and dtype while its files exist (in a later study's `work` or not): the smoke runs that
    call ``main([...])`` in one test process share it instead of extracting it again.
    """
    cached = _TINY_GATED.get(dtype)
    if cached and all(p.exists() for p in (*cached, cached[1].with_suffix("") / "gate.json")):
        return cached
    from rosi_vllm.extraction.gated import extract_gated

    model = resolve_model("tiny", work)
    write, _ = direction_for(model, work)
    out = work / f"gated-{dtype}.safetensors"
    extract_gated(str(model), str(write), out, layers=[0, 1], alphas=(2.0,), min_auroc=0.0, n_harmful=12,
                  answer_tokens=3, val_n=4, stage1_n=3, stage1_tokens=3, max_new_tokens=4, batch_size=4,
                  dtype=dtype, progress=False)
    _TINY_GATED[dtype] = (model, out)
    return model, out
