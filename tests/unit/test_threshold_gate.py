"""The threshold-gate benchmark's config syntax (its edit is the v3 plan: tests/unit/test_threshold_direction.py)."""

from __future__ import annotations

from research.threshold_gate import parse_configs


def test_configs_parse_layers_alpha_and_threshold():
    assert parse_configs("11,12:32:0.5; 12:48:0.25+2;") == [
        {"layers": [11, 12], "alpha": 32.0, "threshold": 0.5, "linear_alpha": None},
        {"layers": [12], "alpha": 48.0, "threshold": 0.25, "linear_alpha": 2.0}]
