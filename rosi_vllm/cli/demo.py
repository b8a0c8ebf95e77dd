"""`rosi demo`: the core path end to end, offline."""

from __future__ import annotations

from pathlib import Path


def cmd_demo(args) -> int:
    from ..tools.demo import run_demo

    return run_demo(Path(args.workdir), alpha=args.alpha)


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="end to end on a locally built model: direction, vLLM base vs rosi")
    p.add_argument("--workdir", default=".rosi-demo")
    p.add_argument("--alpha", type=float, default=8.0)
    p.set_defaults(func=cmd_demo)
