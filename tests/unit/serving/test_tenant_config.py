"""Tenant config validation: every rule, one `rosi:` message listing all problems."""

from __future__ import annotations

import pytest

from rosi_vllm.core.errors import RosiError
from rosi_vllm.serving.tenant_config import BAKED, parse_tenant_config
from tests.helpers import ROOT
from tests.unit.serving.sample_config import ENV, KEY_A, config


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


@pytest.mark.parametrize("rate, ok", [(1, True), (0.05, True), (0, False), (1.5, False), (-0.1, False),
                                      ("half", False), (True, False)])
def test_judge_sample_rate_is_a_share(rate, ok):
    data = {**config(), "judge_sample_rate": rate}
    if ok:
        assert parse_tenant_config(data, environ=ENV).judge_sample_rate == rate
    else:
        with pytest.raises(RosiError, match=r"judge_sample_rate.*a number in \(0, 1\]"):
            parse_tenant_config(data, environ=ENV)
    assert parse_tenant_config(config(), environ=ENV).judge_sample_rate == 1.0  # every response, unless set


def test_shipped_example_config_is_valid():

    from rosi_vllm.serving.tenant_config import load_tenant_config

    path = ROOT / "deploy" / "tenants.example.yaml"
    cfg = load_tenant_config(path, environ={"ACME_API_KEY": "a", "KIDS_APP_API_KEY": "b"})
    cfg.check_baked_alpha(64.0)
    assert cfg.tenants["acme"].experiment.name == "acme-hardening-1"


# ---- property: whatever YAML holds, the parser answers with a config or one `rosi:` error, never anything else -----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_SCALARS = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=12) | st.sampled_from([BAKED, "base", "strict", "standard", "BETA_KEY", "1", "allow",
                                                        "deny", "reject", "Allow"]))
_KEYS = st.text(max_size=10) | st.integers(-5, 5) | st.booleans() | st.sampled_from(
    ["version", "variants", "tenants", "alpha_bounds", "min", "max", "arms", "name", "experiment",
     "default_variant", "allowed_variants", "api_key_sha256", "api_key_env", "user_header", "limits", "priority",
     "max_concurrent_requests", "tokens_per_minute", "max_body_bytes", "judge_sample_rate", "policies",
     "assistant_prefill", "raw_completions", "control_tokens_in_content"])
_YAML = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
                     max_leaves=20)


def _parses_or_refuses(data) -> None:
    try:
        parse_tenant_config(data, environ=ENV)
    except RosiError as exc:
        assert type(exc) is RosiError
        message = str(exc)
        assert message.startswith("rosi: invalid tenant config: ") and "\n" not in message, message
        assert KEY_A not in message and "key-b" not in message  # a key or its digest is never echoed


_PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_PROPERTY
@given(_YAML)
def test_any_yaml_data_parses_or_raises_one_rosi_error(data):
    _parses_or_refuses(data)


def _paths(node, prefix=()):
    """Every (path, container) place in a nested config."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


@_PROPERTY
@given(st.data())
def test_mutated_valid_config_parses_or_raises_one_rosi_error(data):
    cfg = config()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(list(_paths(cfg)) or [()]))
        parent = cfg
        for key in path[:-1]:
            parent = parent[key]
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            break
        if op == "replace":
            parent[path[-1]] = data.draw(_YAML)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(_KEYS)] = data.draw(_YAML)
    _parses_or_refuses(cfg)


def test_example_config_round_trips_through_the_property_checker():
    """The property tests above also accept valid data (they are not vacuous)."""
    _parses_or_refuses(config())
    assert parse_tenant_config(config(), environ=ENV).tenants


# ---- the file itself: whatever bytes it holds (truncated, half-written, binary), one `rosi:` error or a config ------

def _loads_or_refuses(path) -> None:
    from rosi_vllm.serving.tenant_config import load_tenant_config

    try:
        load_tenant_config(path, environ={"ACME_API_KEY": "a", "KIDS_APP_API_KEY": "b"})
    except RosiError as exc:
        assert type(exc) is RosiError and str(exc).startswith("rosi: ") and "\n" not in str(exc).strip(), str(exc)


def test_every_truncation_of_the_example_file_loads_or_gives_one_rosi_error(tmp_path):
    """What a reader sees while the file is being written in place, byte by byte."""
    text = (ROOT / "deploy" / "tenants.example.yaml").read_bytes()
    path = tmp_path / "t.yaml"
    for end in range(len(text) + 1):
        path.write_bytes(text[:end])
        _loads_or_refuses(path)


@_PROPERTY
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode)
       | st.tuples(st.integers(0, 2000), st.binary(max_size=40)).map(
           lambda cut: (ROOT / "deploy" / "tenants.example.yaml").read_bytes()[: cut[0]] + cut[1]))
def test_any_file_content_loads_or_gives_one_rosi_error(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "t.yaml"
    path.write_bytes(content)
    _loads_or_refuses(path)


def test_unreadable_or_missing_files_give_one_rosi_error(tmp_path):
    _loads_or_refuses(tmp_path / "missing.yaml")
    (tmp_path / "dir.yaml").mkdir()
    _loads_or_refuses(tmp_path / "dir.yaml")
