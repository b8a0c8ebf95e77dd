"""Tenants, per-tenant α, A/B arms, metrics and hot reload on the real `vllm serve` (CPU).

The session's shared tenant server (tests/engine/tenant_stack.py: baked α=8, other α
as rank-1 adapters, the rosi middleware) serves this module's tenants. The two
single-α references it is compared with (the checkpoint served with
`--load-format rosi` at α=64, and the plain base model) are engines of one probe
process (tests/engine_probe.py): the same kernels and flags as `vllm serve`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from rosi_vllm.serving.response_capture import event_data, split_events, vllm_choice_texts, vllm_usage
from rosi_vllm.serving.routing import assign_arm
from rosi_vllm.serving.tenant_config import Experiment, key_digest
from tests.engine.engine_runs import run_probe
from tests.engine.tenant_stack import section

pytestmark = pytest.mark.engine

STRICT = 64.0
KEYS = {name: f"sk-test-{name}-0123456789abcdef" for name in ("apex", "beta", "gamma", "delta", "load")}
PROMPTS = ["the quick brown fox", "Write a haiku about the sea", "How do I sort a list in Python?"]
EXPERIMENT = Experiment("exp1", (("base", 50.0), ("strict", 50.0)))
TEACHER_TEXT = "the quick brown fox jumps over the lazy dog and then writes a haiku about the sea"


@section
def tenant_config(flex_alpha: float = 64.0) -> dict:
    def tenant(default, allowed=None, **extra):
        return {"api_key_sha256": [key_digest(KEYS[extra.pop("key")])], "default_variant": default,
                "allowed_variants": allowed or [default], **extra}

    return {
        "policies": {"raw_completions": "allow"},  # the tests compare raw-prompt logprobs across deployments
        "alpha_bounds": {"min": 0, "max": 128},
        "variants": {"base": 0, "standard": "baked", "strict": STRICT, "flex": flex_alpha},
        "tenants": {
            "apex": tenant("standard", ["standard", "strict"], key="apex"),
            "beta": tenant("strict", key="beta", experiment={"name": EXPERIMENT.name,
                                                            "arms": dict(EXPERIMENT.arms)}),
            "gamma": tenant("standard", ["standard", "strict"], key="gamma"),
            "delta": tenant("flex", key="delta"),
            "load": tenant("standard", key="load"),
        },
    }


@pytest.fixture(scope="module")
def stack(tenant_server, tmp_path_factory):
    """The shared tenant server, and the teacher-forced logprobs of the two single-α references."""
    work = tmp_path_factory.mktemp("references")
    model, direction = tenant_server.model, tenant_server.direction
    jobs = {"strict_ref": {"model": model, "load_format": "rosi",
                           "extra": {"direction": str(direction), "alpha": STRICT}, "prompts": [TEACHER_TEXT]},
            "base_ref": {"model": model, "prompts": [TEACHER_TEXT]}}
    refs = run_probe(work / "references.json", jobs=jobs)
    return {"tenants": tenant_server, **{name: out[0]["prompt_logprobs"][1:] for name, out in refs.items()}}


def complete(server, key=None, *, model=None, prompt=PROMPTS[0], max_tokens=8, user=None, stream=False,
             extra=None, headers=None):
    body = {"model": model or str(server_model(server)), "prompt": prompt, "max_tokens": max_tokens,
            "temperature": 0, "logprobs": 1, **(extra or {})}
    if user:
        body["user"] = user
    if stream:
        body["stream"] = True
    hdrs = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(server.url + "/v1/completions", json=body, headers={**hdrs, **(headers or {})},
                         timeout=120, stream=stream)


def server_model(server) -> str:
    return server.proc.args[server.proc.args.index("serve") + 1]


def tokens(response) -> tuple[list[str], list[float]]:
    choice = response.json()["choices"][0]
    return choice["logprobs"]["tokens"], choice["logprobs"]["token_logprobs"]


def scrape(server) -> dict:
    """{(sample name, frozenset(labels)): value} of the rosi_* samples on /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("rosi_"):
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def prompt_logprobs(server, key=None, model=None) -> list[float]:
    """Teacher-forced logprob of every token of a fixed text: compares models without greedy near-ties."""
    r = complete(server, key, model=model, prompt=TEACHER_TEXT, max_tokens=1, extra={"prompt_logprobs": 0})
    assert r.status_code == 200, r.text
    return [next(iter(d.values()))["logprob"] for d in r.json()["choices"][0]["prompt_logprobs"][1:]]


def max_diff(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_tenants_get_their_alpha_and_each_matches_a_single_alpha_deployment(stack):
    server = stack["tenants"]
    apex = prompt_logprobs(server, KEYS["apex"])
    beta = prompt_logprobs(server, KEYS["beta"])  # no user: beta's default, strict (64) as an adapter
    strict_ref, base_ref = stack["strict_ref"], stack["base_ref"]
    # beta = a --load-format rosi deployment at alpha 64, to bf16 rounding; alpha 8 is far from both
    assert max_diff(beta, strict_ref) < 0.02
    assert max_diff(apex, strict_ref) > 0.1 and max_diff(apex, base_ref) > 0.1
    differs = 0
    for prompt in PROMPTS:
        a = complete(server, KEYS["apex"], prompt=prompt)
        b = complete(server, KEYS["beta"], prompt=prompt)
        assert a.status_code == b.status_code == 200, a.text + b.text
        assert a.headers["x-rosi-alpha"] == "8" and b.headers["x-rosi-alpha"] == "64"
        assert b.headers["x-rosi-variant"] == "strict" and b.headers["x-rosi-arm"] == "none"
        differs += tokens(a)[0] != tokens(b)[0]
    assert differs >= 2, "alpha 8 and alpha 64 should give different greedy outputs"


def test_responses_name_the_model_the_client_asked_for(stack):
    """Not the adapter (rosi-alpha-*) nor, for a named baked variant, the checkpoint path: JSON and every SSE event."""
    server = stack["tenants"]
    served = server_model(server)
    for key, model, expected in [("apex", "strict", "strict"), ("apex", "standard", "standard"),
                                 ("beta", None, served), ("apex", served, served)]:
        r = complete(server, KEYS[key], model=model)
        assert r.status_code == 200 and r.json()["model"] == expected, (key, model, r.text)
        r = complete(server, KEYS[key], model=model, stream=True, extra={"stream_options": {"include_usage": True}})
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        assert len(events) >= 2 and {e["model"] for e in events} == {expected}, (key, model, r.text)
        assert "rosi-alpha" not in r.text


def test_base_arm_is_the_unedited_model(stack):
    """Base arm = baked weights + a (−α₀) adapter: the unedited model up to bf16 rounding."""
    server = stack["tenants"]
    user = next(f"user-{i}" for i in range(100) if assign_arm(EXPERIMENT, f"user-{i}") == "base")
    r = complete(server, KEYS["beta"], user=user)
    assert r.headers["x-rosi-arm"] == "base" and r.headers["x-rosi-experiment"] == "exp1"
    body_user = {"user": user}
    r = complete(server, KEYS["beta"], prompt=TEACHER_TEXT, max_tokens=1, extra={"prompt_logprobs": 0, **body_user})
    arm = [next(iter(d.values()))["logprob"] for d in r.json()["choices"][0]["prompt_logprobs"][1:]]
    base_ref = stack["base_ref"]
    baked = prompt_logprobs(server, KEYS["apex"])
    assert max_diff(arm, base_ref) < 0.02
    assert max_diff(baked, base_ref) > 5 * max(max_diff(arm, base_ref), 0.02)


def test_ab_split_of_1000_users_is_within_tolerance_and_sticky(stack, tmp_path):
    server = stack["tenants"]
    before = scrape(server)

    def arm_of(user, via_header=False):
        kw = {"headers": {"x-rosi-user": user}} if via_header else {"user": user}
        r = complete(server, KEYS["beta"], max_tokens=1, **kw)
        assert r.status_code == 200, r.text
        return r.headers["x-rosi-arm"]

    users = [f"synthetic-{i}" for i in range(1000)]
    with cf.ThreadPoolExecutor(16) as pool:
        arms = list(pool.map(arm_of, users))
        again = list(pool.map(lambda u: arm_of(u, via_header=True), users[:200]))
    counts = collections.Counter(arms)
    assert set(counts) == {"base", "strict"}
    assert abs(counts["base"] - 500) <= 63, counts  # 4 sigma of Binomial(1000, 0.5)
    assert again == arms[:200], "arm assignment must be sticky per user (body field or header)"
    assert arms == [assign_arm(EXPERIMENT, u) for u in users], "the server must use the documented assignment"
    after = scrape(server)
    for arm in ("base", "strict"):
        sent = counts[arm] + collections.Counter(again)[arm]
        got = (total(after, "rosi_requests_total", tenant="beta", experiment="exp1", arm=arm)
               - total(before, "rosi_requests_total", tenant="beta", experiment="exp1", arm=arm))
        assert got == sent, (arm, got, sent)
    # the operator's report reads the same live metrics
    out = tmp_path / "ab.json"
    done = subprocess.run([sys.executable, "-m", "rosi_vllm.cli", "ab", "report", "--metrics", server.url + "/metrics",
                           "--tenant", "beta", "--experiment", "exp1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert set(report["arms"]) == {"base", "strict"} and report["control"] == "base"
    assert sum(a["requests"] for a in report["arms"].values()) >= 1200
    assert report["comparisons"][0]["e2e_mean_ratio"] > 0 and out.with_suffix(".png").exists()


def _chat(server, key, stream: bool, max_tokens: int):
    body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True, "stream": stream}
    r = requests.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=120, stream=stream)
    assert r.status_code == 200, r.text
    text = r.text if stream else json.dumps(r.json())
    return text


def test_metric_counts_equal_requests_sent_streaming_and_not(stack):
    server = stack["tenants"]
    before = scrape(server)
    max_tokens = 4
    for _ in range(4):
        assert complete(server, KEYS["gamma"], max_tokens=max_tokens, extra={"ignore_eos": True}).status_code == 200
    streamed = []
    for _ in range(3):
        r = complete(server, KEYS["gamma"], max_tokens=max_tokens, stream=True, extra={"ignore_eos": True})
        streamed.append(r.text)
    for _ in range(2):
        _chat(server, KEYS["gamma"], stream=False, max_tokens=max_tokens)
    for _ in range(3):
        streamed.append(_chat(server, KEYS["gamma"], stream=True, max_tokens=max_tokens))
    # the usage event the middleware asked for is not shown to clients that did not ask for it
    assert all('"usage"' not in s.split("data: [DONE]")[0].splitlines()[-2] for s in streamed)
    # vLLM's real events are in the shape the layer reads by pattern (the cheap path), completions and chat alike
    pattern_read = 0
    for stream in streamed:
        for event in split_events(stream.encode())[0]:
            payload = event_data(event)
            if not payload or payload == b"[DONE]":
                continue
            choices = json.loads(payload)["choices"]
            texts = [(c["index"], c["text"] if "text" in c else c.get("delta", {}).get("content")) for c in choices]
            expected = [(i, t) for i, t in texts if t is not None]
            assert vllm_choice_texts(event) == expected, event
            pattern_read += bool(expected)
    assert pattern_read >= 6 * max_tokens
    # ... and so is its usage event (asked for by the client, so forwarded): its counts are read by pattern too
    r = complete(server, KEYS["gamma"], max_tokens=max_tokens, stream=True,
                 extra={"ignore_eos": True, "stream_options": {"include_usage": True}})
    usage_events = [e for e in split_events(r.text.encode())[0] if b'"usage"' in e and b'"choices":[]' in e]
    assert len(usage_events) == 1, r.text
    usage = json.loads(event_data(usage_events[0]))["usage"]
    assert vllm_usage(usage_events[0]) == (usage["prompt_tokens"], usage["completion_tokens"])
    after = scrape(server)

    def delta(name, **labels):
        return total(after, name, tenant="gamma", **labels) - total(before, name, tenant="gamma", **labels)

    assert delta("rosi_requests_total", status="200") == 13
    assert delta("rosi_requests_total", endpoint="completions") == 8
    assert delta("rosi_requests_total", endpoint="chat") == 5
    assert delta("rosi_judged_responses_total") == 13
    assert delta("rosi_generated_tokens_total") == 13 * max_tokens
    assert delta("rosi_e2e_seconds_count") == 13
    assert delta("rosi_ttft_seconds_count") == 7  # streaming requests only
    assert delta("rosi_requests_total", variant="standard", arm="none") == 13
    info = [dict(ls) for (n, ls), v in after.items() if n == "rosi_direction_info" and v == 1]
    assert len(info) == 1 and info[0]["baked_alpha"] == "8" and len(info[0]["direction_id"]) == 12
    assert info[0]["read"] == "mean" and info[0]["window"] == ""  # a v1 direction: every layer, w̄


def test_hot_reload_changes_alpha_mid_traffic_without_failures(stack):
    server = stack["tenants"]
    generation = int(total(scrape(server), "rosi_tenant_config_generation"))  # the shared server's, so far
    results, stop = [], False

    def traffic():
        while not stop:
            r = complete(server, KEYS["delta"], max_tokens=2)
            results.append((time.monotonic(), r.status_code, r.headers.get("x-rosi-alpha")))

    with cf.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(traffic) for _ in range(4)]
        time.sleep(2)
        server.write_section(__name__, flex_alpha=32.0)
        changed = time.monotonic()
        deadline = changed + 60
        while time.monotonic() < deadline and not any(a == "32" for _, _, a in results):
            time.sleep(0.2)
        time.sleep(2)
        server.write_section(__name__, flex_alpha=-5.0)  # invalid: must be rejected, 32 keeps serving
        time.sleep(3)
        stop = True
        for w in workers:
            w.result()
    assert results and all(status == 200 for _, status, _ in results), collections.Counter(s for _, s, _ in results)
    alphas = [a for _, _, a in results]
    assert "64" in alphas and "32" in alphas
    assert set(alphas[-4:]) == {"32"}
    log = server.log()
    assert f"tenant config generation {generation + 1} applied" in log
    assert f"tenant config reload rejected, still serving generation {generation + 1}" in log and "negative" in log
    server.restore()  # back to the session's config for later tests
    deadline = time.monotonic() + 30
    while complete(server, KEYS["delta"], max_tokens=1).headers["x-rosi-alpha"] != "64":
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_security_rules(stack):
    server = stack["tenants"]
    url = server.url
    assert complete(server, None).status_code == 401
    assert complete(server, "sk-wrong").status_code == 401
    assert requests.get(url + "/v1/models", timeout=10).status_code == 401
    # a tenant cannot pick another tenant's variant, the base arm or an adapter by naming it
    for key, model in [("apex", "base"), ("beta", "standard"), ("apex", "flex"), ("apex", "rosi-alpha-0"),
                       ("apex", "rosi-alpha-64"), ("beta", "base")]:
        r = complete(server, KEYS[key], model=model)
        assert r.status_code == 404, (key, model, r.status_code)
    assert complete(server, KEYS["apex"], model="strict").headers["x-rosi-alpha"] == "64"  # allowed: works
    # runtime adapter management is not reachable, even with a valid key
    r = requests.post(url + "/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/tmp"},
                      headers={"Authorization": f"Bearer {KEYS['apex']}"}, timeout=10)
    assert r.status_code == 403
    r = requests.post(url + "/tokenize", json={"model": "base", "prompt": "hi"},
                      headers={"Authorization": f"Bearer {KEYS['apex']}"}, timeout=10)
    assert r.status_code == 404
    assert requests.get(url + "/health", timeout=10).status_code == 200
    log = server.log()
    for key in KEYS.values():
        assert key not in log


def test_500_concurrent_streamed_requests_lose_none(stack):
    import asyncio

    import aiohttp

    server = stack["tenants"]
    before = scrape(server)

    async def one(session, i):
        body = {"model": server_model(server), "prompt": f"request {i}", "max_tokens": 4, "temperature": 0,
                "ignore_eos": True, "stream": True}
        async with session.post(server.url + "/v1/completions", json=body,
                                headers={"Authorization": f"Bearer {KEYS['load']}"}) as r:
            text = await r.text()
            return r.status, text.rstrip().endswith("data: [DONE]"), text.count('"text"')

    async def main():
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            return await asyncio.gather(*(one(session, i) for i in range(500)))

    results = asyncio.run(main())
    assert all(status == 200 for status, _, _ in results), collections.Counter(s for s, _, _ in results)
    assert all(done for _, done, _ in results)
    assert all(n >= 1 for _, _, n in results)  # under load vLLM may put several tokens in one event
    after = scrape(server)

    def delta(name):
        return total(after, name, tenant="load") - total(before, name, tenant="load")

    assert delta("rosi_requests_total") == 500
    assert delta("rosi_generated_tokens_total") == 500 * 4  # exact, from the usage event


def test_dashboard_references_only_metrics_the_live_server_exports(stack):
    """Runs last: by now every labelled rosi_* series (reloads, rejections) has been created."""
    from tests.deploy.test_validate import dashboard_metric_names

    text = requests.get(stack["tenants"].url + "/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    missing = dashboard_metric_names() - exported
    assert not missing, missing
