"""Shared by the research studies: their flags, result files with the exact command, the tiny gated direction.

The machine description and the statistics are the benchmarks' (`benchmarks._common`): one definition of both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks._common import benchmark_parser, machine, median, write_result, write_with_plot
from benchmarks._setup import direction_for, resolve_model

__all__ = ["RESULTS", "direction_for", "machine", "median", "resolve_model", "study_parser", "tiny_gated_direction",
           "write_result", "write_with_plot"]

RESULTS = Path(__file__).resolve().parent / "results"


def study_parser(doc: str, module: str) -> argparse.ArgumentParser:
    """The benchmarks' shared flags (--smoke, --out-dir, the recorded command), results under research/results."""
    return benchmark_parser(doc, module, out_dir=RESULTS)


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
    from rosi_vllm.methods.gated.fit import extract_gated

    model = resolve_model("tiny", work)
    write, _ = direction_for(model, work)
    out = work / f"gated-{dtype}.safetensors"
    extract_gated(str(model), str(write), out, layers=[0, 1], alphas=(2.0,), min_auroc=0.0, n_harmful=12,
                  answer_tokens=3, val_n=4, stage1_n=3, stage1_tokens=3, max_new_tokens=4, batch_size=4,
                  dtype=dtype, progress=False)
    _TINY_GATED[dtype] = (model, out)
    return model, out
