"""The `rosi` command line: wiring only. Each command group is a module; each command calls one library function."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..core.errors import RosiError
from . import demo, direction, evaluate, extract, harden, models, serving

COMMAND_GROUPS = (direction, models, extract, harden, evaluate, serving, demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosi", description="Rank-One Safety Injection for vLLM")
    parser.add_argument("--version", action="version", version=f"rosi-vllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RosiError as exc:
        print(str(exc), file=sys.stderr)
        return 2
