"""`rosi tenants schema`: the shipped JSON Schema is the parser's, and really validates configs."""

from __future__ import annotations

import json

import pytest
import yaml

from rosi_vllm.cli import main
from rosi_vllm.serving.tenant_config import tenant_config_schema
from tests.helpers import ROOT

SCHEMA_PATH = ROOT / "deploy" / "tenants.schema.json"
EXAMPLE_PATH = ROOT / "deploy" / "tenants.example.yaml"


def test_shipped_schema_is_what_the_command_prints(capsys):
    assert main(["tenants", "schema"]) == 0
    printed = capsys.readouterr().out
    assert SCHEMA_PATH.read_text(encoding="utf-8") == printed, (
        "deploy/tenants.schema.json is stale: python3 -m rosi_vllm.cli tenants schema > deploy/tenants.schema.json")
    assert json.loads(printed) == tenant_config_schema()


def test_schema_carries_help_for_editors():
    schema = tenant_config_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"{name} has no description"
    for model in schema["$defs"].values():
        assert model.get("description")
        assert all(prop.get("description") for prop in model["properties"].values())


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def example() -> dict:
    return yaml.safe_load(EXAMPLE_PATH.read_text(encoding="utf-8"))


def test_example_config_validates_against_the_schema(validator):
    errors = [e.message for e in validator.iter_errors(example())]
    assert not errors


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.update(alowed_variants=[]), ()),
    (lambda d: d["tenants"]["acme"].update(alowed_variants=["strict"]), ("tenants", "acme")),
    (lambda d: d["tenants"]["acme"]["experiment"].update(weights={}), ("tenants", "acme", "experiment")),
    (lambda d: d["alpha_bounds"].update(mn=0), ("alpha_bounds",)),
])
def test_unknown_keys_fail_schema_validation(validator, mutate, where):
    data = example()
    mutate(data)
    assert any(tuple(e.absolute_path) == where and e.validator == "additionalProperties"
               for e in _all_errors(validator.iter_errors(data)))


def _all_errors(errors):
    """The errors and, under anyOf (an optional section), the errors of each alternative."""
    for error in errors:
        yield error
        yield from _all_errors(error.context or [])


@pytest.mark.parametrize("mutate", [
    lambda d: d.update(version=2),
    lambda d: d.update(allow_negative_alpha="yes"),
    lambda d: d["variants"].update(strict="lots"),
    lambda d: d["variants"].update(strict=True),
    lambda d: d["variants"].update({"bad name": 1}),
    lambda d: d["tenants"]["acme"].pop("default_variant"),
    lambda d: d["tenants"]["acme"].update(api_key_sha256=["abc"]),
    lambda d: d["tenants"]["acme"]["experiment"].update(arms={"base": 100}),
    lambda d: d["tenants"]["acme"]["experiment"].update(arms={"base": -50, "standard": 150}),
    lambda d: d.update(tenants={}),
    lambda d: d.pop("variants"),
])
def test_wrong_types_fail_schema_validation(validator, mutate):
    data = example()
    mutate(data)
    assert list(validator.iter_errors(data))
