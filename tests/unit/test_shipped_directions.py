"""directions/index.yaml describes the shipped files exactly, marks one recommended file per model, and every number
the docs and `rosi demo` show is its result file's; research/directions/index.yaml and research/comparison.yaml keep
the research runs to the same standard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.tools.demo.plan import MEASURED, measured
from tests.helpers import ROOT


def _yaml(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def _result(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _measured(path: str) -> dict:
    return measured(_result(path))


def _check_entry_matches_its_file(folder: Path, entry: dict) -> None:
    d = load_direction(folder / entry["file"])
    assert (d.direction_id, d.layer, d.recommended_alpha, d.model_fingerprint) == (
        entry["direction_id"], entry["layer"], entry["recommended_alpha"], entry["model_fingerprint"])
    assert entry["architecture"] == d.architecture
    assert entry["format_version"] == int(d.format_version) and entry["read"] == d.read_kind
    if d.gated or d.thresholded:
        assert entry["window"] == list(d.window) and entry["targets"] == list(d.default_targets)
    if d.thresholded:
        assert entry["neurons"] == {layer: n.index for layer, n in d.neurons.items()}
        assert (entry["threshold"], entry["sharpness"]) == (d.threshold, d.sharpness)
    # the result file measured this very file, at its recommended alpha, on this model; the base file the unedited model
    result, base = _result(entry["results"]), _result(entry["base_results"])
    assert result["direction"].endswith(entry["file"]) and result["alpha"] == d.recommended_alpha
    assert result["model"].endswith(entry["model"]) and base["model"].endswith(entry["model"])
    assert base["direction"] is None and base["split"] == result["split"] == "test"
    assert all(k in result and k in base for k in MEASURED if k != "borderline_refusal") and entry["reproduce"]


def test_index_matches_shipped_files_and_results():
    index = _yaml("directions/index.yaml")
    shipped = {p.name for p in (ROOT / "directions").glob("*.safetensors")}
    assert {e["file"] for e in index["directions"]} == shipped and shipped
    for entry in index["directions"]:
        _check_entry_matches_its_file(ROOT / "directions", entry)
        assert "measured_test_split" not in entry  # numbers are read from the result files, never copied


def test_exactly_one_recommended_file_per_model_exists_and_loads():
    index = _yaml("directions/index.yaml")
    models = {e["model"] for e in index["directions"]}
    assert models == set(index["targets"])
    for model in models:
        entries = [e for e in index["directions"] if e["model"] == model]
        assert all(isinstance(e["recommended"], bool) for e in entries)
        (recommended,) = [e for e in entries if e["recommended"]]
        path = ROOT / "directions" / recommended["file"]
        assert path.is_file() and load_direction(path).model_fingerprint == recommended["model_fingerprint"]
        # the mark is on a file whose verdict meets every target on the test split
        assert recommended["verdict"].startswith("every "), recommended["verdict"]
        # every other shipped file is the v1 baseline, kept for comparison
        assert all(e["format_version"] == 1 for e in entries if e is not recommended)


@pytest.mark.parametrize("model, file", [("smollm2-135m-instruct", "smollm2-135m-instruct-gated-wrapped.safetensors"),
                                         ("qwen2.5-coder-0.5b-instruct",
                                          "qwen2.5-coder-0.5b-instruct-threshold.safetensors")])
def test_the_recommended_files_are_the_ones_whose_verdict_meets_the_targets(model, file):
    index = _yaml("directions/index.yaml")
    assert [e["file"] for e in index["directions"] if e["model"] == model and e["recommended"]] == [file]


def test_research_directions_match_their_files_and_results():
    index = _yaml("research/directions/index.yaml")
    folder = ROOT / "research" / "directions"
    files = {p.name for p in folder.glob("*.safetensors")}
    assert {e["file"] for e in index["directions"]} == files and files
    assert not files & {p.name for p in (ROOT / "directions").glob("*.safetensors")}
    for entry in index["directions"]:
        _check_entry_matches_its_file(folder, entry)
        assert "recommended" not in entry
        assert entry["measured_test_split"]["rosi"] == _measured(entry["results"])
        assert entry["measured_test_split"]["base"] == _measured(entry["base_results"])


def test_comparison_numbers_are_the_result_files():
    comparison = _yaml("research/comparison.yaml")["comparison"]
    assert comparison
    for model, runs in comparison.items():
        assert runs[0]["run"] == "base"
        for run in runs:
            assert run["measured"] == _measured(run["results"]), (model, run["run"])
            assert _result(run["results"])["model"].endswith(model)
            assert run["reproduce"]
