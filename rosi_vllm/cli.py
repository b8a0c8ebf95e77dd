"""The `rosi` command line. Each subcommand is a thin wrapper over one module."""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import sys
from pathlib import Path

from . import __version__
from .architectures import DEFAULT_TARGETS, KNOWN_TARGETS, SandwichNormPolicy
from .errors import RosiError


def _targets(value: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in value.split(",") if t.strip())


def cmd_fingerprint(args) -> int:
    from .fingerprint import fingerprint_checkpoint

    print(fingerprint_checkpoint(args.model))
    return 0


def cmd_inspect(args) -> int:
    from .direction_file import load_direction

    d = load_direction(args.file)
    info = {
        "file": str(args.file),
        "direction_id": d.direction_id,
        "architecture": d.architecture,
        "hidden_size": d.hidden_size,
        "num_layers": d.num_layers,
        "layer": d.layer,
        "recommended_alpha": d.recommended_alpha,
        "model_fingerprint": d.model_fingerprint,
        "norm": float(d.direction.norm()),
        "provenance": d.provenance,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if key == "provenance":
                for pk, pv in value.items():
                    print(f"provenance.{pk}: {pv}")
            else:
                print(f"{key}: {value}")
    return 0


def cmd_direction_import(args) -> int:
    from .checkpoint import model_shape
    from .direction_file import DirectionFile, save_direction
    from .fingerprint import fingerprint_checkpoint
    from .vector_import import read_vector

    shape = model_shape(args.model)
    if not 0 <= args.layer < shape.num_layers:
        raise RosiError(f"rosi: --layer {args.layer} is outside 0..{shape.num_layers - 1}")
    vector = read_vector(args.vector, args.layer)
    if vector.shape[0] != shape.hidden_size:
        raise RosiError(f"rosi: vector has {vector.shape[0]} elements, the model's hidden_size is {shape.hidden_size}")
    source = Path(args.vector)
    direction = DirectionFile(
        direction=vector,
        architecture=shape.architecture,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        layer=args.layer,
        recommended_alpha=args.alpha,
        model_fingerprint=fingerprint_checkpoint(args.model),
        provenance={
            "tool_version": f"rosi-vllm {__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": "import",
            "source_file": source.name,
            "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        },
    )
    path = save_direction(args.out, direction)
    print(f"wrote {path} (direction {direction.direction_id}, layer {args.layer}, alpha {args.alpha:g})")
    return 0


def cmd_inject(args) -> int:
    from .offline import inject_checkpoint

    out, plan = inject_checkpoint(
        args.model,
        args.direction,
        args.out,
        alpha=args.alpha,
        targets=args.targets,
        allow_negative_alpha=args.allow_negative_alpha,
        sandwich_norm=SandwichNormPolicy(args.sandwich_norm),
        verify_fingerprint=not args.no_verify_fingerprint,
    )
    print(plan.summary())
    print(out)
    return 0


def cmd_tiny_model(args) -> int:
    from .tiny_models import build_tiny_model

    print(build_tiny_model(args.family, args.out, layers=args.layers))
    return 0


def cmd_models_pull(args) -> int:
    from .models import pull

    print(pull(args.name, force=args.force))
    return 0


def cmd_models_list(args) -> int:
    from .models import REGISTRY, cache_root

    for name, source in REGISTRY.items():
        local = cache_root() / "models" / name
        state = str(local) if (local / ".rosi-complete").exists() else "not pulled"
        print(f"{name}\t{state}\t{source.note}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), alpha=args.alpha)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rosi", description="Rank-One Safety Injection for vLLM")
    parser.add_argument("--version", action="version", version=f"rosi-vllm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fingerprint", help="print the fp1 fingerprint of a safetensors checkpoint folder")
    p.add_argument("model")
    p.set_defaults(func=cmd_fingerprint)

    p = sub.add_parser("inspect", help="validate a direction file and print its metadata")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    direction = sub.add_parser("direction", help="direction file tools").add_subparsers(dest="sub", required=True)
    p = direction.add_parser("import", help="wrap a vector from another tool as a direction file")
    p.add_argument("--model", required=True, help="checkpoint folder the vector belongs to")
    p.add_argument("--vector", required=True, help=".npy, .safetensors, .pt (weights-only) or GGUF control vector")
    p.add_argument("--layer", required=True, type=int, help="layer the vector was extracted at")
    p.add_argument("--alpha", required=True, type=float, help="recommended alpha to record")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_direction_import)

    p = sub.add_parser("inject", help="write a hardened checkpoint (same math as --load-format rosi)")
    p.add_argument("--model", required=True)
    p.add_argument("--direction", required=True)
    p.add_argument("--alpha", type=float, default=None, help="default: the file's recommended alpha")
    p.add_argument("--out", required=True)
    p.add_argument("--targets", type=_targets, default=DEFAULT_TARGETS, help=f"comma list of {list(KNOWN_TARGETS)}")
    p.add_argument("--allow-negative-alpha", action="store_true", help="permit ablation (removes safety)")
    p.add_argument("--no-verify-fingerprint", action="store_true")
    p.add_argument(
        "--sandwich-norm", default=SandwichNormPolicy.REFUSE.value, choices=[x.value for x in SandwichNormPolicy]
    )
    p.set_defaults(func=cmd_inject)

    models = sub.add_parser("models", help="embedded real models").add_subparsers(dest="sub", required=True)
    p = models.add_parser("pull", help="build a local safetensors folder of a registered model; prints its path last")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=cmd_models_pull)
    p = models.add_parser("list", help="registered models and whether they are pulled")
    p.set_defaults(func=cmd_models_list)

    p = sub.add_parser("tiny-model", help="build a tiny random checkpoint (tests, demos)")
    p.add_argument("--family", default="llama")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_tiny_model)

    p = sub.add_parser("demo", help="end to end on a locally built model: direction, vLLM base vs rosi")
    p.add_argument("--workdir", default=".rosi-demo")
    p.add_argument("--alpha", type=float, default=8.0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RosiError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
