"""The KL budget on validation prompts: the mean first-token KL and its one-sided 95 % upper bound, by α.

    python -m research.validation_kl_bounds --model smollm2-135m-instruct \
        --direction directions/smollm2-135m-instruct-gated-wrapped.safetensors --alphas 8,12,16,24
    python -m research.validation_kl_bounds --smoke     # CI: tiny random model, random direction

Why: `rosi extract --method gated` checks the KL budget on the upper bound
(`stats.mean_upper_bound`) rather than on the mean. This replays that check for
a shipped direction on the same validation prompts its selection used (the
first ``--n`` of the validation split's benign set), with the loader's own plan
(`build_plan`), so one can see which α the rule admits, on prompts the test
split never shares.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import direction_for, resolve_model, study_parser, write_with_plot


def bounds(model: Path, direction: Path, alphas: list[float], n: int) -> list[dict]:
    from rosi_vllm.core.checkpoint import model_shape
    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.hf_eval import next_token_logprobs
    from rosi_vllm.extraction.scoring import edited_kl_bounds

    loaded = load_hf_model(str(model))
    benign = list(prompts.harmless("validation"))[:n]
    base = next_token_logprobs(loaded, benign, batch_size=16)
    found, shape, fingerprint = load_direction(direction), model_shape(model), fingerprint_checkpoint(model)
    rows = []
    for alpha in alphas:
        plan = build_plan(found, shape, alpha=alpha, checkpoint_fingerprint=fingerprint)
        mean, upper = edited_kl_bounds(loaded, plan, benign, base, batch_size=16)
        rows.append({"alpha": alpha, "kl": mean, "kl_upper": upper, "prompts": len(benign)})
        print(f"α={alpha:g}: KL {mean:.4f}, 95 % upper bound {upper:.4f}", flush=True)
    return rows


def plot(result: dict, path: Path) -> None:
    from rosi_vllm.extraction.selection import MAX_KL

    rows = result["rows"]
    with figure(path, (6, 4)) as (fig, ax):
        alphas = [r["alpha"] for r in rows]
        ax.plot(alphas, [r["kl"] for r in rows], "o-", label="mean KL (validation)")
        ax.plot(alphas, [r["kl_upper"] for r in rows], "s--", label="one-sided 95 % upper bound")
        ax.axhline(MAX_KL, color="red", linestyle=":", label=f"budget {MAX_KL:g}")
        ax.set_xlabel("α")
        ax.set_ylabel("first-token KL, nats")
        ax.set_title(Path(result["direction"]).name, fontsize=9)
        ax.legend(fontsize=8)


def main(argv=None) -> int:
    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--direction", default="directions/smollm2-135m-instruct-gated-wrapped.safetensors")
    parser.add_argument("--alphas", default="8,12,16,24")
    parser.add_argument("--n", type=int, default=60, help="validation benign prompts (the selection's --val-n)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-klb-"))
    if args.smoke:
        model = resolve_model("tiny", work)
        direction, _ = direction_for(model, work)
        alphas, n = [2.0, 8.0], 4
    else:
        model, direction = resolve_model(args.model, work), Path(args.direction)
        alphas, n = [float(a) for a in args.alphas.split(",")], args.n
    result = {"model": args.model if not args.smoke else "tiny", "direction": str(direction) if not args.smoke
              else "random", "rows": bounds(model, direction, alphas, n)}
    name = "validation_kl_bounds_smoke" if args.smoke else "validation_kl_bounds"
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    print(json.dumps(result["rows"], indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
