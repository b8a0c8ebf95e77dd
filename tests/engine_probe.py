"""Run one real vLLM engine on CPU and dump what the equivalence tests compare.

Run as a subprocess (``python tests/engine_probe.py …``) so each engine gets a
fresh process: vLLM's environment (thread binding for TP) is read at start-up,
and a crashed or leaked engine cannot poison the next test.
Outputs JSON: for each prompt, the logprob vLLM assigns to every prompt token
(``prompt_logprobs``), and a greedy continuation with its logprobs.
"""

from __future__ import annotations

import argparse
import json

PROMPTS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast.",
    "I cannot help with that request because it could cause harm.",
    "Write a Python function that returns the sum of a list of numbers.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--load-format", default="auto")
    parser.add_argument("--extra", default=None, help="model-loader-extra-config JSON")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--eager", action="store_true", help="force --enforce-eager even with --pp > 1")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--lora", default=None, help="a PEFT adapter folder every prompt is served with")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import os

    single_worker = args.tp * args.pp == 1
    if single_worker:
        # one process: the engine core and its worker in this one (VLLM_ENABLE_V1_MULTIPROCESSING=0 and the "uni"
        # executor below) instead of two more Python processes that each import vLLM and torch; same kernels,
        # bit-identical outputs, about a third of the start-up time
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

    from vllm import LLM, SamplingParams

    kwargs = {}
    if args.pp > 1 and not args.eager:
        # vLLM 0.32's CPU runner allocates the stage-to-stage buffers only in its warm-up, which it
        # skips in eager mode (compilation mode NONE), so later stages fail their first step. One
        # Dynamo trace with the eager backend runs the warm-up without an inductor compile.
        kwargs["compilation_config"] = {"mode": 2, "backend": "eager"}
    else:
        kwargs["enforce_eager"] = True
    if args.extra:
        kwargs["model_loader_extra_config"] = json.loads(args.extra)
    lora_request = None
    if args.lora:
        from vllm.lora.request import LoRARequest

        kwargs.update(enable_lora=True, max_lora_rank=8, max_loras=1)
        lora_request = LoRARequest("probe", 1, args.lora)
    if single_worker:
        kwargs["distributed_executor_backend"] = "uni"
    llm = LLM(
        model=args.model,
        load_format=args.load_format,
        tensor_parallel_size=args.tp,
        pipeline_parallel_size=args.pp,
        dtype="bfloat16",
        gpu_memory_utilization=0.1,
        max_model_len=256,
        seed=0,
        **kwargs,
    )
    # vLLM 0.32's CPU LoRA path fails on prompt logprobs (its logits LoRA sizes them for the sampled tokens
    # only: "einsum(): subscript b has size 3 … 11"), so an adapter run compares the generated tokens' logprobs
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, logprobs=1,
                            prompt_logprobs=None if args.lora else 0)
    results = []
    for out in llm.generate(PROMPTS, params, use_tqdm=False, lora_request=lora_request):
        prompt_lps = [None if d is None else d[tid].logprob
                      for d, tid in zip(out.prompt_logprobs or [], out.prompt_token_ids)]
        gen = out.outputs[0]
        results.append(
            {
                "prompt_token_ids": list(out.prompt_token_ids),
                "prompt_logprobs": prompt_lps,
                "token_ids": list(gen.token_ids),
                "logprobs": [d[t].logprob for d, t in zip(gen.logprobs, gen.token_ids)],
            }
        )
    with open(args.out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
