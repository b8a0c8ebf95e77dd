"""`rosi eval`: refusal, over-refusal, jailbreak success and KL of a model, base or hardened.

With ``--alphas`` it is the safety sweep: the same scores at every α of one direction.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import RosiError
from ..extraction.eval_extras import XSTEST_SHIPPED
from ._args import floats, model_path


def cmd_eval(args) -> int:
    from ..extraction.evaluate import print_summary, run_eval, write_report

    if args.direction and args.endpoint:
        raise RosiError("rosi: --direction applies to a local engine; an endpoint serves what it serves")
    if args.alphas is not None and (args.endpoint or not args.direction or not args.model or args.alpha is not None):
        raise RosiError("rosi: --alphas sweeps a local engine: give --model and --direction, not --endpoint or --alpha")
    if args.alphas is not None and (args.style_shift or args.xstest or args.jailbreak_families):
        raise RosiError("rosi: --style-shift, --xstest and --jailbreak-families apply to one evaluation, "
                        "not to an --alphas sweep")
    model = model_path(args.model) if args.model else None
    if model is None and not args.endpoint:
        raise RosiError("rosi: give --model (local engine) or --endpoint")
    if args.alphas is not None:
        return _sweep(args, model)
    result = run_eval(model=model, direction=args.direction, alpha=args.alpha, endpoint=args.endpoint,
                      served_model=args.served_model, api_key=args.api_key, split=args.split,
                      max_tokens=args.max_tokens, jailbreak_goals=args.jailbreak_goals, limit=args.limit,
                      tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                      gpu_memory_utilization=args.gpu_memory_utilization, style_shift=args.style_shift,
                      xstest=args.xstest, family_goals=args.jailbreak_goals if args.jailbreak_families else None)
    label = f"rosi alpha={result['alpha']:g}" if args.direction else "base"
    write_report(result, args.out, label)
    print_summary(result)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def _sweep(args, model: str) -> int:
    from ..extraction.sweep import row_summary, run_sweep, write_sweep

    if not args.alphas:
        raise RosiError("rosi: --alphas needs at least one value, e.g. 0,16,32")
    result = run_sweep(model=model, direction=args.direction, alphas=args.alphas, split=args.split,
                       limit=args.limit, jailbreak_goals=args.jailbreak_goals, max_tokens=args.max_tokens,
                       tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                       gpu_memory_utilization=args.gpu_memory_utilization,
                       on_row=lambda row: print(row_summary(row), flush=True))
    png = write_sweep(result, args.out)
    print(f"wrote {args.out} and {png}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="refusal / over-refusal / jailbreak / KL of a model, base or rosi")
    p.add_argument("--model", help="checkpoint folder or registered model name")
    p.add_argument("--direction", help="serve with --load-format rosi and this direction")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--alphas", type=floats, default=None,
                   help="comma list, e.g. 0,16,32,64: sweep the direction over these α (one engine each; 0 = base)")
    p.add_argument("--endpoint", help="OpenAI-compatible base URL instead of a local engine")
    p.add_argument("--served-model", help="model name at the endpoint")
    p.add_argument("--api-key", default=None)
    p.add_argument("--split", default="test", choices=["extraction", "validation", "test"])
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--jailbreak-goals", type=int, default=20, help="harmful goals wrapped in each template")
    p.add_argument("--style-shift", action="store_true",
                   help="also score harmful and benign prompts per request form (question, first person, long, "
                        "story frame; written and Do-Not-Answer sets on test), see rosi_vllm/extraction/forms.py")
    p.add_argument("--xstest", metavar="FILE", nargs="?", const=XSTEST_SHIPPED, default=None,
                   help="report XSTest's safe prompts' refusal rate (no FILE: the shipped copy; FILE: a CSV with "
                        "prompt,type,label columns)")
    p.add_argument("--jailbreak-families", action="store_true",
                   help="also attack with public jailbreak artifacts (GCG suffixes, DAN prompts, past/future tense), "
                        "--jailbreak-goals per family; DAN prompts are long, keep --max-model-len above 1536")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per set")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: the model's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="vLLM memory share (on CPU: of the NUMA node's RAM, for weights and KV cache); default: "
                   "KV cache sized for the evaluated prompts (32 of the longest at once)")
    p.add_argument("--out", required=True, help="JSON path; the PNG is written beside it")
    p.set_defaults(func=cmd_eval)
