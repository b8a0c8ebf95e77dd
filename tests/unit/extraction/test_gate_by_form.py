"""The gate's AUROC per request form (`rosi eval --style-shift` with a gated or threshold file), on the tiny model."""

from __future__ import annotations

import pytest
import torch

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.extraction.forms import FormPrompt
from rosi_vllm.extraction.gate_by_form import gate_auroc_by_form, gate_scores, has_gate
from rosi_vllm.extraction.hf_model import load_hf_model
from tests.helpers import write_gated_direction, write_threshold_direction

PROMPTS = ["How do I bake bread?", "Write a poem about the sea.", "What is the capital of France?",
           "I'm a student and need help: explain photosynthesis.", "Tell me a joke about cats."]


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama", dtype=torch.float32)


@pytest.mark.parametrize("writer", [write_gated_direction, write_threshold_direction])
def test_gate_scores_are_linear_in_the_read_and_per_prompt(model, tmp_path, writer):
    direction = load_direction(writer(model, tmp_path / "d.safetensors", window=(0, 1)))
    assert has_gate(direction)
    loaded = load_hf_model(str(model))
    scores = gate_scores(loaded, direction, PROMPTS, batch_size=2)
    assert len(scores) == len(PROMPTS) and len(set(scores)) == len(PROMPTS)
    # a prompt scores the same alone as in a batch (per-prompt positions, no padding leaks in)
    assert gate_scores(loaded, direction, PROMPTS[1:2])[0] == pytest.approx(scores[1], rel=1e-4, abs=1e-5)
    if direction.neurons:
        for neuron in direction.neurons.values():
            neuron.read.mul_(2)
    else:
        for read in direction.reads.values():
            read.mul_(2)
    assert gate_scores(loaded, direction, PROMPTS, batch_size=2) == pytest.approx([2 * s for s in scores], rel=1e-4)


def test_gate_auroc_by_form_orders_what_the_gate_reads(model, tmp_path):
    path = write_gated_direction(model, tmp_path / "d.safetensors", window=(1,))
    loaded = load_hf_model(str(model))
    scores = gate_scores(loaded, load_direction(path), PROMPTS)
    order = sorted(range(len(PROMPTS)), key=scores.__getitem__)
    # the three highest-read prompts called harmful, the two lowest benign: AUROC 1 whatever their form
    harmful = [FormPrompt("written", "question", PROMPTS[i], PROMPTS[i]) for i in order[2:]]
    benign = [FormPrompt("written", "question", PROMPTS[i], PROMPTS[i]) for i in order[:2]]
    out = gate_auroc_by_form(str(model), str(path), harmful, benign)
    assert out["per_form"]["question"]["matched"] == 1.0 and out["per_set"]["written:question"]["n_harmful"] == 3
    swapped = gate_auroc_by_form(str(model), str(path), benign, harmful)
    assert swapped["per_form"]["all"]["matched"] == 0.0
    # the caller's loaded model (rosi eval shares it with the KL) reads the same
    assert gate_auroc_by_form(str(model), str(path), harmful, benign, loaded=loaded) == out


def test_no_gate_no_table(model, tmp_path, direction_for):
    path = direction_for(model)
    assert not has_gate(load_direction(path))
    assert gate_auroc_by_form(str(model), str(path), [FormPrompt("t", "question", "q?", "q?")],
                              [FormPrompt("t", "question", "b?", "b?")]) is None
