"""`rosi fingerprint | inspect | direction import | inject`: direction files and hardened checkpoints."""

from __future__ import annotations

import json

from ..core.architectures import KNOWN_TARGETS, SandwichNormPolicy
from ._args import targets


def cmd_fingerprint(args) -> int:
    from ..core.fingerprint import fingerprint_checkpoint

    print(fingerprint_checkpoint(args.model))
    return 0


def cmd_inspect(args) -> int:
    from ..core.direction_file import load_direction

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
        "format_version": d.format_version,
        "read": None,  # the method's, below (kept in this place in the listing)
        "provenance": d.provenance,
        **d.method.inspect(d),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key in ("provenance", "fit"):
            for pk, pv in value.items():
                print(f"{key}.{pk}: {pv}")
        elif key == "gate":
            print("gate (held-out read of each writer's or neuron's input: AUROC harmful vs benign, harmful median, "
                  "benign p95, generated-token p95):")
            for read, stats in sorted(value.items(), key=lambda kv: (int(kv[0].split(".")[0]), kv[0])):
                name = f"read.{read}" if "." in read else f"neuron.{read}"  # v2 keys name a writer, v3 keys a layer
                print(f"  {name}: " + ", ".join(f"{s} {stats[s]:.3g}" for s in GATE_COLUMNS if s in stats))
        else:
            print(f"{key}: {value}")
    return 0


GATE_COLUMNS = ("auroc", "harmful_median", "benign_p95", "generated_p95")


def cmd_direction_import(args) -> int:
    from ..core.direction_file import save_direction
    from ..core.vector_import import import_direction

    direction = import_direction(args.model, args.vector, layer=args.layer, alpha=args.alpha)
    path = save_direction(args.out, direction)
    print(f"wrote {path} (direction {direction.direction_id}, layer {args.layer}, alpha {args.alpha:g})")
    return 0


def cmd_inject(args) -> int:
    from ..core.offline import inject_checkpoint

    out, run = inject_checkpoint(
        args.model, args.direction, args.out, alpha=args.alpha, targets=args.targets,
        allow_negative_alpha=args.allow_negative_alpha, sandwich_norm=SandwichNormPolicy(args.sandwich_norm),
        verify_fingerprint=not args.no_verify_fingerprint,
    )
    print(run.summary())
    print(out)
    return 0


def add_commands(sub) -> None:
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
    p.add_argument("--targets", type=targets, default=None,
                   help=f"comma list of {list(KNOWN_TARGETS)} (default: the direction's own writers)")
    p.add_argument("--allow-negative-alpha", action="store_true", help="permit ablation (removes safety)")
    p.add_argument("--no-verify-fingerprint", action="store_true")
    p.add_argument(
        "--sandwich-norm", default=SandwichNormPolicy.REFUSE.value, choices=[x.value for x in SandwichNormPolicy]
    )
    p.set_defaults(func=cmd_inject)
