"""The tenant config (YAML): who may call, which α each caller gets, and A/B experiments.

Pure parsing and validation, no vLLM. Parsed strictly, for the same reason as
the loader config: a typo silently ignored would serve a tenant a different
safety level than the operator believes. Every problem is collected into one
`RosiError` so an operator fixes a bad file in one pass.

Example (all keys shown)::

    version: 1
    alpha_bounds: {min: 0, max: 256}   # every variant's α must lie inside
    allow_negative_alpha: false        # negative α ablates safety; refused unless true
    user_header: x-rosi-user           # sticky A/B key when the body has no "user"
    variants:                          # named α values; "baked" = the loader's α (zero overhead)
      base: 0
      standard: baked
      strict: 96
    tenants:
      acme:
        api_key_sha256: ["<64 hex>"]   # sha256 of the key; the key itself never sits in the file
        api_key_env: [ACME_API_KEY]    # or: read the key from this environment variable at load
        default_variant: standard
        allowed_variants: [standard, strict]   # what the tenant may name in "model"
        experiment:                    # optional: split this tenant's traffic by end user
          name: acme-hardening-1
          arms: {base: 50, standard: 50}       # variant: percent, sums to 100

A variant's α is either a number or ``baked``. The base model is an ordinary
variant with α = 0; a tenant reaches it only if the operator lists it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..alpha_policy import alpha_problem
from ..errors import RosiError

TENANT_OPT_IN = "set allow_negative_alpha: true"

CONFIG_VERSION = 1
BAKED = "baked"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TOP_KEYS = {"version", "alpha_bounds", "allow_negative_alpha", "user_header", "variants", "tenants"}
_TENANT_KEYS = {"api_key_sha256", "api_key_env", "default_variant", "allowed_variants", "experiment"}
_EXPERIMENT_KEYS = {"name", "arms"}


def key_digest(api_key: str) -> str:
    """sha256 hex of an API key: what the config stores and what requests are matched by."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Experiment:
    name: str
    #: (variant name, percent) in config order; percents sum to 100
    arms: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Tenant:
    name: str
    default_variant: str
    allowed_variants: tuple[str, ...]
    experiment: Experiment | None = None


@dataclass(frozen=True)
class TenantConfig:
    variants: dict[str, float | str]  # name → α, or BAKED
    tenants: dict[str, Tenant]
    key_digests: dict[str, str]  # sha256(key) → tenant name
    alpha_min: float = 0.0
    alpha_max: float = math.inf
    allow_negative_alpha: bool = False
    user_header: str = "x-rosi-user"
    source_sha256: str = field(default="", compare=False)

    def tenant_for_key(self, api_key: str | None) -> Tenant | None:
        if not api_key:
            return None
        name = self.key_digests.get(key_digest(api_key))
        return self.tenants[name] if name else None

    def alpha_of(self, variant: str, baked_alpha: float) -> float:
        value = self.variants[variant]
        return baked_alpha if value == BAKED else float(value)

    def describe(self) -> list[str]:
        """One line per tenant (what it may name, its experiment), then a summary line: `rosi tenants check`."""
        lines = []
        for name, tenant in sorted(self.tenants.items()):
            variants = ", ".join(f"{v}={'baked' if self.variants[v] == BAKED else self.variants[v]}"
                                 for v in tenant.allowed_variants)
            line = f"{name}: default {tenant.default_variant}; may name: {variants}"
            if tenant.experiment:
                arms = ", ".join(f"{v} {p:g}%" for v, p in tenant.experiment.arms)
                line += f"; experiment {tenant.experiment.name}: {arms}"
            lines.append(line)
        lines.append(f"ok: {len(self.tenants)} tenants, {len(self.variants)} variants "
                     f"(sha256 {self.source_sha256[:12]})")
        return lines

    def check_baked_alpha(self, baked_alpha: float) -> None:
        """The loader's α must itself satisfy the operator's bounds (checked once the engine is known)."""
        problems: list[str] = []
        _check_alpha_value("baked", baked_alpha, self, problems)
        if problems:
            raise RosiError("rosi: tenant config does not fit the served model: " + "; ".join(problems))


def load_tenant_config(path: str | Path, environ: dict[str, str] | None = None) -> TenantConfig:
    """Read and validate a tenant config file; raises `RosiError` listing every problem."""
    import yaml

    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise RosiError(f"rosi: cannot read tenant config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(raw_bytes)
    except yaml.YAMLError as exc:
        raise RosiError(f"rosi: tenant config {path} is not valid YAML: {exc}") from None
    config = parse_tenant_config(data, environ=environ)
    return _with_source(config, hashlib.sha256(raw_bytes).hexdigest())


def _with_source(config: TenantConfig, digest: str) -> TenantConfig:
    import dataclasses

    return dataclasses.replace(config, source_sha256=digest)


def parse_tenant_config(data: Any, environ: dict[str, str] | None = None) -> TenantConfig:
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    if not isinstance(data, dict):
        raise RosiError("rosi: tenant config must be a YAML mapping")
    _unknown(data, _TOP_KEYS, "top level", problems)
    if data.get("version") != CONFIG_VERSION:
        problems.append(f"version must be {CONFIG_VERSION}, got {data.get('version')!r}")

    allow_negative = data.get("allow_negative_alpha", False)
    if not isinstance(allow_negative, bool):
        problems.append(f"allow_negative_alpha must be true or false, got {allow_negative!r}")
        allow_negative = False
    alpha_min, alpha_max = _bounds(data.get("alpha_bounds", {}), problems)
    if alpha_min < 0 and not allow_negative:
        problems.append(f"alpha_bounds.min={alpha_min:g} is negative; negative alpha removes safety and needs "
                        "allow_negative_alpha: true")
    user_header = data.get("user_header", "x-rosi-user")
    if not isinstance(user_header, str) or not re.fullmatch(r"[A-Za-z0-9-]+", user_header):
        problems.append(f"user_header must be an HTTP header name, got {user_header!r}")
        user_header = "x-rosi-user"

    partial = TenantConfig({}, {}, {}, alpha_min, alpha_max, allow_negative, user_header.lower())
    variants = _variants(data.get("variants"), partial, problems)
    tenants, digests = _tenants(data.get("tenants"), variants, environ, problems)
    if problems:
        raise RosiError("rosi: invalid tenant config: " + "; ".join(problems))
    return TenantConfig(variants, tenants, digests, alpha_min, alpha_max, allow_negative, user_header.lower())


def _unknown(mapping: dict, known: set[str], where: str, problems: list[str]) -> None:
    extra = sorted(set(map(str, mapping)) - known)
    if extra:
        problems.append(f"unknown key(s) {extra} at {where} (known: {sorted(known)})")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _bounds(raw: Any, problems: list[str]) -> tuple[float, float]:
    if not isinstance(raw, dict):
        problems.append(f"alpha_bounds must be a mapping with min and max, got {raw!r}")
        return 0.0, math.inf
    _unknown(raw, {"min", "max"}, "alpha_bounds", problems)
    lo = _number(raw.get("min", 0))
    hi = _number(raw.get("max", math.inf))
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi) or lo > hi:
        problems.append(f"alpha_bounds must be numbers with min <= max, got {raw!r}")
        return 0.0, math.inf
    return lo, hi


def _check_alpha_value(name: str, alpha: float, config: TenantConfig, problems: list[str]) -> None:
    if (problem := alpha_problem(alpha, config.allow_negative_alpha, opt_in=TENANT_OPT_IN)):
        problems.append(f"variant {name!r}: {problem}")
    elif not config.alpha_min <= alpha <= config.alpha_max:
        problems.append(f"variant {name!r}: alpha={alpha:g} is outside alpha_bounds "
                        f"[{config.alpha_min:g}, {config.alpha_max:g}]")


def _variants(raw: Any, config: TenantConfig, problems: list[str]) -> dict[str, float | str]:
    if not isinstance(raw, dict) or not raw:
        problems.append("variants must be a non-empty mapping of name: alpha (a number or 'baked')")
        return {}
    variants: dict[str, float | str] = {}
    for name, value in raw.items():
        name = str(name)
        if not _NAME.match(name):
            problems.append(f"variant name {name!r} must match {_NAME.pattern}")
            continue
        if value == BAKED:
            variants[name] = BAKED
            continue
        alpha = _number(value)
        if alpha is None:
            problems.append(f"variant {name!r}: alpha must be a number or 'baked', got {value!r}")
            continue
        _check_alpha_value(name, alpha, config, problems)
        variants[name] = alpha
    return variants


def _tenants(raw: Any, variants: dict, environ, problems: list[str]) -> tuple[dict[str, Tenant], dict[str, str]]:
    if not isinstance(raw, dict) or not raw:
        problems.append("tenants must be a non-empty mapping")
        return {}, {}
    tenants: dict[str, Tenant] = {}
    digests: dict[str, str] = {}
    for name, body in raw.items():
        name = str(name)
        where = f"tenant {name!r}"
        if not _NAME.match(name):
            problems.append(f"tenant name {name!r} must match {_NAME.pattern}")
            continue
        if not isinstance(body, dict):
            problems.append(f"{where} must be a mapping")
            continue
        _unknown(body, _TENANT_KEYS, where, problems)
        for digest in _key_digests(body, where, environ, problems):
            if digest in digests:
                # Never print the key or its digest: name the tenants only.
                problems.append(f"{where} shares an API key with tenant {digests[digest]!r}")
            digests[digest] = name
        default = body.get("default_variant")
        if default not in variants:
            problems.append(f"{where}: default_variant {default!r} is not a defined variant")
        allowed = body.get("allowed_variants", [default])
        if not isinstance(allowed, list) or not all(v in variants for v in allowed):
            problems.append(f"{where}: allowed_variants must list defined variants, got {allowed!r}")
            allowed = []
        experiment = _experiment(body.get("experiment"), variants, where, problems)
        tenants[name] = Tenant(name, str(default), tuple(allowed), experiment)
    return tenants, digests


def _key_digests(body: dict, where: str, environ, problems: list[str]) -> list[str]:
    digests = []
    hashed = body.get("api_key_sha256", [])
    env_names = body.get("api_key_env", [])
    if isinstance(hashed, str):
        hashed = [hashed]
    if isinstance(env_names, str):
        env_names = [env_names]
    if not isinstance(hashed, list) or not isinstance(env_names, list):
        problems.append(f"{where}: api_key_sha256 and api_key_env must be lists")
        return []
    for value in hashed:
        if isinstance(value, str) and _HEX64.match(value.lower()):
            digests.append(value.lower())
        else:
            problems.append(f"{where}: api_key_sha256 entries must be 64 hex characters (sha256 of the key)")
    for env in env_names:
        if not isinstance(env, str) or not _ENV.match(env):
            problems.append(f"{where}: api_key_env entries must be environment variable names")
        elif not environ.get(env):
            problems.append(f"{where}: environment variable {env} (API key) is not set or empty")
        else:
            digests.append(key_digest(environ[env]))
    if not digests and not any(p.startswith(where) for p in problems):
        problems.append(f"{where} has no API key (api_key_sha256 or api_key_env)")
    return digests


def _experiment(raw: Any, variants: dict, where: str, problems: list[str]) -> Experiment | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.append(f"{where}: experiment must be a mapping with name and arms")
        return None
    _unknown(raw, _EXPERIMENT_KEYS, f"{where} experiment", problems)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"{where}: experiment name must match {_NAME.pattern}, got {name!r}")
        return None
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, dict) or len(arms_raw) < 2:
        problems.append(f"{where}: experiment {name!r} needs at least two arms (variant: percent)")
        return None
    arms = []
    for variant, percent in arms_raw.items():
        value = _number(percent)
        if variant not in variants:
            problems.append(f"{where}: experiment arm {variant!r} is not a defined variant")
        elif value is None or not value > 0:
            problems.append(f"{where}: experiment arm {variant!r} needs a positive percent, got {percent!r}")
        else:
            arms.append((str(variant), value))
    total = sum(p for _, p in arms)
    if len(arms) == len(arms_raw) and abs(total - 100.0) > 1e-6:
        problems.append(f"{where}: experiment {name!r} arm percents sum to {total:g}, not 100")
    return Experiment(name, tuple(arms))
