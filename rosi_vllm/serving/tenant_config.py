"""The tenant config (YAML): who may call, which α each caller gets, and A/B experiments.

Pure parsing and validation, no vLLM. Parsed strictly (pydantic, unknown keys
refused, booleans must be booleans), for the same reason as the loader config:
a typo silently ignored would serve a tenant a different safety level than the
operator believes. Every problem is collected into one `RosiError` so an
operator fixes a bad file in one pass. `rosi tenants schema` prints the JSON
Schema of the file (shipped as deploy/tenants.schema.json) for editors.

Example (all keys shown)::

    version: 1
    alpha_bounds: {min: 0, max: 256}   # every variant's α must lie inside
    allow_negative_alpha: false        # negative α ablates safety; refused unless true
    user_header: x-rosi-user           # sticky A/B key when the body has no "user"
    max_body_bytes: 8388608            # larger request bodies are answered 413, before parsing
    judge_sample_rate: 1.0             # share of responses the refusal judge reads (rates stay unbiased)
    policies:                          # request shapes a weight edit cannot defend; defaults: refused
      assistant_prefill: deny          # chat requests that pre-write the reply (deny | allow)
      raw_completions: deny            # /v1/completions with a raw prompt (deny | allow)
      control_tokens_in_content: reject  # the model's special-token strings in messages (reject | allow)
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
        policies: {raw_completions: allow}     # overrides the config-level policies, key by key
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from ..core.alpha_policy import alpha_problem
from ..core.errors import RosiError
from .limits import TenantLimits
from .request_policy import SAFE_DEFAULTS, RequestPolicies

TENANT_OPT_IN = "set allow_negative_alpha: true"

CONFIG_VERSION = 1
BAKED = "baked"
#: default cap on a request body (bytes), checked before it is read or parsed; vLLM prompts of a full
#: context are far below it, images sent as base64 may need more (max_body_bytes)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


def key_digest(api_key: str) -> str:
    """sha256 hex of an API key: what the config stores and what requests are matched by."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


# ---- the parsed result (what routing and the service use) ---------------------------------------------------------

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
    limits: TenantLimits = TenantLimits()
    priority: int = 0  # vLLM's request priority (lower = scheduled earlier); 0 unless the tenant sets it
    policies: RequestPolicies = SAFE_DEFAULTS  # request shapes served (request_policy.py)


@dataclass(frozen=True)
class TenantConfig:
    variants: dict[str, float | str]  # name → α, or BAKED
    tenants: dict[str, Tenant]
    key_digests: dict[str, str]  # sha256(key) → tenant name
    alpha_min: float = 0.0
    alpha_max: float = math.inf
    allow_negative_alpha: bool = False
    user_header: str = "x-rosi-user"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    judge_sample_rate: float = 1.0
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
            if tenant.limits.max_concurrent_requests is not None:
                line += f"; at most {tenant.limits.max_concurrent_requests} concurrent requests"
            if tenant.limits.tokens_per_minute is not None:
                line += f"; {tenant.limits.tokens_per_minute} tokens/min"
            if tenant.priority:
                line += f"; priority {tenant.priority}"
            if relaxed := tenant.policies.relaxed():
                line += f"; allows {', '.join(relaxed)}"
            lines.append(line)
        lines.append(f"ok: {len(self.tenants)} tenants, {len(self.variants)} variants "
                     f"(sha256 {self.source_sha256[:12]})")
        return lines

    def check_baked_alpha(self, baked_alpha: float) -> None:
        """The loader's α must itself satisfy the operator's bounds (checked once the engine is known)."""
        problem = _variant_alpha_problem(baked_alpha, self.alpha_min, self.alpha_max, self.allow_negative_alpha)
        if problem:
            raise RosiError(f"rosi: tenant config does not fit the served model: variant 'baked': {problem}")


# ---- the file's schema: pydantic models; messages are translated to operator language by _problems -----------------

def _must(expect: str, show: bool = True) -> WrapValidator:
    """A wrong value here reads "<where> must be <expect>, got <value>" (pydantic's own messages are for developers).

    Only errors about the value itself are rewritten; errors inside it (a nested mapping) pass through.
    `show=False` for values that may be secrets (a pasted API key).
    """
    def wrap(value, handler):
        try:
            return handler(value)
        except ValidationError as exc:
            if any(err["input"] is not value for err in exc.errors()):
                raise
            got = f", got {value!r}" if show else ""
            raise PydanticCustomError("rosi_must", "must be {expect}{got}", {"expect": expect, "got": got}) from None
    return WrapValidator(wrap)


def _rules(problems: list[str]) -> None:
    """Raise the cross-field problems found at one place in the file (each is prefixed with where)."""
    if problems:
        raise PydanticCustomError("rosi_rules", "{problems}", {"problems": tuple(problems)})


Name = Annotated[str, Field(pattern=_NAME), _must(f"a name matching {_NAME}")]
PositiveInt = Annotated[int, Field(ge=1, le=2**31 - 1), _must("a positive whole number")]
Number = Annotated[float, _must("a number")]
_Hex64 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$"), AfterValidator(str.lower),
                   _must("64 hex characters (sha256 of the key)", show=False)]
_EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
                     _must("an environment variable name", show=False)]


def _one_or_list(item):
    """A list of `item`; a single item may be written without the brackets."""
    return Annotated[list[item], BeforeValidator(lambda v: [v] if isinstance(v, str) else v,
                                                 json_schema_input_type=item | list[item]),
                     _must("a list")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class AlphaBounds(_Strict):
    """The range every variant's α must lie in."""

    min: Number = Field(0.0, description="Smallest α a variant (and the loader's baked α) may have.")
    max: Annotated[float | None, _must("a number or null")] = Field(None, description="Largest α a variant may have; absent or null: no upper bound.")


class ExperimentSpec(_Strict):
    """An A/B split of a tenant's traffic, sticky per end user."""

    name: Name = Field(description="Experiment name: a label in metrics and the A/B report.")
    arms: Annotated[dict[str, Annotated[float, Field(gt=0), _must("a positive percent")]], Field(min_length=2),
                    _must("a mapping of at least two arms (variant: percent)")] = Field(
        description="variant: percent of this tenant's end users (bucketed by user id); percents sum to 100.")


class LimitsSpec(_Strict):
    """Per-tenant admission limits (per API-server process); exceeding one is answered 429 with Retry-After."""

    max_concurrent_requests: PositiveInt | None = Field(
        None, description="Requests of this tenant running at once; more are answered 429 (type 'requests').")
    tokens_per_minute: PositiveInt | None = Field(
        None, description="Prompt + completion tokens per minute (token bucket, charged max_tokens + body/4 at "
                          "admission, corrected to the reported usage); more are answered 429 (type 'tokens').")


_Deny = Annotated[Literal["deny", "allow"] | None, _must("deny or allow")]


class PoliciesSpec(_Strict):
    """Request shapes a weight edit cannot defend against; absent keys: the config-level value, else refused."""

    assistant_prefill: _Deny = Field(
        None, description="deny (default): chat requests that pre-write the reply (last message the assistant's, "
                          "continue_final_message: true, add_generation_prompt: false) are answered 400; allow: "
                          "served.")
    raw_completions: _Deny = Field(
        None, description="deny (default): /v1/completions (a raw prompt, which can contain a half-written "
                          "assistant turn) is answered 400; allow: served.")
    control_tokens_in_content: Annotated[Literal["reject", "allow"] | None, _must("reject or allow")] = Field(
        None, description="reject (default): chat messages, tools or template arguments containing the served "
                          "tokenizer's special/added token strings (forged turns) are answered 400; allow: served.")


def _resolve_policies(*layers: PoliciesSpec) -> RequestPolicies:
    """The first value set, tenant before config level, else the safe default: one place for the precedence."""
    values = {}
    for name in PoliciesSpec.model_fields:
        values[name] = next((v for layer in layers if (v := getattr(layer, name)) is not None),
                            getattr(SAFE_DEFAULTS, name))
    return RequestPolicies(**values)


class TenantSpec(_Strict):
    """One caller: its API key(s), the variant it gets and the variants it may name."""

    api_key_sha256: _one_or_list(_Hex64) = Field(
        [], description="sha256 hex of the tenant's API key(s); the key itself never sits in the file.")
    api_key_env: _one_or_list(_EnvName) = Field(
        [], description="Environment variable(s) holding the tenant's API key, read when the file is loaded.")
    default_variant: Annotated[str, _must("a variant name")] = Field(
        description="Variant served when the request's model is the served model's name (or absent).")
    allowed_variants: Annotated[list[str], _must("a list of variant names")] | None = Field(
        None, description='Variants the tenant may name in "model"; default: only default_variant.')
    experiment: ExperimentSpec | None = Field(
        None, description="Optional A/B split of this tenant's traffic by end user (requests naming a variant "
                          "are not split).")
    limits: LimitsSpec = Field(LimitsSpec(), description="Admission limits; absent: unlimited.")
    priority: Annotated[int, Field(ge=-1000, le=1000), _must("a whole number from -1000 to 1000")] = Field(
        0, description="vLLM scheduling priority of this tenant's requests (lower = earlier; needs vllm serve "
                       "--scheduling-policy priority when not 0). Clients cannot set their own.")
    policies: PoliciesSpec = Field(PoliciesSpec(), description="This tenant's request policies; a key absent "
                                                               "here takes the config-level policies' value.")


def _variant_alpha_problem(alpha: float, lo: float, hi: float | None, allow_negative: bool) -> str | None:
    if problem := alpha_problem(alpha, allow_negative, opt_in=TENANT_OPT_IN):
        return problem
    hi = math.inf if hi is None else hi
    if not lo <= alpha <= hi:
        return f"alpha={alpha:g} is outside alpha_bounds [{lo:g}, {hi:g}]"
    return None


def _check_bounds(bounds: AlphaBounds, info) -> AlphaBounds:
    if math.isnan(bounds.min) or (bounds.max is not None and not bounds.min <= bounds.max):
        _rules([f"must be numbers with min <= max, got {bounds.model_dump()}"])
    if bounds.min < 0 and not info.data.get("allow_negative_alpha"):
        _rules([f"min={bounds.min:g} is negative; negative alpha removes safety and needs allow_negative_alpha: true"])
    return bounds


def _check_variant(value: float | str, info) -> float | str:
    if value != BAKED:
        bounds = info.data.get("alpha_bounds", AlphaBounds())
        _rules([p for p in [_variant_alpha_problem(value, bounds.min, bounds.max,
                                                   info.data.get("allow_negative_alpha", False))] if p])
    return value


def _digests(spec: TenantSpec, environ) -> list[str]:
    return spec.api_key_sha256 + [key_digest(environ[env]) for env in spec.api_key_env if environ.get(env)]


def _check_tenant(spec: TenantSpec, info) -> TenantSpec:
    problems = [f"environment variable {env} (API key) is not set or empty"
                for env in spec.api_key_env if not info.context["environ"].get(env)]
    if not spec.api_key_sha256 and not spec.api_key_env:
        problems.append("has no API key (api_key_sha256 or api_key_env)")
    arms = spec.experiment.arms if spec.experiment else {}
    if (variants := info.data.get("variants")) is not None:  # else its own errors are reported
        if spec.default_variant not in variants:
            problems.append(f"default_variant {spec.default_variant!r} is not a defined variant")
        if spec.allowed_variants is not None and not set(spec.allowed_variants) <= set(variants):
            problems.append(f"allowed_variants must list defined variants, got {spec.allowed_variants!r}")
        problems += [f"experiment arm {arm!r} is not a defined variant" for arm in arms if arm not in variants]
    if arms and abs(sum(arms.values()) - 100.0) > 1e-6:
        problems.append(f"experiment {spec.experiment.name!r} arm percents sum to {sum(arms.values()):g}, not 100")
    _rules(problems)
    return spec


def _check_shared_keys(tenants: dict[str, TenantSpec], info) -> dict[str, TenantSpec]:
    owner: dict[str, str] = {}
    problems = []
    for name, spec in tenants.items():
        for digest in _digests(spec, info.context["environ"]):
            if digest in owner:  # never print the key or its digest: name the tenants only
                problems.append(f"tenant {name!r} shares an API key with tenant {owner[digest]!r}")
            owner[digest] = name
    _rules(problems)
    return tenants


class TenantFile(_Strict):
    """A rosi tenant config: API keys → tenants → the α (variant) each request is served with, and A/B splits."""

    model_config = ConfigDict(title="rosi tenant config")

    version: Annotated[Literal[1], _must("1")] = Field(description="Format version; must be 1.")
    allow_negative_alpha: Annotated[bool, _must("true or false")] = Field(
        False, description="Allow negative α (ablates the safety direction). Refused unless true.")
    alpha_bounds: Annotated[AlphaBounds, AfterValidator(_check_bounds)] = Field(
        AlphaBounds(), description="Every variant's α, and the loader's baked α, must lie inside [min, max].")
    user_header: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$"), AfterValidator(str.lower),
                           _must("an HTTP header name")] = Field(
        "x-rosi-user", description='Header with the end-user id for sticky A/B assignment when the body has no "user".')
    max_body_bytes: Annotated[int, Field(ge=1024, le=2**31 - 1), _must("a whole number of bytes >= 1024")] = Field(
        DEFAULT_MAX_BODY_BYTES, description="Largest request body accepted (413 beyond it), checked before the body "
                                            "is read or parsed.")
    judge_sample_rate: Annotated[float, Field(gt=0, le=1), _must("a number in (0, 1]")] = Field(
        1.0, description="Share of successful responses whose text the refusal judge reads (chosen at random per "
                         "request). Below 1 the refusal *rate* stays unbiased and the layer's per-request work "
                         "shrinks (it neither keeps nor decodes the text of the others); counts, tokens and "
                         "latency still cover every request.")
    policies: PoliciesSpec = Field(
        PoliciesSpec(), description="Request policies of every tenant that does not set its own (key by key); "
                                    "absent keys: deny / reject, safe for an untrusted tenant.")
    variants: Annotated[
        dict[Name, Annotated[float | Literal["baked"], _must("a number or 'baked'"), AfterValidator(_check_variant)]],
        Field(min_length=1), _must("a non-empty mapping of name: alpha (a number or 'baked')"),
    ] = Field(description="Named α values tenants are served with; 'baked' is the loader's α (zero overhead), "
                          "0 the unedited model.", json_schema_extra={"additionalProperties": False})
    tenants: Annotated[
        dict[Name, Annotated[TenantSpec, AfterValidator(_check_tenant)]],
        Field(min_length=1), _must("a non-empty mapping of name: tenant"), AfterValidator(_check_shared_keys),
    ] = Field(description="Callers, by name: their API keys, variants and experiment.",
              json_schema_extra={"additionalProperties": False})


def tenant_config_schema() -> dict:
    """The JSON Schema of the tenant config file (`rosi tenants schema`, deploy/tenants.schema.json)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **TenantFile.model_json_schema()}


def tenant_config_schema_json() -> str:
    """`tenant_config_schema` as the text `rosi tenants schema` prints and deploy/tenants.schema.json holds."""
    import json

    return json.dumps(tenant_config_schema(), indent=2, ensure_ascii=False) + "\n"


# ---- loading ------------------------------------------------------------------------------------------------------

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
        raise RosiError(f"rosi: tenant config {path} is not valid YAML: {_yaml_problem(exc)}") from None
    config = parse_tenant_config(data, environ=environ)
    return replace(config, source_sha256=hashlib.sha256(raw_bytes).hexdigest())


def _yaml_problem(exc) -> str:
    """A YAML error on one line (PyYAML's own text spans several, with a caret drawing): one log line per rejection."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        return f"{context + ': ' if context else ''}{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def parse_tenant_config(data: Any, environ: dict[str, str] | None = None) -> TenantConfig:
    environ = os.environ if environ is None else environ
    try:
        spec = TenantFile.model_validate(data, context={"environ": environ})
    except ValidationError as exc:
        raise RosiError("rosi: invalid tenant config: " + "; ".join(_problems(exc))) from None
    bounds = spec.alpha_bounds
    return TenantConfig(
        variants=dict(spec.variants),
        tenants={name: Tenant(name, t.default_variant,
                              tuple(t.allowed_variants if t.allowed_variants is not None else [t.default_variant]),
                              t.experiment and Experiment(t.experiment.name, tuple(t.experiment.arms.items())),
                              TenantLimits(t.limits.max_concurrent_requests, t.limits.tokens_per_minute),
                              t.priority, _resolve_policies(t.policies, spec.policies))
                 for name, t in spec.tenants.items()},
        key_digests={digest: name for name, t in spec.tenants.items() for digest in _digests(t, environ)},
        alpha_min=bounds.min, alpha_max=math.inf if bounds.max is None else bounds.max,
        allow_negative_alpha=spec.allow_negative_alpha, user_header=spec.user_header,
        max_body_bytes=spec.max_body_bytes, judge_sample_rate=spec.judge_sample_rate,
    )


#: the model whose keys are known at each place an unknown key can appear (names of tenants left out)
_KNOWN = {(): TenantFile, ("alpha_bounds",): AlphaBounds, ("tenants",): TenantSpec,
          ("tenants", "experiment"): ExperimentSpec, ("tenants", "limits"): LimitsSpec,
          ("policies",): PoliciesSpec, ("tenants", "policies"): PoliciesSpec}


#: a key printed as is in a location; anything else (newlines, quotes, empty) is printed as its repr
_PLAIN = re.compile(r"^[A-Za-z0-9_-]+$")


def _where(loc: tuple) -> str:
    """Where in the file: ``alpha_bounds.min``, ``variant 'strict'``, ``tenant 'acme': api_key_sha256[0]``."""
    head = ""
    if loc[:1] in (("variants",), ("tenants",)) and len(loc) > 1:
        kind = loc[0][:-1]
        if loc[2:] == ("[key]",):
            return f"{kind} name"
        head, loc = f"{kind} {loc[1]!r}", loc[2:]
    rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" if _PLAIN.match(str(p)) else f"[{p!r}]"
                   for p in loc).lstrip(".")
    return f"{head}: {rest}" if head and rest else head or rest


def _problems(exc: ValidationError) -> list[str]:
    problems, unknown = [], {}
    for err in exc.errors(include_url=False):
        loc, kind = err["loc"], err["type"]
        where = _where(loc)
        if kind == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif kind == "rosi_rules":
            problems += [f"{where}: {p}" if where else p for p in err["ctx"]["problems"]]
        elif kind == "rosi_must":
            problems.append(f"{where} {err['msg']}")
        elif kind == "missing":
            problems.append(f"{where} is required")
        elif kind in ("model_type", "dict_type"):
            problems.append(f"{where or 'tenant config'} must be a YAML mapping, got {type(err['input']).__name__}")
        else:  # not expected: every leaf says what it must be; still name the place
            problems.append(f"{where or 'top level'}: {err['msg']}")
    for loc, keys in unknown.items():
        known = sorted(_KNOWN[tuple(p for i, p in enumerate(loc) if not (i == 1 and loc[0] == "tenants"))].model_fields)
        problems.append(f"unknown key(s) {sorted(keys)} at {_where(loc) or 'top level'} (known: {known})")
    return problems
