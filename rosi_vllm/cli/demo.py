"""`rosi demo`: a real model getting safer, served as production serves it; `--tiny`: the random-model smoke test."""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_demo(args) -> int:
    if args.tiny:
        from ..tools.demo import run_tiny_demo

        return run_tiny_demo(Path(args.workdir) / "tiny", alpha=args.alpha)
    from ..tools.demo import run_demo

    try:
        return run_demo(Path(args.workdir), prompts_per_set=args.prompts, max_tokens=args.max_tokens,
                        host=args.host, port=args.port, keep_serving=args.keep_serving)
    except KeyboardInterrupt:
        print("rosi: demo interrupted; its vLLM server (if started) was stopped", file=sys.stderr)
        return 130


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="serve SmolLM2 unhardened and hardened side by side and compare their answers",
                       description="Pull (or reuse) SmolLM2-135M-Instruct, serve it with the best shipped direction "
                       "through one `vllm serve --load-format rosi` with two tenants (base and hardened), ask "
                       "harmful and benign test-split prompts with each tenant's key, and print the answers side by "
                       "side with refusal rates, the latency ratio and the rosi_* metrics; writes demo.json and "
                       "demo.png into --workdir.")
    p.add_argument("--workdir", default="rosi-demo", help="demo folder: results, tenant config, vLLM log")
    p.add_argument("--prompts", type=int, default=8, metavar="N", help="harmful and benign prompts each (default 8)")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length (the refusal judge reads the opening)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="server port (default: a free one)")
    p.add_argument("--keep-serving", action="store_true",
                   help="leave the server up at the end and print a ready curl command per tenant key")
    p.add_argument("--tiny", action="store_true",
                   help="instead: the random tiny-model walk-through of the loader path (CI smoke test)")
    p.add_argument("--alpha", type=float, default=8.0, help="--tiny only: the random direction's alpha")
    p.set_defaults(func=cmd_demo)
