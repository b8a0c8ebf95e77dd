"""Safety sweep: refusal (harmful / benign / jailbreak), degeneration and KL vs α for one direction.

    python -m research.safety_sweep --model smollm2-135m-instruct \\
        --direction directions/smollm2-135m-instruct.safetensors     # full: test split, α grid
    python -m research.safety_sweep --smoke                       # CI: tiny model, 4 prompts, 2 α

A thin wrapper over the user command ``rosi eval --alphas`` (logic in
`rosi_vllm.extraction.sweep`: vLLM at each α, greedy, scored like `rosi eval`,
Wilson 95 % intervals, exact benign KL). It adds what a benchmark result needs:
the model and direction resolved for smoke runs (tiny model, random direction),
and the result written under research/results with the command and machine
(`_common.write_result`), where `docs/generate.py` reads it (the sweep table of docs/extraction.md).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ._common import direction_for, resolve_model, study_parser, write_result


def main(argv=None) -> int:
    from rosi_vllm.cli import main as rosi

    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--direction", default=None, help="default: directions/<model>.safetensors")
    parser.add_argument("--alphas", default="0,16,32,48,64,96,128")
    parser.add_argument("--n", type=int, default=50, help="prompts per set (test split)")
    parser.add_argument("--jailbreak-goals", type=int, default=10, help="goals x 5 templates")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-sweep-"))
    if args.smoke:
        args.model, args.alphas, args.n, args.jailbreak_goals, args.max_new_tokens = "tiny", "0,8", 4, 1, 4
    model = resolve_model(args.model, work)
    shipped = args.direction or str(Path(__file__).resolve().parents[1] / "directions" / f"{args.model}.safetensors")
    direction_path, direction_kind = direction_for(model, work, shipped)
    name = "safety_sweep_smoke" if args.smoke else f"safety_sweep_{args.model}"
    out = Path(args.out_dir) / f"{name}.json"
    code = rosi(["eval", "--model", str(model), "--direction", str(direction_path), "--alphas", args.alphas,
                 "--split", "test", "--limit", str(args.n), "--jailbreak-goals", str(args.jailbreak_goals),
                 "--max-tokens", str(args.max_new_tokens), "--out", str(out)])
    if code:
        return code
    result = json.loads(out.read_text())
    result.update(model=args.model, direction=direction_kind)
    print(f"wrote {write_result(name, result, args.out_dir, args.command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
