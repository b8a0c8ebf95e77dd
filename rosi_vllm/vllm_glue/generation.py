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


def chat_completions(model: str, instructions, *, direction: str | None, alpha: float | None, max_tokens: int,
                     tensor_parallel_size: int = 1, max_model_len: int | None = None,
                     gpu_memory_utilization: float = 0.5) -> list[str]:
    """Greedy chat completions of `instructions` from one engine, torn down afterwards."""
    from vllm import LLM, SamplingParams

    kwargs = {"max_model_len": max_model_len} if max_model_len else {}
    kwargs.update(rosi_engine_kwargs(direction, alpha), **compile_kwargs())
    # On CPU vLLM reads gpu_memory_utilization as the share of the NUMA node's RAM for weights + KV cache.
    llm = LLM(model=model, dtype="bfloat16", gpu_memory_utilization=gpu_memory_utilization, seed=0,
              tensor_parallel_size=tensor_parallel_size, **kwargs)
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
