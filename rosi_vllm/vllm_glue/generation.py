"""vLLM's offline engine, driven for evaluation, selection and the demo.

`chat_completions` is what `rosi eval` measures: the checkpoint served as users
serve it (default loader, or ``--load-format rosi``). `next_token_logprobs`
gives the top next-token distribution (the tiny demo). `LoraVariantGenerator`
generates for many ROSI variants at once on one engine, as rank-1 LoRA adapters:
selection scores dozens of (layer, α) candidates. Each is exported as a PEFT
adapter (`adapters.py`); one engine holds the base weights and all requests go
in one batched call, each with its candidate's adapter (None: the base model).
vLLM's LoRA path gives the same logprobs as baked weights to within bf16
rounding of the adapter (4e-3 seen on the tiny test model), far below the
differences selection compares.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from ..core.adapters import write_adapter, writer_read_vectors
from ..core.injection_plan import InjectionPlan

#: ``ROSI_ENFORCE_EAGER=1``: the offline engines skip vLLM's graph compilation (on CPU an inductor C++ build of
#: tens of seconds): a faster start and a slower decode, the right trade for short runs (the tests' tiny models)
ENFORCE_EAGER_ENV = "ROSI_ENFORCE_EAGER"


def compile_kwargs() -> dict:
    """`LLM(...)` keyword arguments for graph compilation: vLLM's default unless `ENFORCE_EAGER_ENV` is "1"."""
    return {"enforce_eager": True} if os.environ.get(ENFORCE_EAGER_ENV) == "1" else {}


def rosi_engine_kwargs(direction: str | None, alpha: float | None) -> dict:
    """`LLM(...)` keyword arguments for ``--load-format rosi`` with this direction (none: the default loader)."""
    if not direction:
        return {}
    extra = {"direction": str(direction)}
    if alpha is not None:
        extra["alpha"] = alpha
    return {"load_format": "rosi", "model_loader_extra_config": extra}


#: a workload-sized engine holds KV cache for this many sequences of its longest length at once
KV_SEQUENCES = 32


def sized_for(model: str, instructions, max_tokens: int, max_model_len: int | None = None,
              sequences: int = KV_SEQUENCES) -> dict:
    """`LLM(...)` arguments sizing an engine for a batch of chat requests: context for the longest (chat
    template applied, plus `max_tokens`, rounded up to 256, at most the model's own) unless `max_model_len` is
    given, and KV cache for `sequences` of that length (bytes per token from the model's config: K and V, every
    layer, bfloat16). vLLM's default instead takes a share of memory: on CPU, half the RAM, whose allocation
    alone took ~60 s of an evaluation engine's start on 2 cores (research/results/harden/measurements-2026-12-04.json)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(str(model))
    config = getattr(config, "text_config", None) or config
    if max_model_len is None:
        tokenizer = AutoTokenizer.from_pretrained(str(model))
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                               add_generation_prompt=True) for t in instructions]
        longest = max((len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]), default=0)
        context = int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 30
        max_model_len = min(context, 256 * math.ceil((longest + max_tokens) / 256))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * 2
    return {"max_model_len": max_model_len, "kv_cache_memory_bytes": per_token * max_model_len * sequences}


def chat_completions(model: str, instructions, *, direction: str | None, alpha: float | None, max_tokens: int,
                     tensor_parallel_size: int = 1, max_model_len: int | None = None,
                     gpu_memory_utilization: float | None = None, engine: dict | None = None) -> list[str]:
    """Greedy chat completions of `instructions` from one engine, torn down afterwards. Without
    `gpu_memory_utilization` the engine is sized for these requests (`sized_for`); `engine`: further
    `LLM(...)` keyword arguments (they win over the compile setting)."""
    from vllm import LLM, SamplingParams

    instructions = list(instructions)
    if gpu_memory_utilization is None:
        kwargs = sized_for(model, instructions, max_tokens, max_model_len)
    else:  # on CPU vLLM reads it as the share of the NUMA node's RAM for weights + KV cache
        kwargs = {"gpu_memory_utilization": gpu_memory_utilization}
        kwargs.update({"max_model_len": max_model_len} if max_model_len else {})
    kwargs.update(rosi_engine_kwargs(direction, alpha), **compile_kwargs())
    kwargs.update(engine or {})
    llm = LLM(model=model, dtype="bfloat16", seed=0, tensor_parallel_size=tensor_parallel_size, **kwargs)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    outs = llm.chat([[{"role": "user", "content": text}] for text in instructions], params, use_tqdm=True)
    texts = [o.outputs[0].text for o in outs]
    del llm
    return texts


def next_token_logprobs(model: str, prompts: list[str], *, direction: str | None = None, top: int = 20,
                        **engine_kwargs) -> list[dict[int, float]]:
    """For each raw prompt, the top-`top` next-token logprobs {token id: logprob} from one engine."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), **{**compile_kwargs(), **engine_kwargs}, **rosi_engine_kwargs(direction, None))
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=top)
    outs = llm.generate(prompts, params, use_tqdm=False)
    del llm
    return [{tid: lp.logprob for tid, lp in o.outputs[0].logprobs[0].items()} for o in outs]


class LoraVariantGenerator:
    def __init__(self, model_dir: str | Path, *, max_loras: int = 8, max_model_len: int = 2048,
                 gpu_memory_utilization: float = 0.2):
        from vllm import LLM

        self.model_dir = str(model_dir)
        self._tmp = tempfile.TemporaryDirectory(prefix="rosi-variants-")
        self._adapters: dict[tuple, object] = {}
        self._reads = None
        self.llm = LLM(model=self.model_dir, enable_lora=True, max_lora_rank=8, max_loras=max_loras,
                       max_cpu_loras=4096, dtype="bfloat16", max_model_len=max_model_len, seed=0,
                       gpu_memory_utilization=gpu_memory_utilization, **compile_kwargs())
        self.tokenizer = self.llm.get_tokenizer()

    def _lora_request(self, plan: InjectionPlan | None):
        from vllm.lora.request import LoRARequest

        if plan is None:
            return None
        key = plan.edit_key
        if key not in self._adapters:
            if self._reads is None:
                self._reads = writer_read_vectors(plan, self.model_dir)
            path = Path(self._tmp.name) / f"v{len(self._adapters) + 1}"
            write_adapter(plan, self.model_dir, path, reads=self._reads)
            self._adapters[key] = LoRARequest(f"rosi-{len(self._adapters) + 1}", len(self._adapters) + 1, str(path))
        return self._adapters[key]

    def generate(self, jobs: list[tuple[InjectionPlan | None, list[str]]], max_new_tokens: int) -> list[list[str]]:
        """For each (variant, instructions) job, greedy completions of the chat-formatted instructions."""
        from vllm import SamplingParams

        texts, requests, spans = [], [], []
        for plan, instructions in jobs:
            request = self._lora_request(plan)
            start = len(texts)
            for instruction in instructions:
                texts.append(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True))
                requests.append(request)
            spans.append((start, len(texts)))
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        outs = self.llm.generate(texts, params, lora_request=requests, use_tqdm=True)
        completions = [o.outputs[0].text for o in outs]
        return [completions[a:b] for a, b in spans]

    def close(self) -> None:
        del self.llm
        self._tmp.cleanup()
