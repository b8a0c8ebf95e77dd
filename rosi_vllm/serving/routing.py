"""Per-request routing: which variant (α) serves this request, and which A/B arm it is in.

Pure and deterministic, no vLLM. The decision never trusts the client's
``model`` field beyond choosing among the tenant's own allowed variants; the
middleware then rewrites ``model`` to the engine's internal name, so naming
another tenant's variant, the base arm or an adapter directly gets nothing.

Arm assignment hashes (experiment name, end user): the same user always lands
in the same arm of an experiment (sticky, no state to store or share between
API-server processes), different experiments shuffle users independently, and
the split converges to the configured percentages.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .tenant_config import Experiment, Tenant, TenantConfig

#: `arm` label of requests outside any experiment
NO_ARM = "none"
#: `arm` label of requests where the tenant named an allowed variant explicitly
EXPLICIT_ARM = "explicit"
#: every variant that is not the baked one is served as this rank-1 LoRA adapter name
ADAPTER_PREFIX = "rosi-alpha-"


@dataclass(frozen=True)
class Route:
    tenant: str
    variant: str
    alpha: float
    experiment: str  # "" outside an experiment
    arm: str
    engine_model: str  # what the engine is asked for: the served model name or an adapter name


class RouteDenied(Exception):
    """The request names a model this tenant may not use (answered 404, like an unknown model)."""


def bucket(experiment: str, user: str) -> float:
    """Uniform in [0, 100): the user's position in this experiment's split."""
    digest = hashlib.sha256(f"{experiment}\x00{user}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def assign_arm(experiment: Experiment, user: str) -> str:
    position, cumulative = bucket(experiment.name, user), 0.0
    for variant, percent in experiment.arms:
        cumulative += percent
        if position < cumulative:
            return variant
    return experiment.arms[-1][0]  # rounding at the top edge


def adapter_name(alpha: float) -> str:
    """Engine-side name of the adapter serving α (same α → same adapter across reloads)."""
    return f"{ADAPTER_PREFIX}{alpha:g}"


def engine_model_for(alpha: float, baked_alpha: float, served_model: str) -> str:
    return served_model if alpha == baked_alpha else adapter_name(alpha)


def route(config: TenantConfig, tenant: Tenant, requested_model: str | None, user: str | None, *,
          served_model: str, baked_alpha: float) -> Route:
    """Decide the variant for one request of an authenticated tenant.

    * ``model`` = one of the tenant's ``allowed_variants`` → that variant (arm "explicit");
    * ``model`` = the served model name (or absent) → the tenant's experiment arm for
      this user if there is an experiment and a user id, else its default variant;
    * anything else → `RouteDenied`.
    """
    if requested_model and requested_model != served_model:
        if requested_model not in tenant.allowed_variants:
            raise RouteDenied(requested_model)
        variant, experiment, arm = requested_model, "", EXPLICIT_ARM
    elif tenant.experiment is not None and user:
        variant = assign_arm(tenant.experiment, user)
        experiment, arm = tenant.experiment.name, variant
    else:
        variant, experiment, arm = tenant.default_variant, "", NO_ARM
    alpha = config.alpha_of(variant, baked_alpha)
    return Route(tenant.name, variant, alpha, experiment, arm, engine_model_for(alpha, baked_alpha, served_model))


def adapter_alphas(config: TenantConfig, baked_alpha: float) -> set[float]:
    """α values this config serves through adapters (all but the baked one)."""
    return {a for a in (config.alpha_of(v, baked_alpha) for v in config.variants) if a != baked_alpha}
