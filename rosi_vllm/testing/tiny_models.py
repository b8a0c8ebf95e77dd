"""Tiny random checkpoints built locally from transformers configs.

No model hub is reachable from CI, and the math and sharding tests need many
architectures, so we build them: a deterministic random model of the requested
family plus a small byte-level BPE tokenizer trained here, saved as an ordinary
safetensors folder that vLLM and transformers both load. Heads are 64 wide
because vLLM's CPU attention supports head_dim 64 (not 16).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB_SIZE = 512
HIDDEN = 128
LAYERS = 2

_CORPUS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast, knead, let it rise, then bake.",
    "I cannot help with that request because it could cause harm.",
    "Sure, here is a short poem about the sea and the wind over the harbour.",
    "Explain how photosynthesis works in simple terms for a school student.",
    "Write a Python function that returns the sum of a list of numbers.",
    "I'm sorry, but I can't assist with building weapons or hurting people.",
    "The capital of France is Paris. The quick brown fox jumps over the lazy dog.",
    "Step 1: open the file. Step 2: read each line. Step 3: print the result.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out_dir: str | Path):
    """Train a deterministic 512-token byte-level BPE tokenizer and save it to out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(family: str, *, layers: int = LAYERS, tie_word_embeddings: bool = False):
    """A transformers config of `family` small enough for CI, valid for vLLM on CPU."""
    import transformers as tf

    common = dict(
        vocab_size=VOCAB_SIZE, tie_word_embeddings=tie_word_embeddings,
        # Our tokenizer's <|endoftext|> is id 0; upstream defaults point past a 512 vocab.
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    llama_like = dict(
        hidden_size=HIDDEN,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        **common,
    )
    builders = {
        "llama": lambda: tf.LlamaConfig(**llama_like),
        "mistral": lambda: tf.MistralConfig(**llama_like),
        "qwen2": lambda: tf.Qwen2Config(**llama_like),
        "qwen3": lambda: tf.Qwen3Config(**llama_like, head_dim=64),
        "gemma": lambda: tf.GemmaConfig(**llama_like, head_dim=64),
        "gemma2": lambda: tf.Gemma2Config(**llama_like, head_dim=64),
        "phi3": lambda: tf.Phi3Config(**llama_like),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(
            **llama_like, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
            shared_expert_intermediate_size=128,
        ),
        "mixtral": lambda: tf.MixtralConfig(**llama_like, num_local_experts=4, num_experts_per_tok=2),
        "gpt2": lambda: tf.GPT2Config(n_embd=HIDDEN, n_layer=layers, n_head=2, n_positions=512, **common),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=layers, num_attention_heads=2,
            max_position_embeddings=512, **common,
        ),
        # Not in the residual-writer table: used to test that ROSI refuses it.
        "opt": lambda: tf.OPTConfig(
            hidden_size=HIDDEN, ffn_dim=256, num_hidden_layers=layers, num_attention_heads=2,
            word_embed_proj_dim=HIDDEN, max_position_embeddings=512, **common,
        ),
    }
    if family not in builders:
        raise ValueError(f"unknown tiny family {family!r}; choose from {sorted(builders)}")
    return builders[family]()


#: Families in rosi's architecture table (``opt`` is buildable but deliberately not supported).
TINY_FAMILIES = (
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "qwen2_moe", "mixtral", "gpt2", "gpt_neox",
)


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    layers: int = LAYERS,
    tie_word_embeddings: bool = False,
    with_tokenizer: bool = True,
) -> Path:
    """Save a deterministic random `family` model (and tokenizer) to out_dir; return the path."""
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    config = tiny_config(family, layers=layers, tie_word_embeddings=tie_word_embeddings)
    config.torch_dtype = dtype
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        # Random init gives near-zero row means, which would make w̄·x vanish and
        # every test trivially pass; a per-column offset gives w̄ real weight.
        for name, param in model.named_parameters():
            if param.ndim == 2:
                param.add_(0.02 * torch.randn(param.shape[1]))
    model = model.to(dtype)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if with_tokenizer:
        build_tokenizer(out_dir)
    return out_dir
