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
