"""The tenant layer under load, faults and hostile input, on the session's shared `vllm serve` (CPU, tiny model).

The server (tests/engine/tenant_stack.py) runs ``--scheduling-policy priority`` with a
small batch (``--max-num-seqs 4``) so a flood really queues, and the rosi middleware;
this module's tenants are its section of the server's config. Every variant here has
the baked α, so no adapter is involved (adapters are covered by test_tenant_serving.py).
The engine-death test kills the engine and so runs after every other test of the
session (marker ``kills_engine``). Figures go to ``benchmarks/results/reliability.json``
when ``ROSI_RELIABILITY_OUT`` names it (docs/reliability.md renders them).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest
import requests

from rosi_vllm.serving.tenant_config import key_digest
from tests.engine.tenant_stack import section, write_config
from tests.engine.test_tenant_serving import scrape, total

pytestmark = pytest.mark.engine

TENANTS = ("interactive", "bulk", "peer", "limited", "tpm", "fuzz", "other", "traffic")
KEYS = {name: f"sk-rel-{name}-0123456789" for name in TENANTS}
#: the variants each tenant may be served (schemathesis checks no response names another)
USABLE = {"fuzz": {"alias"}, "other": {"private"}}
FIGURES: dict = {}


@section
def tenant_config(limited_concurrency: int = 2) -> dict:
    def tenant(name, default="standard", **extra):
        return {"api_key_sha256": [key_digest(KEYS[name])], "default_variant": default, **extra}

    return {
        "max_body_bytes": 65536,
        # raw prompts for the traffic here; prefill and forged turns keep the safe defaults, so the fuzz
        # below also meets those rejections (tests/engine/test_tenant_policies.py measures them)
        "policies": {"raw_completions": "allow"},
        "variants": {"standard": "baked", "alias": 8, "private": 8},  # all the baked α: no adapters
        "tenants": {
            "interactive": tenant("interactive", priority=0),
            "bulk": tenant("bulk", priority=10),
            "peer": tenant("peer", priority=10),  # bulk's priority: what interactive would see without its own
            "limited": tenant("limited", limits={"max_concurrent_requests": limited_concurrency}),
            "tpm": tenant("tpm", limits={"tokens_per_minute": 600}),
            "fuzz": tenant("fuzz", "alias"),
            "other": tenant("other", "private"),
            "traffic": tenant("traffic"),
        },
    }


@pytest.fixture(scope="module")
def server(tenant_server):
    try:
        yield tenant_server
    finally:
        out = os.environ.get("ROSI_RELIABILITY_OUT")
        if out and FIGURES:
            from benchmarks._common import machine

            payload = {"benchmark": "reliability", "machine": machine(), **FIGURES,
                       "command": f"ROSI_RELIABILITY_OUT={out} python3 -m pytest tests/engine/test_tenant_reliability.py"}
            Path(out).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def body(server, max_tokens=4, stream=False, prompt="the quick brown fox", **extra) -> dict:
    out = {"model": server.proc.args[server.proc.args.index("serve") + 1], "prompt": prompt,
           "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}
    if stream:
        out["stream"] = True
    return out


def post(server, tenant, timeout=120, **kw):
    return requests.post(server.url + "/v1/completions", json=body(server, **kw),
                         headers={"Authorization": f"Bearer {KEYS[tenant]}"}, timeout=timeout, stream=kw.get("stream"))


def ttft(server, tenant) -> float:
    """Seconds to the first generated text of a streamed request."""
    started = time.perf_counter()
    with post(server, tenant, stream=True, max_tokens=2) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: {") and b'"text":"' in line and b'"text":""' not in line:
                first = time.perf_counter() - started
                for _ in r.iter_lines():
                    pass
                return first
    raise AssertionError("no text in the stream")


def p99(values):
    return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def test_priority_keeps_the_interactive_tenants_ttft_while_a_bulk_tenant_floods(server):
    """Bulk keeps 32 long streams in flight (8x the batch); interactive (priority 0) and peer (bulk's 10) probe TTFT.

    Stated bound: interactive TTFT p99 under the flood stays below 1/3 of the peer's median (the queue a tenant
    without priority waits in), and below 2 s.
    """
    idle = [ttft(server, "interactive") for _ in range(5)]
    stop = threading.Event()
    bulk_status = collections.Counter()

    def flood():
        while not stop.is_set():
            r = post(server, "bulk", max_tokens=48)
            bulk_status[r.status_code] += 1

    before = scrape(server)
    probes = {"interactive": [], "peer": []}
    with cf.ThreadPoolExecutor(34) as pool:
        floods = [pool.submit(flood) for _ in range(32)]
        time.sleep(3)  # the queue fills
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline or len(probes["peer"]) < 5:
            for tenant in ("interactive", "peer"):
                probes[tenant].append(ttft(server, tenant))
        stop.set()
        for f in floods:
            f.result()
    inter, peer = probes["interactive"], probes["peer"]
    FIGURES["priority"] = {
        "bulk_streams": 32, "max_num_seqs": 4, "bulk_requests": sum(bulk_status.values()),
        "interactive_probes": len(inter), "interactive_ttft_p50_s": statistics.median(inter),
        "interactive_ttft_p99_s": p99(inter), "idle_ttft_p50_s": statistics.median(idle),
        "peer_probes": len(peer), "peer_ttft_p50_s": statistics.median(peer), "peer_ttft_p99_s": p99(peer)}
    after = scrape(server)
    counted = {t: total(after, "rosi_requests_total", tenant=t, status="200")
               - total(before, "rosi_requests_total", tenant=t, status="200") for t in ("bulk", "interactive", "peer")}
    sent = {"bulk": sum(bulk_status.values()), "interactive": len(inter), "peer": len(peer)}
    FIGURES["priority"]["counted_equals_sent"] = counted == sent
    assert set(bulk_status) == {200}, bulk_status
    assert counted == sent, (counted, sent)  # every request the flood sent is counted, none lost
    assert p99(inter) < statistics.median(peer) / 3, FIGURES["priority"]
    assert p99(inter) < 2.0, FIGURES["priority"]


def test_limits_answer_429_with_retry_after_and_follow_hot_reload(server):
    before = scrape(server)

    def burst(n):
        with cf.ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: post(server, "limited", max_tokens=120), range(n)))

    responses = burst(6)
    statuses = collections.Counter(r.status_code for r in responses)
    assert statuses == {200: 2, 429: 4}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"
    generation = int(total(scrape(server), "rosi_tenant_config_generation"))
    server.write_section(__name__, limited_concurrency=6)
    deadline = time.monotonic() + 20
    while f"tenant config generation {generation + 1} applied" not in server.log():
        post(server, "traffic")  # reloads are checked on the request path
        assert time.monotonic() < deadline
    assert collections.Counter(r.status_code for r in burst(6)) == {200: 6}

    # tokens per minute: sequential requests until refused; what was admitted fits the bucket
    started, used, refused = time.monotonic(), 0, None
    while refused is None and time.monotonic() - started < 30:
        r = post(server, "tpm", max_tokens=50)
        if r.status_code == 429:
            refused = r
        else:
            assert r.status_code == 200, r.text
            used += r.json()["usage"]["total_tokens"]
    elapsed = time.monotonic() - started
    assert refused is not None and refused.json()["error"]["type"] == "tokens"
    assert int(refused.headers["retry-after"]) >= 1
    assert 600 - 100 <= used <= 600 + 600 / 60 * elapsed + 100, (used, elapsed)  # bucket + refill ± one request
    after = scrape(server)

    def delta(reason, tenant):
        return (total(after, "rosi_limited_requests_total", tenant=tenant, reason=reason)
                - total(before, "rosi_limited_requests_total", tenant=tenant, reason=reason))

    assert delta("concurrency", "limited") == 4 and delta("tokens", "tpm") == 1
    FIGURES["limits"] = {"burst": 6, "admitted_at_limit_2": 2, "refused_429": 4, "admitted_after_reload_to_6": 6,
                         "tpm_limit": 600, "tpm_tokens_admitted": used, "tpm_seconds": elapsed}


def test_a_broken_tenant_file_during_traffic_keeps_the_last_good_generation(server):
    config = server.config
    good = config.read_text()
    before, log_start = scrape(server), len(server.log())
    results, stop = [], threading.Event()

    def traffic():
        while not stop.is_set():
            r = post(server, "traffic", max_tokens=2)
            results.append(r.status_code)

    def unlink():
        config.unlink()

    def directory():
        config.mkdir()

    # (name, fault, what its rejection says)
    faults = [("truncated", lambda: config.write_text(""), "must be a YAML mapping"),
              ("half-written", lambda: config.write_text(good[: good.index("tenants:") + 40]), "is required"),
              ("deleted", unlink, "No such file or directory"), ("unreadable (a directory)", directory, "Is a directory"),
              ("binary", lambda: (config.rmdir(), config.write_bytes(b"\xff\x00\xfe")), "unacceptable character"),
              ("not yaml", lambda: config.write_text("tenants: [unclosed"), "while parsing a flow sequence")]
    with cf.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(traffic) for _ in range(4)]
        for _, fault, _ in faults:
            fault()
            time.sleep(1.6)  # reloads are checked at most once a second
        write_config(config, good)
        time.sleep(1.6)
        stop.set()
        for w in workers:
            w.result()
    after = scrape(server)
    rejected = total(after, "rosi_tenant_config_reloads_total", result="rejected") - total(
        before, "rosi_tenant_config_reloads_total", result="rejected")
    counts = collections.Counter(results)
    counted = total(after, "rosi_requests_total", tenant="traffic", status="200") - total(
        before, "rosi_requests_total", tenant="traffic", status="200")
    assert counts == {200: len(results)} and len(results) > 20, counts
    assert counted == len(results)
    # every fault is rejected; a fault applied by a non-atomic write (truncate then write, rmdir then write) can
    # also be caught half-way by a reload check, one more bad state, rejected and counted like the rest (an
    # editor saving in place does the same): so at least one and at most two rejections per fault
    assert len(faults) <= rejected <= 2 * len(faults), rejected
    rejections = [line for line in server.log()[log_start:].splitlines() if "tenant config reload rejected" in line]
    for name, _, reason in faults:  # and each fault was seen and rejected for its own reason
        assert any(reason in line for line in rejections), (name, rejections)
    generation = int(total(before, "rosi_tenant_config_generation"))  # the last good one, still served throughout
    assert all(f"still serving generation {generation}:" in line for line in rejections), rejections
    assert total(after, "rosi_tenant_config_reloads_total", result="applied") - total(
        before, "rosi_tenant_config_reloads_total", result="applied") == 1  # the good file, back
    FIGURES["config_faults"] = {"faults": [name for name, _, _ in faults], "requests_during": len(results),
                                "counted_equals_sent": counted == len(results),
                                "requests_failed": len(results) - counts[200], "rejections_counted": rejected}


def test_schemathesis_through_the_middleware(server):
    """vLLM's own OpenAPI schema, every operation: first with no key and a wrong key, then with a tenant's key.

    No 5xx; without a valid key nothing but the public paths answers and the engine sees no request (vLLM's own
    request counter does not move); with a key only that tenant's own variant is served.
    """
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings

    from rosi_vllm.vllm_glue.compat import openapi_schema

    assert requests.get(server.url + "/openapi.json", timeout=10).status_code == 401  # default deny, so:
    spec = openapi_schema(["--model", server.proc.args[server.proc.args.index("serve") + 1]])
    schema = schemathesis.openapi.from_dict(spec)
    public = {"/health", "/ping", "/metrics", "/version", "/load", "/openapi.json", "/docs", "/redoc"}
    mutating = ("/v1/load_lora", "/v1/unload_lora", "/sleep", "/wake_up", "/reset", "/collective_rpc",
                "/scale_elastic", "/pause", "/resume", "/shutdown", "/start_profile", "/stop_profile")
    operations = [r.ok() for r in schema.get_all_operations()]
    models = [server.proc.args[server.proc.args.index("serve") + 1], "alias", "private", "standard"]
    tried, statuses, served, problems = collections.Counter(), collections.Counter(), collections.Counter(), []

    def header(r, name):
        return next((v[0] if isinstance(v, list) else v for k, v in r.headers.items() if k.lower() == name), None)

    def fuzz(who_list, examples_routed, examples_other):
        for operation in operations:
            path = operation.path
            if path.startswith(mutating):
                continue  # operator endpoints that change the server: rosi refuses them anyway (401/403)
            routed = path in ("/v1/completions", "/v1/chat/completions")

            @settings(max_examples=examples_routed if routed else examples_other, deadline=None, database=None,
                      phases=[Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def run(case):
                if routed and isinstance(case.body, dict):  # bounded generation: the fuzz is about input
                    for key in ("max_completion_tokens", "min_tokens", "best_of", "n", "use_beam_search"):
                        case.body.pop(key, None)
                    case.body["max_tokens"] = 2
                    # random model names are all 404: name the ones that matter in turn (the served name and
                    # fuzz's own variant are served; another tenant's variant and an unlisted one must not be)
                    case.body["model"] = models[sum(tried.values()) % len(models)]
                for who in who_list:
                    headers = {"Authorization": f"Bearer {KEYS.get(who, who)}"} if who else {}
                    try:
                        r = case.call(base_url=server.url, headers={**(case.headers or {}), **headers}, timeout=60)
                    except requests.RequestException as exc:
                        problems.append(f"{case.method} {path}: {exc}")
                        continue
                    tried[who or "none"] += 1
                    statuses[r.status_code] += 1
                    if r.status_code >= 500:
                        problems.append(f"{case.method} {path} as {who}: {r.status_code} {r.text[:200]}")
                    if who not in KEYS and path not in public and r.status_code != 401:
                        problems.append(f"{case.method} {path} as {who}: {r.status_code}, not 401")
                    variant = header(r, "x-rosi-variant")
                    if who in KEYS and r.status_code == 200 and variant is not None:
                        served[variant] += 1
                        if variant not in USABLE[who] or header(r, "x-rosi-tenant") != who:
                            problems.append(f"{path}: {who} was served {variant}")

            run()

    engine_before = _engine_requests(server)
    fuzz([None, "sk-wrong-key"], 20, 3)
    unauthenticated_at_engine = _engine_requests(server) - engine_before
    policies_before = _policy_rejections(server)
    fuzz(["fuzz"], 25, 3)
    FIGURES["fuzz"] = {"operations": len(operations), "cases": sum(tried.values()), "by_key": dict(tried),
                       # fuzz keeps the safe prefill and control-token policies: generated chat bodies meet them
                       "policy_rejections": _policy_rejections(server) - policies_before,
                       "statuses": {str(k): v for k, v in sorted(statuses.items())},
                       "served_200": served.total(), "unauthenticated_at_engine": unauthenticated_at_engine,
                       "server_errors": sum(v for k, v in statuses.items() if k >= 500)}
    assert not problems, problems[:10]
    assert unauthenticated_at_engine == 0
    assert served.total() > 0, "the fuzz never got a request served: it checked nothing"


def _policy_rejections(server) -> float:
    """Requests the tenant policies refused (rosi_rejected_requests_total, the three policy reasons)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "rosi_rejected_requests_total"
               and s.labels.get("reason") in ("assistant_prefill", "raw_completions", "control_tokens_in_content"))


def _engine_requests(server) -> float:
    """Requests the engine finished (vLLM's own counter): what reached it, whoever let it through."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "vllm:request_success_total")


@pytest.mark.kills_engine
def test_engine_death_mid_stream_gives_a_clean_error_a_counted_status_and_503_health(server):
    """Runs last (``kills_engine``): kills the engine core. The API server stays up (VLLM_KEEP_ALIVE_ON_ENGINE_DEATH) to show it."""
    import psutil

    before = scrape(server)
    engine = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
              if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
    assert engine, [p.name() for p in psutil.Process(server.proc.pid).children(recursive=True)]
    events = []
    with post(server, "traffic", stream=True, max_tokens=200) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith(b"data: {"):
                events.append(line)
                break
        for p in engine:
            os.kill(p.pid, signal.SIGKILL)
        try:
            events += [line for line in lines if line.startswith(b"data:")]
            cut = False
        except requests.RequestException:
            cut = True
    errors = [json.loads(e[6:]) for e in events if e.startswith(b"data: {") and b'"error"' in e]
    assert errors or cut, events[-3:]
    deadline = time.monotonic() + 30
    while requests.get(server.url + "/health", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "health still answers 200 after the engine died"
        time.sleep(0.5)
    after_stream = post(server, "traffic")  # a new request: a clean error, not a hang
    assert after_stream.status_code >= 500 and after_stream.json()["error"]["message"]
    after = scrape(server)
    statuses = {dict(ls)["status"]: v - before.get((n, ls), 0) for (n, ls), v in after.items()
                if n == "rosi_requests_total" and dict(ls)["tenant"] == "traffic" and v - before.get((n, ls), 0)}
    assert set(statuses) - {"200"} and "200" not in statuses, statuses  # counted with their error statuses
    FIGURES["engine_death"] = {"stream_error_event": bool(errors), "stream_cut": cut, "health_after": 503,
                               "counted_statuses": statuses}
