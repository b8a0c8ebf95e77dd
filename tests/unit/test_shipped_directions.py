"""directions/index.yaml describes the shipped files exactly, and every number in it is its result file's."""

from __future__ import annotations

import json

import yaml

from rosi_vllm.direction_file import load_direction
from tests.helpers import ROOT

MEASURED = ("harmful_refusal", "benign_refusal", "borderline_refusal", "jailbreak_attack_success", "degenerate")


def _index() -> dict:
    return yaml.safe_load((ROOT / "directions/index.yaml").read_text())


def _measured(path: str) -> dict:
    result = json.loads((ROOT / path).read_text())
    out = {k: result[k] for k in MEASURED if k in result}
    if "benign_kl_nats" in result:
        out["benign_kl_nats"] = round(result["benign_kl_nats"], 4)
    return out


def test_index_matches_shipped_files_and_results():
    index = _index()
    shipped = {p.name for p in (ROOT / "directions").glob("*.safetensors")}
    assert {e["file"] for e in index["directions"]} == shipped and shipped
    for entry in index["directions"]:
        d = load_direction(ROOT / "directions" / entry["file"])
        assert (d.direction_id, d.layer, d.recommended_alpha, d.model_fingerprint) == (
            entry["direction_id"], entry["layer"], entry["recommended_alpha"], entry["model_fingerprint"])
        assert entry["format_version"] == int(d.format_version) and entry["read"] == d.read_kind
        if d.gated or d.thresholded:
            assert entry["window"] == list(d.window) and entry["targets"] == list(d.default_targets)
        if d.thresholded:
            assert entry["neurons"] == {layer: n.index for layer, n in d.neurons.items()}
            assert (entry["threshold"], entry["sharpness"]) == (d.threshold, d.sharpness)
        assert entry["measured_test_split"]["rosi"] == _measured(entry["results"])
        assert entry["measured_test_split"]["base"] == _measured(entry["base_results"])
        result = json.loads((ROOT / entry["results"]).read_text())
        assert result["direction"].endswith(entry["file"]) and result["alpha"] == d.recommended_alpha


def test_comparison_numbers_are_the_result_files():
    comparison = _index()["comparison"]
    assert comparison
    for model, runs in comparison.items():
        assert runs[0]["run"] == "base"
        for run in runs:
            assert run["measured"] == _measured(run["results"]), (model, run["run"])
            assert json.loads((ROOT / run["results"]).read_text())["model"].endswith(model)
            assert run["reproduce"]
