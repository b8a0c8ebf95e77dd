"""`rosi models pull | list` and `rosi tiny-model`: checkpoints to work on."""

from __future__ import annotations


def cmd_models_pull(args) -> int:
    from ..tools.models import pull

    print(pull(args.name, force=args.force))
    return 0


def cmd_models_list(args) -> int:
    from ..tools.models import REGISTRY, cache_root

    for name, source in REGISTRY.items():
        local = cache_root() / "models" / name
        state = str(local) if (local / ".rosi-complete").exists() else "not pulled"
        print(f"{name}\t{state}\t{source.note}")
    return 0


def cmd_tiny_model(args) -> int:
    from ..testing.tiny_models import build_tiny_model

    print(build_tiny_model(args.family, args.out, layers=args.layers))
    return 0


def add_commands(sub) -> None:
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
