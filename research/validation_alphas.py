"""The gated selection's stage 2 replayed for a written direction at further α, on validation prompts only.

    python -m research.validation_alphas --model qwen2.5-coder-0.5b-instruct \
        --direction my-gated.safetensors --alphas 2,3,4 --val-n 40 --wrapped --write-selected OUT
    python -m research.validation_alphas --smoke     # CI: tiny random model, random direction

Why: `rosi extract --method gated` spends most of its time collecting inputs
and fitting the read vectors; its α grid is fixed before it sees any score. When
the grid turns out to stop short of the budget (every candidate over it, the
frontier visibly just beyond the smallest α), this scores the *same* read
vectors at other α with the selection's own scorer (`score_gated`: generated
validation text, the documented judge, exact KL and its upper bound), the same
prompts (the first ``--val-n`` of each validation set, and with ``--wrapped``
the fit-only wrappers on validation goals) and the same budget
(`GatedCandidate.feasible`). The test split is never read. ``--write-selected``
writes the direction with the selected α as its recommended one, only if some α
is within the budget.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from rosi_vllm.reports.plots import figure

from ._common import direction_for, resolve_model, study_parser, write_with_plot


def replay(model: Path, direction: Path, alphas: list[float], val_n: int, wrapped: bool,
           max_new_tokens: int = 32, batch_size: int = 16) -> dict:
    from rosi_vllm.core.direction_file import load_direction
    from rosi_vllm.core.fingerprint import fingerprint_checkpoint
    from rosi_vllm.core.injection_plan import build_plan
    from rosi_vllm.extraction import prompts
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.extraction.gated_selection import GatedCandidate, score_candidates, validation_sets
    from rosi_vllm.extraction.hf_eval import next_token_logprobs

    loaded = load_hf_model(str(model))
    found, fingerprint = load_direction(direction), fingerprint_checkpoint(model)
    # the prompts `extract_gated` selects on
    sets = validation_sets(val_n, templates=prompts.FIT_WRAPPER_TEMPLATES if wrapped else None)
    base_lp = next_token_logprobs(loaded, sets["benign"], batch_size=batch_size)
    window, targets = (found.window, found.default_targets) if found.gated else ((), ())
    base, candidates = score_candidates(
        loaded, [(window, targets, a) for a in alphas],
        lambda spec: build_plan(found, loaded.shape, alpha=spec[2], checkpoint_fingerprint=fingerprint), sets,
        stage=2, base_logprobs=base_lp, max_new_tokens=max_new_tokens, batch_size=batch_size)
    best = max(candidates, key=GatedCandidate.rank_key)
    for c in candidates:
        print(f"α={c.alpha:g}: harmful {c.harmful_refusal:.0%}, benign {c.benign_refusal:.0%}, borderline "
              f"{c.borderline_refusal:.0%}, KL {c.kl:.3f} (upper {c.budget_kl:.3f}), within budget: {c.feasible}",
              flush=True)
    return {"baseline": base, "candidates": [c.to_dict() for c in candidates], "best": best.to_dict(),
            "val_n": val_n, "wrapped": wrapped, "max_new_tokens": max_new_tokens}


def write_selected(direction: Path, alpha: float, out: Path) -> Path:
    """`direction` with `alpha` as its recommended α (same vectors; the file records where the α came from)."""
    from rosi_vllm.core.direction_file import load_direction, save_direction

    found = load_direction(direction)
    found.recommended_alpha = alpha
    found.provenance = {**found.provenance, "alpha_selected_by": f"research.validation_alphas from {direction.name}"}
    return save_direction(out, found)


def plot(result: dict, path: Path) -> None:
    from rosi_vllm.extraction.selection import MAX_KL

    rows = result["candidates"]
    base = result["baseline"]
    with figure(path, (11, 4), ncols=2) as (fig, (ax1, ax2)):
        alphas = [r["alpha"] for r in rows]
        for key, label in (("harmful_refusal", "harmful refused"), ("benign_refusal", "benign refused"),
                           ("borderline_refusal", "borderline refused")):
            line = ax1.plot(alphas, [r[key] for r in rows], "o-", label=label)[0]
            ax1.axhline(base[key], color=line.get_color(), linestyle=":", alpha=0.6)
        if rows and rows[0].get("jailbreak_success") is not None:
            line = ax1.plot(alphas, [r["jailbreak_success"] for r in rows], "s--", label="wrapped goals answered")[0]
            ax1.axhline(base["jailbreak_success"], color=line.get_color(), linestyle=":", alpha=0.6)
        ax1.set_xlabel("α")
        ax1.set_ylabel("rate (dotted: unedited model)")
        ax1.legend(fontsize=7)
        ax2.plot(alphas, [r["kl"] for r in rows], "o-", label="mean KL")
        ax2.plot(alphas, [r["kl_upper"] for r in rows], "s--", label="one-sided 95 % upper bound")
        ax2.axhline(MAX_KL, color="red", linestyle=":", label=f"budget {MAX_KL:g}")
        ax2.set_xlabel("α")
        ax2.set_ylabel("first-token KL, nats")
        ax2.legend(fontsize=7)
        fig.suptitle(f"{Path(result['direction']).name}: validation only", fontsize=9)


def main(argv=None) -> int:
    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--direction", help="a gated (format v2) direction file")
    parser.add_argument("--alphas", default="2,3,4")
    parser.add_argument("--val-n", type=int, default=40, help="validation prompts per set (the selection's --val-n)")
    parser.add_argument("--wrapped", action="store_true", help="also attack validation goals with the fit-only "
                                                               "wrappers (as a selection with --wrapped-goals)")
    parser.add_argument("--write-selected", help="write the direction with the selected α as its recommended one "
                                                 "(only if some α is within the budget)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-valpha-"))
    if args.smoke:
        model = resolve_model("tiny", work)
        direction, _ = direction_for(model, work)
        alphas, val_n, wrapped = [2.0, 8.0], 4, True
    else:
        if not args.direction:
            parser.error("--direction is required")
        model, direction = resolve_model(args.model, work), Path(args.direction)
        alphas, val_n, wrapped = [float(a) for a in args.alphas.split(",")], args.val_n, args.wrapped
    result = {"model": "tiny" if args.smoke else args.model, "direction": "random" if args.smoke else str(direction),
              **replay(model, direction, alphas, val_n, wrapped, max_new_tokens=4 if args.smoke else 32)}
    if args.write_selected:
        if not result["best"]["feasible"]:
            raise SystemExit("rosi: no α is within the selection's budget on validation; nothing written")
        result["written"] = str(write_selected(direction, result["best"]["alpha"], Path(args.write_selected)))
    name = "validation_alphas_smoke" if args.smoke else "validation_alphas"
    path = write_with_plot(name, result, args.out_dir, plot, args.command)
    print(json.dumps({k: result[k] for k in ("best",)}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
