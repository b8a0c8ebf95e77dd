"""Routing: which variant a key and model name reach, and sticky A/B arm assignment."""

from __future__ import annotations

import collections

import pytest

from rosi_vllm.serving.routing import (
    EXPLICIT_ARM,
    NO_ARM,
    RouteDenied,
    assign_arm,
    route,
)
from rosi_vllm.serving.tenant_config import parse_tenant_config
from tests.unit.serving.sample_config import ENV, config


def test_routing_rules():
    cfg = parse_tenant_config(config(), environ=ENV)
    acme, beta = cfg.tenants["acme"], cfg.tenants["beta"]
    kw = dict(served_model="m", baked_alpha=8.0)
    r = route(cfg, acme, "m", None, **kw)
    assert (r.variant, r.arm, r.engine_model) == ("standard", NO_ARM, "m")  # baked: no adapter
    r = route(cfg, acme, "strict", "u", **kw)
    assert (r.variant, r.arm, r.engine_model, r.alpha) == ("strict", EXPLICIT_ARM, "rosi-alpha-32", 32.0)
    for forbidden in ("base", "rosi-alpha-0", "rosi-alpha-32", "other-model"):
        with pytest.raises(RouteDenied):
            route(cfg, acme, forbidden, None, **kw)
    with pytest.raises(RouteDenied):  # beta may not name the base arm even though it is in its experiment
        route(cfg, beta, "base", "u", **kw)
    assert route(cfg, beta, None, None, **kw).variant == "strict"  # no user: default, not in experiment
    arm = route(cfg, beta, "m", "user-7", **kw)
    assert arm.experiment == "exp1" and arm.arm in ("base", "strict")
    if arm.arm == "base":
        assert arm.engine_model == "rosi-alpha-0"


def test_arm_assignment_is_sticky_and_follows_the_split():
    cfg = parse_tenant_config(config(), environ=ENV)
    exp = cfg.tenants["beta"].experiment
    arms = [assign_arm(exp, f"user-{i}") for i in range(20000)]
    assert arms == [assign_arm(exp, f"user-{i}") for i in range(20000)]
    share = collections.Counter(arms)["base"] / len(arms)
    assert abs(share - 0.5) < 0.02  # 7 sigma at n=20000
    skewed = type(exp)("exp2", (("base", 10.0), ("strict", 90.0)))
    share = collections.Counter(assign_arm(skewed, f"user-{i}") for i in range(20000))["base"] / 20000
    assert abs(share - 0.1) < 0.015
    # experiments shuffle independently: the same users do not land in the same arms
    other = type(exp)("exp3", exp.arms)
    agree = sum(assign_arm(exp, f"user-{i}") == assign_arm(other, f"user-{i}") for i in range(4000)) / 4000
    assert abs(agree - 0.5) < 0.05


# ---- property: client-controlled input (model, user id, header) never reaches a variant the tenant may not use -----

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rosi_vllm.serving.routing import ADAPTER_PREFIX, adapter_name  # noqa: E402

_CFG = parse_tenant_config(config(), environ=ENV)
_SERVED, _BAKED = "served-model", 8.0
_NAMES = sorted(_CFG.variants) + [_SERVED, ADAPTER_PREFIX + "0", adapter_name(32.0), adapter_name(8.0), "", " strict",
                                  "STRICT", "strict\x00", "../strict"]
_HOSTILE = st.text() | st.sampled_from(_NAMES) | st.binary().map(lambda b: b.decode("latin-1"))


def usable(tenant) -> set[str]:
    """What the operator lets this tenant be served: its default, the variants it may name, its arms."""
    arms = {v for v, _ in tenant.experiment.arms} if tenant.experiment else set()
    return {tenant.default_variant, *tenant.allowed_variants, *arms}


@settings(max_examples=2000, deadline=None)
@given(tenant=st.sampled_from(sorted(_CFG.tenants)), model=st.none() | _HOSTILE, user=st.none() | _HOSTILE)
def test_no_model_or_user_id_reaches_a_variant_outside_the_tenants_own(tenant, model, user):
    t = _CFG.tenants[tenant]
    try:
        r = route(_CFG, t, model, user, served_model=_SERVED, baked_alpha=_BAKED)
    except RouteDenied:
        assert model not in t.allowed_variants and model not in (None, "", _SERVED)
        return
    assert r.variant in usable(t) and r.tenant == tenant
    assert r.alpha == _CFG.alpha_of(r.variant, _BAKED)  # the engine gets exactly that variant's α
    if model and model != _SERVED:
        assert r.variant == model and r.arm == EXPLICIT_ARM  # naming is only ever among allowed variants
    elif r.experiment:
        assert r.arm == r.variant and user  # only a user id puts a request in an arm, and only the tenant's arms
