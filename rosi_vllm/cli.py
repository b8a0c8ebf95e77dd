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


def _model_path(name_or_path: str) -> str:
    """A registered model name (pulled on demand) or a local checkpoint folder."""
    from .models import REGISTRY, pull

    return str(pull(name_or_path)) if name_or_path in REGISTRY else name_or_path


def _floats(value: str) -> list[float]:
    return [float(v) for v in value.split(",") if v.strip()]


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def cmd_extract(args) -> int:
    import json as _json
    import time as _time

    from . import prompts
    from .direction_file import save_direction
    from .extract import extract_directions, extract_refusal_contrast, load_hf_model, resolve_system_prompt
    from .fingerprint import fingerprint_checkpoint
    from .selection import direction_file_for, plot_selection, select

    model = _model_path(args.model)
    harmful = prompts.read_prompt_file(args.harmful) if args.harmful else prompts.harmful("extraction")
    harmless = prompts.read_prompt_file(args.harmless) if args.harmless else prompts.harmless("extraction")
    system_prompt = resolve_system_prompt(args.system_prompt)
    loaded = load_hf_model(model)
    fingerprint = fingerprint_checkpoint(model)
    started = _time.perf_counter()
    if args.method == "refusal-contrast":
        harmful = harmful[: args.n_harmful]
        extraction = extract_refusal_contrast(loaded, harmful, system_prompt=system_prompt,
                                              batch_size=args.batch_size)
        counted = f"{len(harmful)} harmful prompts ({extraction.n_refused} refused, {extraction.n_complied} complied)"
    else:
        harmful, harmless = harmful[: args.n_pairs], harmless[: args.n_pairs]
        extraction = extract_directions(loaded, harmful, harmless, system_prompt=system_prompt,
                                        batch_size=args.batch_size)
        counted = f"{len(harmful)}+{len(harmless)} prompts"
    extract_seconds = _time.perf_counter() - started
    print(f"extracted {loaded.num_layers} layer directions ({args.method}) from {counted} in {extract_seconds:.1f} s")

    layer, alpha, report = args.layer, args.alpha, None
    if layer is None or alpha is None:
        generator = None
        if args.backend == "vllm":
            from .lora_generation import LoraVariantGenerator

            generator = LoraVariantGenerator(model)
        report = select(
            loaded, extraction, prompts.harmful("validation")[: args.val_n], prompts.harmless("validation")[: args.val_n],
            fingerprint=fingerprint, generator=generator, layers=[layer] if layer is not None else args.layers,
            alphas=[alpha] if alpha is not None else args.alphas, stage1_n=args.stage1_n,
            max_new_tokens=args.max_new_tokens, stage1_tokens=args.stage1_tokens, batch_size=args.batch_size,
        )
        layer, alpha = report.best.layer, report.best.alpha
        print(f"selected layer {layer}, alpha {alpha:g}: {report.best.to_dict()}")
    direction = direction_file_for(loaded, extraction, layer, alpha, fingerprint)
    direction.provenance["extract_seconds"] = f"{extract_seconds:.2f}"
    path = save_direction(args.out, direction)
    if report is not None:
        report_dir = Path(args.report_dir or Path(args.out).with_suffix(""))
        report_dir.mkdir(parents=True, exist_ok=True)
        payload = {"model": args.model, "direction_file": str(path), "extract_seconds": extract_seconds,
                   "method": args.method, "system_prompt": args.system_prompt, "n_harmful": len(harmful),
                   "n_refused": extraction.n_refused, "n_complied": extraction.n_complied, **report.to_dict()}
        (report_dir / "selection.json").write_text(_json.dumps(payload, indent=2) + "\n")
        plot_selection(report, report_dir / "selection.png")
        print(f"report: {report_dir / 'selection.json'} and selection.png")
    print(f"wrote {path} (direction {direction.direction_id}, layer {layer}, alpha {alpha:g})")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import run_eval, write_report

    if args.direction and args.endpoint:
        raise RosiError("rosi: --direction applies to a local engine; an endpoint serves what it serves")
    model = _model_path(args.model) if args.model else None
    if model is None and not args.endpoint:
        raise RosiError("rosi: give --model (local engine) or --endpoint")
    result = run_eval(model=model, direction=args.direction, alpha=args.alpha, endpoint=args.endpoint,
                      served_model=args.served_model, api_key=args.api_key, split=args.split,
                      max_tokens=args.max_tokens, jailbreak_goals=args.jailbreak_goals, limit=args.limit,
                      tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
                      gpu_memory_utilization=args.gpu_memory_utilization)
    label = f"rosi alpha={result['alpha']:g}" if args.direction else "base"
    write_report(result, args.out, label)
    for key in ("harmful_refusal", "benign_refusal", "jailbreak_attack_success", "degenerate"):
        r = result[key]
        print(f"{key}: {r['rate']:.3f} ({r['k']}/{r['n']}, 95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})")
    if "benign_kl_nats" in result:
        print(f"benign_kl_nats: {result['benign_kl_nats']:.4f}")
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")
    return 0


def cmd_ab_report(args) -> int:
    from .serving.ab_report import build_report, format_report, read_metrics_text, write_report

    report = build_report(read_metrics_text(args.metrics), args.tenant, args.experiment, args.control)
    print(format_report(report))
    if args.out:
        json_path, png = write_report(report, args.out)
        print(f"wrote {json_path} and {png}")
    return 0


def cmd_adapters_export(args) -> int:
    from .loader_config import RosiLoaderConfig
    from .serving.routing import adapter_name
    from .serving.variant_adapters import VariantAdapterStore

    loader_config, _ = RosiLoaderConfig.from_extra_config(
        {"direction": args.direction, "targets": list(args.targets)})
    store = VariantAdapterStore(_model_path(args.model), loader_config, args.baked_alpha, args.out)
    for alpha in args.alphas:
        if alpha < 0 and not args.allow_negative_alpha:
            raise RosiError(f"rosi: alpha={alpha:g} is negative, which ablates (removes) the safety direction; "
                            "pass --allow-negative-alpha to do this deliberately")
        path = store.adapter_for(alpha)
        print(f"{adapter_name(alpha)}: {path} (delta {alpha - args.baked_alpha:+g} on weights baked at "
              f"{args.baked_alpha:g})")
    return 0


def cmd_tenants_check(args) -> int:
    from .serving.tenant_config import load_tenant_config

    config = load_tenant_config(args.config)
    baked = args.baked_alpha
    if baked is not None:
        config.check_baked_alpha(baked)
    for name, tenant in sorted(config.tenants.items()):
        variants = ", ".join(f"{v}={'baked' if config.variants[v] == 'baked' else config.variants[v]}"
                             for v in tenant.allowed_variants)
        line = f"{name}: default {tenant.default_variant}; may name: {variants}"
        if tenant.experiment:
            arms = ", ".join(f"{v} {p:g}%" for v, p in tenant.experiment.arms)
            line += f"; experiment {tenant.experiment.name}: {arms}"
        print(line)
    print(f"ok: {len(config.tenants)} tenants, {len(config.variants)} variants (sha256 {config.source_sha256[:12]})")
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

    p = sub.add_parser("extract", help="extract a refusal direction; select layer and alpha on validation prompts")
    p.add_argument("--model", required=True, help="checkpoint folder or registered model name")
    p.add_argument("--out", required=True)
    p.add_argument("--harmful", help="file, one instruction per line (default: packaged extraction split)")
    p.add_argument("--harmless", help="file, one instruction per line (default: packaged extraction split)")
    p.add_argument("--method", default="mean-diff", choices=["mean-diff", "refusal-contrast"],
                   help="mean-diff: harmful - harmless (the paper); refusal-contrast: harmful the model refused - "
                   "harmful it complied with (see rosi_vllm/extract.py)")
    p.add_argument("--n-pairs", type=int, default=50, help="mean-diff: prompts per set")
    p.add_argument("--n-harmful", type=int, default=200, help="refusal-contrast: harmful prompts to answer and split")
    p.add_argument("--layer", type=int, default=None, help="fix the layer (default: select)")
    p.add_argument("--alpha", type=float, default=None, help="fix alpha (default: select)")
    p.add_argument("--layers", type=_ints, default=None, help="candidate layers, comma list")
    p.add_argument("--alphas", type=_floats, default=None, help="candidate alphas, comma list")
    p.add_argument("--system-prompt", default="none", help="safety | none | FILE (extraction only)")
    p.add_argument("--val-n", type=int, default=60, help="validation prompts per set (stage 2)")
    p.add_argument("--stage1-n", type=int, default=24, help="validation prompts per set (stage 1 grid)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="completion length for stage 2")
    p.add_argument("--stage1-tokens", type=int, default=16, help="completion length for the stage 1 grid")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--report-dir", default=None)
    p.add_argument("--backend", default="hf", choices=["vllm", "hf"],
                   help="generation for selection: hf (edit in place; default) or vllm (experimental, not covered by "
                   "CI: all candidates as LoRA adapters on one engine; on CPU, adapter requests ran at 0.5-0.7x of "
                   "baked throughput in benchmark P3, and each new adapter costs a load)")
    p.set_defaults(func=cmd_extract)

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

    ab = sub.add_parser("ab", help="A/B experiments").add_subparsers(dest="sub", required=True)
    p = ab.add_parser("report", help="per-arm refusal (95%% CI), difference and significance, latency ratios")
    p.add_argument("--metrics", required=True, help="the server's /metrics URL, or a saved scrape")
    p.add_argument("--tenant", required=True)
    p.add_argument("--experiment", required=True)
    p.add_argument("--control", default=None, help="control arm (default: 'base' if present)")
    p.add_argument("--out", default=None, help="JSON path; the PNG is written beside it")
    p.set_defaults(func=cmd_ab_report)

    adapters = sub.add_parser("adapters", help="per-tenant alpha as PEFT rank-1 LoRA adapters").add_subparsers(
        dest="sub", required=True)
    p = adapters.add_parser("export", help="write PEFT adapters that move weights baked at --baked-alpha to each alpha")
    p.add_argument("--model", required=True, help="the *unedited* checkpoint (w̄ comes from it)")
    p.add_argument("--direction", required=True)
    p.add_argument("--baked-alpha", type=float, required=True, help="alpha the server bakes in (0: unhardened)")
    p.add_argument("--alphas", type=_floats, required=True, help="comma list of alpha values to export")
    p.add_argument("--targets", type=_targets, default=DEFAULT_TARGETS)
    p.add_argument("--allow-negative-alpha", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_adapters_export)

    tenants = sub.add_parser("tenants", help="tenant config tools").add_subparsers(dest="sub", required=True)
    p = tenants.add_parser("check", help="validate a tenant config as the server would and summarise it")
    p.add_argument("config")
    p.add_argument("--baked-alpha", type=float, default=None, help="also check the served alpha against the bounds")
    p.set_defaults(func=cmd_tenants_check)

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
