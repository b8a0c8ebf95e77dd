"""Run real vLLM engines on CPU and dump what the equivalence tests compare.

Run as a subprocess (``python tests/engine_probe.py …``) so vLLM's process-wide
state (thread binding for TP, the distributed environment) is fresh, and a crashed
or leaked engine cannot poison the test process.

Single-worker engines run in this one process, one after the other (``--jobs``):
the engine core in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, the "uni" executor)
and vLLM and torch imported once, so each further engine costs its load and
warm-up (~2 s for a tiny model) instead of a new process (~25 s). Same kernels,
bit-identical outputs to one engine per process. TP/PP engines need their worker
processes and run one per invocation.

Outputs JSON: for each prompt, the logprob vLLM assigns to every prompt token
(``prompt_logprobs``), and a greedy continuation with its logprobs; with
``--jobs``, a mapping job name → that list.
"""

from __future__ import annotations

import argparse
import gc
import json
import os

PROMPTS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast.",
    "I cannot help with that request because it could cause harm.",
    "Write a Python function that returns the sum of a list of numbers.",
]


def engine_kwargs(job: dict, *, tp: int = 1, pp: int = 1, eager: bool = False) -> dict:
    kwargs = {}
    if pp > 1 and not eager:
        # vLLM 0.32's CPU runner allocates the stage-to-stage buffers only in its warm-up, which it
        # skips in eager mode (compilation mode NONE), so later stages fail their first step. One
        # Dynamo trace with the eager backend runs the warm-up without an inductor compile.
        kwargs["compilation_config"] = {"mode": 2, "backend": "eager"}
    else:
        kwargs["enforce_eager"] = True
    if job.get("extra"):
        kwargs["model_loader_extra_config"] = job["extra"]
    if job.get("lora"):
        kwargs.update(enable_lora=True, max_lora_rank=8, max_loras=1)
    if tp * pp == 1:
        kwargs["distributed_executor_backend"] = "uni"
    return dict(model=job["model"], load_format=job.get("load_format", "auto"), tensor_parallel_size=tp,
                pipeline_parallel_size=pp, dtype="bfloat16", kv_cache_memory_bytes=64 << 20, max_model_len=256, seed=0,
                **kwargs)


def run_job(job: dict, max_tokens: int, **parallel) -> list[dict]:
    from vllm import LLM, SamplingParams

    lora_request = None
    if job.get("lora"):
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("probe", 1, job["lora"])
    llm = LLM(**engine_kwargs(job, **parallel))
    # vLLM 0.32's CPU LoRA path fails on prompt logprobs (its logits LoRA sizes them for the sampled tokens
    # only: "einsum(): subscript b has size 3 … 11"), so an adapter run compares the generated tokens' logprobs
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=1,
                            prompt_logprobs=None if job.get("lora") else 0)
    results = []
    for out in llm.generate(job.get("prompts", PROMPTS), params, use_tqdm=False, lora_request=lora_request):
        prompt_lps = [None if d is None else d[tid].logprob
                      for d, tid in zip(out.prompt_logprobs or [], out.prompt_token_ids)]
        gen = out.outputs[0]
        results.append({
            "prompt_token_ids": list(out.prompt_token_ids),
            "prompt_logprobs": prompt_lps,
            "token_ids": list(gen.token_ids),
            "logprobs": [d[t].logprob for d, t in zip(gen.logprobs, gen.token_ids)],
        })
    del llm
    _release_engine()
    return results


def _release_engine() -> None:
    """Tear down what an in-process engine leaves behind, so the next one in this process starts clean."""
    from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    gc.collect()
    destroy_model_parallel()
    destroy_distributed_environment()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", default=None,
                        help="JSON file: {name: {model, load_format?, extra?, lora?, prompts?}}, single-worker engines run "
                             "in this process in turn")
    parser.add_argument("--model")
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--extra", default=None, help="model-loader-extra-config JSON")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--eager", action="store_true", help="force --enforce-eager even with --pp > 1")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--lora", default=None, help="a PEFT adapter folder every prompt is served with")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    parallel = {"tp": args.tp, "pp": args.pp, "eager": args.eager}
    if args.tp * args.pp == 1:
        # one process: the engine core and its worker in this one instead of two more Python processes that each
        # import vLLM and torch
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if args.jobs:
        if args.tp * args.pp != 1:
            parser.error("--jobs runs single-worker engines only")
        with open(args.jobs) as f:
            jobs = json.load(f)
        outputs = {}
        for name, job in jobs.items():
            print(f"engine_probe: job {name}", flush=True)
            outputs[name] = run_job(job, args.max_tokens, **parallel)
    else:
        job = {"model": args.model, "load_format": args.load_format, "lora": args.lora,
               "extra": json.loads(args.extra) if args.extra else None}
        outputs = run_job(job, args.max_tokens, **parallel)
    with open(args.out, "w") as f:
        json.dump(outputs, f)


if __name__ == "__main__":
    main()
