"""The threshold extraction's own fits: the bias read u, the candidate windows, the neuron chosen."""

from __future__ import annotations

import torch

from rosi_vllm.methods.threshold.fit import candidate_windows, fit_bias, mlp_input_writers, quietest_neurons


def test_bias_direction_reads_one_on_inputs_that_share_a_common_component():
    gen = torch.Generator().manual_seed(1)
    common = 5 * torch.randn(32, generator=gen)
    rows = common + 0.2 * torch.randn(400, 32, generator=gen)
    u = fit_bias(rows[:300])
    held_out = rows[300:] @ u
    assert abs(float(held_out.mean()) - 1) < 0.02 and float(held_out.std()) < 0.05


def test_candidate_windows_are_the_best_adjacent_runs_of_good_gates():
    aurocs = {10: 0.95, 11: 0.97, 12: 0.98, 13: 0.85, 14: 0.99, 15: 0.98}
    stats = {layer: {"auroc": a} for layer, a in aurocs.items()}
    assert candidate_windows(stats, 0.9) == [(14,), (14, 15), (10, 11, 12)]
    assert candidate_windows(stats, 0.999) == []


def test_the_quietest_neuron_is_the_one_the_benign_replies_use_least(tmp_path):
    from rosi_vllm.extraction.extract import load_hf_model
    from rosi_vllm.testing.tiny_models import build_tiny_model

    loaded = load_hf_model(build_tiny_model("llama", tmp_path / "tiny"))
    assert [(w.layer, w.module_name) for w in mlp_input_writers(loaded, {0, 1})] == [
        (0, "model.layers.0.mlp"), (1, "model.layers.1.mlp")]
    down = loaded.model.get_submodule("model.layers.1.mlp.down_proj")
    with torch.no_grad():
        down.weight[:, 7] = 0  # neuron 7 writes nothing: it is the one to give up
    assert quietest_neurons(loaded, [1], ["hello", "how are you?"], batch_size=2)[1] == 7


def test_rosi_extract_threshold_writes_a_v3_direction_that_rosi_inject_takes(tiny_model, tmp_path):
    """CLI end to end on a tiny model: fit, gate report, selection, a v3 file, then the offline injection."""
    import json

    from rosi_vllm.cli import main
    from rosi_vllm.core.direction_file import load_direction
    from tests.helpers import write_direction

    model = tiny_model("llama")
    write = write_direction(model, tmp_path / "v1.safetensors")
    out = tmp_path / "threshold.safetensors"
    assert main(["extract", "--model", str(model), "--method", "threshold", "--write-direction", str(write),
                 "--out", str(out), "--layers", "0,1", "--alphas", "2", "--min-auroc", "0", "--n-harmful", "12",
                 "--wrapped-goals", "4", "--answer-tokens", "3", "--val-n", "4", "--stage1-n", "3",
                 "--stage1-tokens", "3", "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    d = load_direction(out)
    assert d.thresholded and d.recommended_alpha == 2.0 and set(d.window) <= {0, 1} and d.threshold == 0.5
    assert torch.equal(d.direction, load_direction(write).direction)  # ŝ is the write direction's
    report = json.loads((tmp_path / "threshold" / "threshold.json").read_text())
    assert report["best"]["window"] == list(d.window) and report["best"]["targets"] == ["mlp_out"]
    assert set(report["gates"]) == {"0", "1"} and all("bias_read_sd" in g for g in report["gates"].values())
    assert (tmp_path / "threshold" / "threshold.png").stat().st_size > 10000
    assert main(["inject", "--model", str(model), "--direction", str(out), "--out", str(tmp_path / "hardened")]) == 0


def test_a_preset_row_gives_the_settings_and_a_flag_given_overrides_it(capsys):
    import argparse

    from rosi_vllm.cli import main
    from rosi_vllm.cli.extract import THRESHOLD_FLAGS, preset_settings
    from rosi_vllm.methods.threshold.fit import PRESETS, band_layers

    args = argparse.Namespace(**{dest: None for dest in THRESHOLD_FLAGS.values()})
    assert preset_settings(PRESETS["quick"], args, THRESHOLD_FLAGS) == PRESETS["quick"]
    args.val_n, args.alphas = 48, [8.0]
    settings = preset_settings(PRESETS["thorough"], args, THRESHOLD_FLAGS)
    assert settings["val_n"] == 48 and settings["alphas"] == [8.0]
    assert settings["finalists"] == PRESETS["thorough"]["finalists"]
    # every key of every row is a keyword of extract_threshold, reachable from a flag or the band
    import inspect

    from rosi_vllm.methods.threshold.fit import extract_threshold

    keywords = set(inspect.signature(extract_threshold).parameters)
    assert all(set(row) <= keywords and set(row) - {"band"} <= set(THRESHOLD_FLAGS) for row in PRESETS.values())
    assert band_layers(24, PRESETS["thorough"]["band"]) == list(range(8, 16))
    assert band_layers(24, PRESETS["quick"]["band"]) == list(range(9, 14))
    assert main(["extract", "--model", "x", "--out", "y", "--preset", "quick"]) == 2
    assert "rosi: --preset is for --method threshold" in capsys.readouterr().err
