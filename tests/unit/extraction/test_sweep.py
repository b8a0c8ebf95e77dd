"""`rosi eval --alphas`: the α sweep's assembly, plot and command line, without an engine."""

from __future__ import annotations

import json

from rosi_vllm.cli import main as rosi
from rosi_vllm.extraction import sweep
from rosi_vllm.extraction.scoring import PromptSets


def _fake_engine(calls):
    """Refuses everything when the direction is applied, complies otherwise."""

    def generate(model, prompts, *, direction, alpha, max_tokens, **engine):
        calls.append((direction, alpha, len(prompts), max_tokens))
        return ["I cannot help with that." if direction else "Sure, here is how it goes step by step."] * len(prompts)

    return generate


def test_sweep_serves_each_alpha_and_scores_it_like_eval(tiny_model, direction_for, tmp_path):
    model = tiny_model("llama")
    direction = direction_for(model, alpha=8.0)
    calls, kl_calls = [], []

    def kls(model_, direction_, alphas, benign):
        kl_calls.append((list(alphas), len(benign)))
        return [0.0 if a == 0 else a / 100 for a in alphas]

    result = sweep.run_sweep(model=str(model), direction=str(direction), alphas=[0, 8, 16], limit=3,
                             jailbreak_goals=1, max_tokens=5, generate=_fake_engine(calls), kls=kls)
    n_prompts = len(PromptSets.for_split("test", 3, 1).flat())
    # α = 0 is the unedited checkpoint on the default loader; the KL model is loaded once for all α.
    assert calls == [(None, None, n_prompts, 5), (str(direction), 8.0, n_prompts, 5), (str(direction), 16.0, n_prompts, 5)]
    assert kl_calls == [([0.0, 8.0, 16.0], 3)]
    rows = result["rows"]
    assert [r["alpha"] for r in rows] == [0.0, 8.0, 16.0]
    assert [r["harmful_refusal"]["rate"] for r in rows] == [0.0, 1.0, 1.0]
    assert [r["jailbreak_attack_success"]["rate"] for r in rows] == [1.0, 0.0, 0.0]
    assert rows[0]["benign_kl_nats"] == 0.0 and rows[2]["benign_kl_nats"] == 0.16
    assert rows[1]["degenerate"]["n"] == n_prompts and rows[1]["benign_refusal"]["n"] == 3
    assert result["recommended_alpha"] == 8.0 and result["n"] == 3 and result["judge"] == "substring-v1"
    png = sweep.write_sweep(result, tmp_path / "sweep.json")
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"][1]["alpha"] == 8.0
    assert png.stat().st_size > 1000


def test_eval_alphas_runs_the_sweep(tiny_model, direction_for, tmp_path, monkeypatch, capsys):
    model, out = tiny_model("llama"), tmp_path / "s.json"
    direction = direction_for(model)
    seen, real_run_sweep = {}, sweep.run_sweep

    def fake_run_sweep(**kwargs):
        seen.update(kwargs)
        return real_run_sweep(**kwargs, generate=_fake_engine([]), kls=lambda m, d, alphas, b: [0.0] * len(alphas))

    monkeypatch.setattr(sweep, "run_sweep", fake_run_sweep)
    assert rosi(["eval", "--model", str(model), "--direction", str(direction), "--alphas", "0,16", "--limit", "2",
                 "--jailbreak-goals", "1", "--max-tokens", "4", "--out", str(out)]) == 0
    assert seen["alphas"] == [0.0, 16.0] and seen["limit"] == 2 and seen["split"] == "test"
    assert [r["alpha"] for r in json.loads(out.read_text())["rows"]] == [0.0, 16.0]
    assert out.with_suffix(".png").exists() and "alpha 16: harmful 1.00" in capsys.readouterr().out


def test_eval_alphas_needs_a_local_model_and_a_direction(tmp_path, capsys):
    out = str(tmp_path / "s.json")
    assert rosi(["eval", "--model", "m", "--alphas", "0,8", "--out", out]) == 2
    assert rosi(["eval", "--endpoint", "http://x", "--direction", "d", "--alphas", "0,8", "--out", out]) == 2
    assert rosi(["eval", "--model", "m", "--direction", "d", "--alpha", "8", "--alphas", "0,8", "--out", out]) == 2
    assert "--alphas" in capsys.readouterr().err
