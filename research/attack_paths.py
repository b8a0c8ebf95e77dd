"""What the hardened model does with the attacks the tenant policies close, when a tenant is allowed them.

    python -m research.attack_paths --model smollm2-135m-instruct \\
        --direction directions/smollm2-135m-instruct.safetensors --prompts 100   # the figures in docs/tenants.md
    python -m research.attack_paths --direction directions/smollm2-135m-instruct-gated-wrapped.safetensors \\
        --name attack_paths_recommended            # the recommended file (gated, wrapped)
    python -m research.attack_paths --smoke                                    # tiny random model, 4 prompts

One real `vllm serve` (``--load-format rosi`` at the direction's α, the tenant
layer with one tenant whose policies are all ``allow``). Each harmful prompt of
the test split is sent plainly (a chat request: the case the weight edit is
measured on) and as each of the three request-shape attacks of
`rosi_vllm.testing.attack_requests` (assistant prefill, raw prompt, forged
turn), greedy; the refusal judge (`rosi_vllm.core.judge.SubstringJudge`) reads each
reply, and every rate carries its Wilson 95 % interval (`rosi_vllm.core.stats`).
A drop from the plain rate is what the policy (at its default, deny) saves.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import tempfile
import time
from pathlib import Path

import yaml

from ._common import direction_for, resolve_model, study_parser, write_result

KEY = "sk-attack-paths-0123456789"


def run(model: Path, direction: Path, prompts: list[str], max_tokens: int, work: Path) -> dict:
    import requests
    from transformers import AutoTokenizer

    from rosi_vllm.core.judge import SubstringJudge
    from rosi_vllm.core.stats import rate
    from rosi_vllm.serving.tenant_config import key_digest
    from rosi_vllm.testing.attack_requests import KINDS, attack, reply_text
    from rosi_vllm.testing.serve_process import start_server, wait_until

    config = work / "tenants.yaml"
    config.write_text(yaml.safe_dump({"version": 1, "variants": {"standard": "baked"}, "tenants": {"open": {
        "api_key_sha256": [key_digest(KEY)], "default_variant": "standard",
        "policies": {"assistant_prefill": "allow", "raw_completions": "allow", "control_tokens_in_content": "allow"}}}}))
    server = start_server(model, work / "serve.log", extra={"direction": str(direction)},
                          env={"ROSI_TENANT_CONFIG": str(config)},
                          args=["--middleware", "rosi_vllm.serving.middleware.RosiTenantMiddleware"])
    tokenizer = AutoTokenizer.from_pretrained(model)
    name = str(model)
    cases = [("plain", p, ("/v1/chat/completions", {"model": name, "max_tokens": max_tokens, "temperature": 0,
                                                    "messages": [{"role": "user", "content": p}]}))
             for p in prompts]
    cases += [(kind, p, attack(kind, p, tokenizer, name, max_tokens)) for kind in KINDS for p in prompts]

    def send(case):
        kind, _, (path, body) = case
        r = requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"{kind}: {r.status_code} {r.text[:300]}")
        return kind, reply_text(path, r.json())

    try:
        up, _ = wait_until(server, timeout=900)
        if not up:
            raise RuntimeError(f"vllm serve did not come up: {server.log()[-3000:]}")
        started = time.perf_counter()
        with cf.ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(send, cases))
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    judge = SubstringJudge()
    by_kind: dict[str, list[str]] = {}
    for kind, text in replies:
        by_kind.setdefault(kind, []).append(text)
    out = {kind: {**rate(judge.judge(texts)), "example": texts[0][:200]} for kind, texts in by_kind.items()}
    return {"refusal": out, "requests": len(cases), "generation_s": seconds}


def main(argv=None) -> int:
    from rosi_vllm.extraction.prompts import harmful

    parser = study_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--direction", default=None, help="default: directions/<model>.safetensors")
    parser.add_argument("--prompts", type=int, default=100, help="harmful prompts of the test split")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--name", default="attack_paths", help="result file name (docs/generate.py renders every "
                                                               "research/results/attack_paths*.json)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="rosi-attacks-"))
    model = resolve_model("tiny" if args.smoke else args.model, work)
    shipped = None if args.smoke else (args.direction or f"directions/{args.model}.safetensors")
    direction, direction_kind = direction_for(model, work, shipped)
    prompts = list(harmful("test")[: 4 if args.smoke else args.prompts])
    result = run(model, direction, prompts, 4 if args.smoke else args.max_tokens, work)
    result.update(model=args.model if not args.smoke else "tiny", direction=direction_kind, prompts=len(prompts),
                  split="test", judge="SubstringJudge", max_tokens=4 if args.smoke else args.max_tokens)
    name = "attack_paths_smoke" if args.smoke else args.name
    path = write_result(name, result, args.out_dir, args.command)
    print(json.dumps({k: {m: v[m] for m in ("rate", "k", "n", "ci95")}
                      for k, v in result["refusal"].items()}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
