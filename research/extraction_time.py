"""Extraction time (the former benchmark P4, before P4 became `rosi harden`'s time per stage): difference-of-means
over N harmful + N harmless prompts, all layers.

    python -m research.extraction_time             # full: SmolLM2-135M, N = 10, 25, 50, 100, 200
    python -m research.extraction_time --smoke     # CI: tiny model, N = 4, 8

Times `extract_directions` (chat template, batched forward passes, means) after
the model is loaded; loading is reported separately. Target: N = 50 in ≤ 20 s
on 2 cores. Median of --repeats runs per N.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import median, resolve_model, study_parser, write_result


def plot(rows: list[dict], path: Path, target: float) -> None:
    with figure(path, (6, 4)) as (fig, ax):
        ns = [r["n_pairs"] for r in rows]
        ax.plot(ns, [r["seconds_median"] for r in rows], marker="o", label="extraction (median)")
        ax.axhline(target, color="red", linestyle=":", label=f"target for 50+50: {target:g} s")
        ax.set_xlabel("prompt pairs (harmful + harmless each)")
        ax.set_ylabel("seconds")
        ax.set_title("extraction time")
        ax.legend()


def main(argv=None) -> int:
    import torch

    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import extract_directions, load_hf_model

    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", default="10,25,50,100,200")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args(argv)
    if args.smoke:
        args.model, args.pairs, args.repeats = "tiny", "4,8", 1
    model = resolve_model(args.model, Path(tempfile.mkdtemp(prefix="rosi-extraction-time-")))
    started = time.perf_counter()
    loaded = load_hf_model(model)
    load_s = time.perf_counter() - started
    harmful, harmless = list(prompts.harmful("extraction")), list(prompts.harmless("extraction"))
    rows = []
    for n in [int(x) for x in args.pairs.split(",")]:
        # the harmless extraction split has 80 lines: larger N cycles through it
        hl = (harmless * (n // len(harmless) + 1))[:n]
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            extract_directions(loaded, harmful[:n], hl, batch_size=args.batch_size, progress=False)
            times.append(time.perf_counter() - t)
        rows.append({"n_pairs": n, "seconds": times, "seconds_median": median(times)})
        print(f"N={n}: {median(times):.2f} s")
    name = "extraction_time_smoke" if args.smoke else "extraction_time"
    out_dir = Path(args.out_dir)
    path = write_result(name, {"model": args.model, "model_load_s": load_s, "batch_size": args.batch_size,
                               "torch_threads": torch.get_num_threads(), "rows": rows}, out_dir, args.command)
    plot(rows, out_dir / f"{name}.png", 20.0)
    print(json.dumps(rows, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
