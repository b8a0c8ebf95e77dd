"""Tenant config validation: every rule, one `rosi:` message listing all problems."""

from __future__ import annotations

import pytest

from rosi_vllm.errors import RosiError
from rosi_vllm.serving.tenant_config import BAKED, key_digest, parse_tenant_config
from tests.helpers import ROOT

KEY_A = key_digest("key-a")


def config(**overrides):
    data = {
        "version": 1,
        "alpha_bounds": {"min": 0, "max": 64},
        "variants": {"base": 0, "standard": BAKED, "strict": 32},
        "tenants": {
            "acme": {"api_key_sha256": [KEY_A], "default_variant": "standard",
                     "allowed_variants": ["standard", "strict"]},
            "beta": {"api_key_env": ["BETA_KEY"], "default_variant": "strict",
                     "experiment": {"name": "exp1", "arms": {"base": 50, "strict": 50}}},
        },
    }
    data.update(overrides)
    return data


ENV = {"BETA_KEY": "key-b"}


def test_valid_config_maps_keys_to_tenants():
    cfg = parse_tenant_config(config(), environ=ENV)
    assert cfg.tenant_for_key("key-a").name == "acme"
    assert cfg.tenant_for_key("key-b").name == "beta"
    assert cfg.tenant_for_key("key-c") is None and cfg.tenant_for_key(None) is None
    assert cfg.alpha_of("standard", 8.0) == 8.0 and cfg.alpha_of("strict", 8.0) == 32.0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["variants"].update(evil=-4), "negative, which ablates"),
    (lambda d: d["variants"].update(huge=65), "outside alpha_bounds"),
    (lambda d: d["variants"].update(bad="x"), "must be a number or 'baked'"),
    (lambda d: d.update(alpha_bounds={"min": -1, "max": 8}), "needs allow_negative_alpha"),
    (lambda d: d["tenants"]["acme"].update(default_variant="nope"), "default_variant 'nope'"),
    (lambda d: d["tenants"]["acme"].update(allowed_variants=["nope"]), "allowed_variants must list"),
    (lambda d: d["tenants"]["acme"].pop("api_key_sha256"), "has no API key"),
    (lambda d: d["tenants"]["acme"].update(api_key_sha256=["abc"]), "64 hex"),
    (lambda d: d["tenants"]["beta"].update(api_key_env=["MISSING_KEY"]), "MISSING_KEY (API key) is not set"),
    (lambda d: d["tenants"]["beta"]["experiment"].update(arms={"base": 50, "strict": 40}), "sum to 90"),
    (lambda d: d["tenants"]["beta"]["experiment"].update(arms={"base": 100}), "at least two arms"),
    (lambda d: d["tenants"]["acme"].update(alowed_variants=[]), "unknown key(s) ['alowed_variants']"),
    (lambda d: d.update(version=2), "version must be 1"),
])
def test_invalid_configs_are_refused_with_the_reason(mutate, message):
    data = config()
    mutate(data)
    with pytest.raises(RosiError, match="rosi: invalid tenant config") as err:
        parse_tenant_config(data, environ=ENV)
    assert message in str(err.value)


def test_negative_alpha_needs_explicit_opt_in():
    data = config(allow_negative_alpha=True, alpha_bounds={"min": -8, "max": 64})
    data["variants"]["ablate"] = -8
    assert parse_tenant_config(data, environ=ENV).variants["ablate"] == -8


def test_shared_key_is_refused_without_printing_it():
    data = config()
    data["tenants"]["beta"]["api_key_sha256"] = [KEY_A]
    with pytest.raises(RosiError) as err:
        parse_tenant_config(data, environ=ENV)
    assert "shares an API key with tenant 'acme'" in str(err.value)
    assert KEY_A not in str(err.value) and "key-a" not in str(err.value)


def test_baked_alpha_must_fit_the_bounds():
    cfg = parse_tenant_config(config(), environ=ENV)
    cfg.check_baked_alpha(8.0)
    with pytest.raises(RosiError, match="outside alpha_bounds"):
        cfg.check_baked_alpha(100.0)


def test_shipped_example_config_is_valid():

    from rosi_vllm.serving.tenant_config import load_tenant_config

    path = ROOT / "deploy" / "tenants.example.yaml"
    cfg = load_tenant_config(path, environ={"ACME_API_KEY": "a", "KIDS_APP_API_KEY": "b"})
    cfg.check_baked_alpha(64.0)
    assert cfg.tenants["acme"].experiment.name == "acme-hardening-1"
