"""directions/index.yaml describes the shipped files exactly, and its numbers are the result files'."""

from __future__ import annotations

import json

import yaml

from rosi_vllm.direction_file import load_direction
from tests.helpers import ROOT


def test_index_matches_shipped_files_and_results():
    index = yaml.safe_load((ROOT / "directions/index.yaml").read_text())
    shipped = {p.name for p in (ROOT / "directions").glob("*.safetensors")}
    assert {e["file"] for e in index["directions"]} == shipped and shipped
    for entry in index["directions"]:
        d = load_direction(ROOT / "directions" / entry["file"])
        assert (d.direction_id, d.layer, d.recommended_alpha, d.model_fingerprint) == (
            entry["direction_id"], entry["layer"], entry["recommended_alpha"], entry["model_fingerprint"])
        result = json.loads((ROOT / entry["results"]).read_text())
        rosi = entry["measured_test_split"]["rosi"]
        for key in ("harmful_refusal", "benign_refusal", "jailbreak_attack_success"):
            assert (rosi[key]["k"], rosi[key]["n"]) == (result[key]["k"], result[key]["n"])
        assert result["direction"].endswith(entry["file"]) and result["alpha"] == d.recommended_alpha
