"""`rosi eval`: refusal, over-refusal, jailbreak success and KL of a model, base or hardened."""

from __future__ import annotations

from pathlib import Path

from ..errors import RosiError
from ._args import model_path


def cmd_eval(args) -> int:
    from ..extraction.evaluate import print_summary, run_eval, write_report

    if args.direction and args.endpoint:
        raise RosiError("rosi: --direction applies to a local engine; an endpoint serves what it serves")
    model = model_path(args.model) if args.model else None
    if model is None and not args.endpoint:
        raise RosiError("rosi: give --model (local engine) or --endpoint")
    result = run_eval(model=model, direction=args.direction, alpha=args.alpha, endpoint=args.endpoint,
                      served_model=args.served_model, api_key=args.api_key, split=args.split,
                      max_tokens=args.max_tokens, jailbreak_goals=args.jailbreak_goals, limit=args.limit,
                      tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                      gpu_memory_utilization=args.gpu_memory_utilization)
    label = f"rosi alpha={result['alpha']:g}" if args.direction else "base"
    write_report(result, args.out, label)
    print_summary(result)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="refusal / over-refusal / jailbreak / KL of a model, base or rosi")
    p.add_argument("--model", help="checkpoint folder or registered model name")
    p.add_argument("--direction", help="serve with --load-format rosi and this direction")
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--endpoint", help="OpenAI-compatible base URL instead of a local engine")
    p.add_argument("--served-model", help="model name at the endpoint")
    p.add_argument("--api-key", default=None)
    p.add_argument("--split", default="test", choices=["extraction", "validation", "test"])
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--jailbreak-goals", type=int, default=20, help="harmful goals wrapped in each template")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts per set")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM context length (default: the model's)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5,
                   help="vLLM memory share (on CPU: of the NUMA node's RAM, for weights and KV cache)")
    p.add_argument("--out", required=True, help="JSON path; the PNG is written beside it")
    p.set_defaults(func=cmd_eval)
