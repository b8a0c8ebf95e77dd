"""`rosi ab report | adapters export | tenants check | tenants schema`: operating the tenant layer."""

from __future__ import annotations

from ._args import floats, model_path, targets


def cmd_ab_report(args) -> int:
    from ..reports.ab import (
        build_report,
        format_report,
        read_metrics_text,
        write_report,
    )

    report = build_report(read_metrics_text(args.metrics), args.tenant, args.experiment, args.control)
    print(format_report(report))
    if args.out:
        json_path, png = write_report(report, args.out)
        print(f"wrote {json_path} and {png}")
    return 0


def cmd_adapters_export(args) -> int:
    from ..core.alpha_policy import check_alpha
    from ..core.loader_config import RosiLoaderConfig
    from ..serving.routing import adapter_name
    from ..serving.variant_adapters import VariantAdapterStore

    for alpha in args.alphas:
        check_alpha(alpha, args.allow_negative_alpha, opt_in="pass --allow-negative-alpha")
    loader_config, _ = RosiLoaderConfig.from_extra_config(
        {"direction": args.direction, **({"targets": list(args.targets)} if args.targets else {})})
    store = VariantAdapterStore(model_path(args.model), loader_config, args.baked_alpha, args.out)
    for alpha in args.alphas:
        path = store.adapter_for(alpha)
        print(f"{adapter_name(alpha)}: {path} (delta {alpha - args.baked_alpha:+g} on weights baked at "
              f"{args.baked_alpha:g})")
    return 0


def cmd_tenants_check(args) -> int:
    from ..serving.tenant_config import load_tenant_config

    config = load_tenant_config(args.config)
    if args.baked_alpha is not None:
        config.check_baked_alpha(args.baked_alpha)
    for line in config.describe():
        print(line)
    return 0


def cmd_tenants_schema(args) -> int:
    from ..serving.tenant_config import tenant_config_schema_json

    print(tenant_config_schema_json(), end="")
    return 0


def add_commands(sub) -> None:
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
    p.add_argument("--alphas", type=floats, required=True, help="comma list of alpha values to export")
    p.add_argument("--targets", type=targets, default=None, help="default: the direction's own writers")
    p.add_argument("--allow-negative-alpha", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_adapters_export)

    tenants = sub.add_parser("tenants", help="tenant config tools").add_subparsers(dest="sub", required=True)
    p = tenants.add_parser("check", help="validate a tenant config as the server would and summarise it")
    p.add_argument("config")
    p.add_argument("--baked-alpha", type=float, default=None, help="also check the served alpha against the bounds")
    p.set_defaults(func=cmd_tenants_check)
    p = tenants.add_parser("schema", help="print the tenant config's JSON Schema (for editors; deploy/tenants.schema.json)")
    p.set_defaults(func=cmd_tenants_schema)
