"""An async streaming load generator for OpenAI-compatible completions (aiohttp, loopback).

Each request streams, so time to first token (first content event) and
end-to-end latency are measured per request; `ignore_eos` fixes the generated
length so every arm does the same work. Streams are parsed with the package's
SSE parser (`rosi_vllm.serving.response_capture`), the one the tenant layer uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from rosi_vllm.serving.response_capture import DONE, event_data, split_events


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None
    e2e: float
    tokens: int
    status: int


async def _one(session, url, body, headers) -> RequestResult:
    started = time.perf_counter()
    ttft, tokens, status = None, 0, 0
    try:
        async with session.post(url, json=body, headers=headers) as response:
            status = response.status
            buffer = b""
            async for chunk in response.content.iter_any():
                events, buffer = split_events(buffer + chunk)
                for event in events:
                    payload = event_data(event)
                    if not payload or payload == DONE:
                        continue
                    data = json.loads(payload)
                    if data.get("usage"):
                        tokens = data["usage"]["completion_tokens"]
                    if any(c.get("text") for c in data.get("choices", [])) and ttft is None:
                        ttft = time.perf_counter() - started
    except Exception:  # noqa: BLE001 (counted as a failed request)
        return RequestResult(False, None, time.perf_counter() - started, 0, status)
    return RequestResult(status == 200, ttft, time.perf_counter() - started, tokens, status)


async def _run(url, bodies, headers_list, concurrency):
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=1800)) as session:
        async def bounded(body, headers):
            async with semaphore:
                return await _one(session, url, body, headers)

        return await asyncio.gather(*(bounded(b, h) for b, h in zip(bodies, headers_list)))


def run_load(base_url: str, bodies: list[dict], *, concurrency: int, headers: list[dict] | None = None
             ) -> tuple[list[RequestResult], float]:
    """Send `bodies` to /v1/completions with at most `concurrency` in flight; returns results and wall time."""
    for body in bodies:
        body.setdefault("stream", True)
        body.setdefault("stream_options", {"include_usage": True})
    headers = headers or [{} for _ in bodies]
    started = time.perf_counter()
    results = asyncio.run(_run(base_url + "/v1/completions", bodies, headers, concurrency))
    return results, time.perf_counter() - started


def summarise(results: list[RequestResult], wall: float) -> dict:
    from ._common import median, percentile

    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    e2es = [r.e2e for r in ok]
    tokens = sum(r.tokens for r in ok)
    return {
        "requests": len(results), "failed": len(results) - len(ok), "wall_s": wall,
        "output_tokens_per_s": tokens / wall if wall else None, "requests_per_s": len(ok) / wall if wall else None,
        "ttft_p50_s": median(ttfts), "ttft_p99_s": percentile(ttfts, 0.99),
        "e2e_p50_s": median(e2es), "e2e_p99_s": percentile(e2es, 0.99), "tokens": tokens,
    }
