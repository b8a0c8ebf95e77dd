"""--model-loader-extra-config parsing: strict, with negative α an explicit opt-in."""

from __future__ import annotations

import pytest

from rosi_vllm.core.architectures import SandwichNormPolicy
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.loader_config import RosiLoaderConfig


def test_defaults_and_passthrough():
    cfg, passthrough = RosiLoaderConfig.from_extra_config({"direction": "d.safetensors", "num_threads": 4})
    assert cfg.alpha is None and cfg.targets is None and cfg.verify_fingerprint  # None: the direction's own writers
    assert cfg.sandwich_norm is SandwichNormPolicy.REFUSE
    assert passthrough == {"num_threads": 4}


def test_targets_as_comma_string():
    cfg, _ = RosiLoaderConfig.from_extra_config({"direction": "d", "targets": "mlp_out, embed"})
    assert cfg.targets == ("mlp_out", "embed")


@pytest.mark.parametrize(
    "extra, message",
    [
        ({}, 'needs "direction"'),
        ({"direction": "d", "alhpa": 3}, "unknown model-loader-extra-config key\\(s\\) \\['alhpa'\\]"),
        ({"direction": "d", "alpha": -2}, "negative, which ablates"),
        ({"direction": "d", "alpha": float("nan")}, "must be finite"),
        ({"direction": "d", "alpha": "lots"}, "alpha must be a number"),
        ({"direction": "d", "alpha": True}, "alpha must be a number"),
        ({"direction": "d", "targets": ["o_proj"]}, "unknown target"),
        ({"direction": "d", "targets": []}, "targets is empty"),
        ({"direction": "d", "verify_fingerprint": "no"}, "must be true or false"),
        ({"direction": "d", "sandwich_norm": "maybe"}, "sandwich_norm must be one of"),
        ("direction=d", "must be a JSON object"),
    ],
)
def test_refusals(extra, message):
    with pytest.raises(RosiError, match=message):
        RosiLoaderConfig.from_extra_config(extra)


def test_negative_alpha_with_opt_in():
    cfg, _ = RosiLoaderConfig.from_extra_config({"direction": "d", "alpha": -2, "allow_negative_alpha": True})
    assert cfg.alpha == -2.0


def test_every_problem_is_reported_at_once():
    with pytest.raises(RosiError) as err:
        RosiLoaderConfig.from_extra_config({"alhpa": 3, "alpha": "lots", "verify_fingerprint": "no"})
    message = str(err.value)
    assert message.startswith("rosi: ") and message.count("rosi:") == 1
    for part in ("['alhpa']", 'needs "direction"', "alpha must be a number", "must be true or false"):
        assert part in message


def test_numbers_as_json_strings_are_accepted():
    cfg, _ = RosiLoaderConfig.from_extra_config({"direction": "d", "alpha": "8.5"})
    assert cfg.alpha == 8.5


def test_any_json_object_parses_or_raises_one_rosi_error():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5), inner, max_size=3), max_leaves=8)
    keys = st.sampled_from(sorted({"direction", "alpha", "targets", "verify_fingerprint", "allow_negative_alpha",
                                   "sandwich_norm", "num_threads", "alhpa"}))

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(keys, values | st.sampled_from(["d", "mlp_out", "refuse", "8"]), max_size=6))
    def check(extra):
        try:
            RosiLoaderConfig.from_extra_config(extra)
        except RosiError as exc:
            assert type(exc) is RosiError and str(exc).startswith("rosi: ")

    check()
