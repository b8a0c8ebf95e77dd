"""The selection's generator remembers what it made: stage 2 reuses stage 1's completions, never another variant's."""

from __future__ import annotations

import torch

from rosi_vllm.extraction.extract import load_hf_model
from rosi_vllm.extraction.hf_eval import generate, next_token_logprobs
from rosi_vllm.extraction.selection import HfVariantGenerator
from tests.helpers import plan_for, write_direction

FIRST = ["hello there", "how are you?", "name a colour"]
MORE = ["count to three", "what is rain?"]


def test_a_remembering_generator_makes_each_completion_once_and_keeps_variants_apart(tiny_model, tmp_path):
    model = tiny_model("llama")
    loaded = load_hf_model(model)
    plan = plan_for(model, write_direction(model, tmp_path / "d.safetensors"), alpha=64.0)
    generator = HfVariantGenerator(loaded, batch_size=4, remember=True)

    first = generator.generate([(None, FIRST), (plan, FIRST)], max_new_tokens=4)
    assert generator.generated == 2 * len(FIRST)
    # the same variants again, on a longer list that starts with the first: only the new prompts are generated
    again = generator.generate([(None, FIRST + MORE), (plan_for(model, tmp_path / "d.safetensors", alpha=64.0),
                                                      FIRST + MORE)], max_new_tokens=4)
    assert generator.generated == 2 * len(FIRST + MORE)
    assert again[0][:len(FIRST)] == first[0] and again[1][:len(FIRST)] == first[1]
    # what it answers from memory is what generating afresh gives, each variant its own
    assert again[0] == generate(loaded, FIRST + MORE, max_new_tokens=4, batch_size=4)
    assert again[0] != again[1]  # the edit changes the text: the memory did not hand one variant the other's
    # another length is another completion
    generator.generate([(None, FIRST)], max_new_tokens=2)
    assert generator.generated == 2 * len(FIRST + MORE) + len(FIRST)


def test_next_token_logprobs_keep_only_the_last_position_and_match_the_full_pass(tiny_model):
    loaded = load_hf_model(tiny_model("llama"))
    from rosi_vllm.extraction.extract import chat_texts

    texts = chat_texts(loaded.tokenizer, FIRST, None)
    batch = loaded.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        full = torch.log_softmax(loaded.model(**batch, use_cache=False).logits[:, -1, :].float(), dim=-1)
    assert torch.allclose(next_token_logprobs(loaded, FIRST, batch_size=4), full, atol=1e-5)
