"""``vllm serve --middleware rosi_vllm.serving.middleware.RosiTenantMiddleware``: tenants, A/B, metrics.

Lives inside vLLM's own API server (its ``--middleware`` hook), so there is no
proxy hop. A plain ASGI middleware (not Starlette's BaseHTTPMiddleware) so
streamed responses pass through event by event.

Per request: authenticate the bearer key → tenant (401 otherwise); refuse the
request shapes the tenant's policies deny (400, `request_policy`); route to a
variant (`routing.route`), rewriting ``model`` to the engine's name for it (the
served model when the variant is the baked α, else a ``rosi-alpha-*`` rank-1
adapter); tag the response with ``x-rosi-*`` headers; judge the completed text
for refusal and record metrics.

Fails closed: if the tenant config is invalid at start-up, or does not fit the
served model (baked α out of bounds, adapters needed but LoRA off), every
request, ``/health`` included, is answered 503 with the ``rosi:`` reason, so
the server never becomes ready. Endpoints are default-deny for tenants: only
completions, chat completions and the model list are routed; vLLM's runtime
LoRA load/unload endpoints (switched on for adapter resolution) are refused to
everyone.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time

from ..core.errors import RosiError
from ..core.judge import SubstringJudge
from .limits import Refusal, TenantLimiter, estimate_tokens
from .metrics import default_metrics
from .request_policy import denial
from .response_capture import TEXT_LIMIT, ModelRename, ResponseCapture
from .routing import Route, RouteDenied, route
from .service import ADAPTER_CACHE_ENV, CONFIG_ENV, TenantService

logger = logging.getLogger("vllm.rosi.tenants")

PUBLIC_PATHS = frozenset({"/health", "/ping", "/metrics", "/version"})
ROUTED_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
TENANT_PASSTHROUGH = frozenset({"/v1/models"})
#: would let a caller load arbitrary adapters (they exist because resolution needs runtime LoRA updating)
BLOCKED_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})

_SERVICE: TenantService | None = None


def current_service() -> TenantService | None:
    """The process's tenant service."""
    return _SERVICE


def adapter_path_for(lora_name: str) -> str | None:
    """The adapter folder for `lora_name` if the current tenant config serves it or an admitted request needs it.

    vLLM's LoRA resolver asks, after the middleware admitted the request; see `TenantService.admit_adapter`.

    Blocking: the first call for an α builds the folder.
    """
    service = current_service()
    if service is None or service.adapter_store is None:
        return None
    alpha = service.alpha_for_adapter(lora_name)
    if alpha is None:
        return None
    return str(service.adapter_store.adapter_for(alpha))


class RosiTenantMiddleware:
    def __init__(self, app, config_path: str | None = None, metrics=None):
        global _SERVICE
        self.app = app
        self.metrics = metrics or default_metrics()
        self.judge = SubstringJudge()
        self.limiter = TenantLimiter()
        self.failure: str | None = None
        self.bound = False
        self.service: TenantService | None = None
        path = config_path or os.environ.get(CONFIG_ENV)
        try:
            if not path:
                raise RosiError(f"rosi: the tenant middleware needs {CONFIG_ENV}=path/to/tenants.yaml")
            self.service = TenantService(path, self.metrics)
            _SERVICE = self.service
        except RosiError as exc:
            self._fail(str(exc))

    def _fail(self, message: str) -> None:
        self.failure = message
        logger.error("%s (serving nothing: every request, /health included, answers 503)", message)

    # -- binding ----------------------------------------------------------------------------
    def _bind(self, scope) -> None:
        self.bound = True
        if self.failure is not None:
            return
        try:
            from .vllm_facts import served_model_facts

            served = served_model_facts(scope.get("app"))
            cache = os.environ.get(ADAPTER_CACHE_ENV) or os.path.join(
                os.path.expanduser("~"), ".cache", "rosi-vllm", "adapters")

            def store_factory():
                from .variant_adapters import VariantAdapterStore

                return VariantAdapterStore(served.model_dir, served.loader_config, served.baked_alpha, cache)

            self.service.bind(served, store_factory)
        except RosiError as exc:
            self._fail(str(exc))

    # -- ASGI -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            # No tenant routing for websockets (vLLM's realtime endpoints): refuse rather than bypass auth.
            self.metrics.rejected.labels("websocket").inc()
            return await send({"type": "websocket.close", "code": 1008})
        if scope["type"] not in ("http", "lifespan"):
            return await self.app(scope, receive, send)
        if not self.bound:
            self._bind(scope)
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.failure is not None:
            return await _json_response(send, 503, {"error": {"message": self.failure, "type": "rosi_unavailable"}})
        if path in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        if path in BLOCKED_PATHS:
            self.metrics.rejected.labels("blocked_endpoint").inc()
            return await _error(send, 403, "rosi: adapters are managed by the operator's tenant config")

        started = time.perf_counter()
        service = self.service
        service.maybe_reload()
        config = service.config  # one snapshot for the whole request
        tenant = config.tenant_for_key(_bearer(scope))
        if tenant is None:
            self.metrics.rejected.labels("unauthenticated").inc()
            return await _error(send, 401, "rosi: missing or unknown API key", "authentication_error")
        if path in TENANT_PASSTHROUGH:
            return await self.app(scope, receive, send)
        endpoint = ROUTED_PATHS.get(path)
        if endpoint is None or scope.get("method") != "POST":
            self.metrics.rejected.labels("endpoint_not_routed").inc()
            return await _error(send, 404, f"rosi: {path} is not served through the tenant layer")

        cap = config.max_body_bytes
        declared = _header(scope, "content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap:
            return await self._too_large(send, cap)
        body, more = await _read_body(receive, cap)
        if body is None:
            return await self._too_large(send, cap)
        try:
            payload = json.loads(body)
            if not isinstance(payload, dict):
                raise ValueError
        except (ValueError, RecursionError):
            self.metrics.rejected.labels("bad_json").inc()
            return await _error(send, 400, "rosi: request body must be a JSON object")
        user = payload.get("user") if isinstance(payload.get("user"), str) else None
        user = user or _header(scope, config.user_header)
        requested = payload.get("model") if isinstance(payload.get("model"), str) else None
        if not isinstance(payload.get("stream", False), bool):  # vLLM would coerce "false" etc.; we must agree
            self.metrics.rejected.labels("bad_json").inc()
            return await _error(send, 400, "rosi: stream must be true or false")
        served = service.served
        if (denied := denial(endpoint, payload, tenant.policies, served.control_tokens, body)) is not None:
            self.metrics.rejected.labels(denied.reason).inc()
            return await _error(send, 400, denied.message)
        try:
            decision = route(config, tenant, requested, user, served_model=served.name,
                             baked_alpha=served.baked_alpha)
        except RouteDenied:
            self.metrics.rejected.labels("model_not_allowed").inc()
            return await _error(send, 404, f"The model `{requested}` does not exist.", "NotFoundError")

        if decision.engine_model != served.name and await service.adapter_problem(decision.alpha):
            self.metrics.rejected.labels("variant_unavailable").inc()
            return await _error(send, 503, f"rosi: variant {decision.variant!r} is unavailable right now (its "
                                           "adapter could not be prepared; the server log says why); other "
                                           "variants are served", "rosi_variant_unavailable")

        admission = self.limiter.admit(tenant.name, tenant.limits, estimate_tokens(len(body), payload))
        if isinstance(admission, Refusal):
            self.metrics.limited.labels(tenant.name, admission.reason).inc()
            return await _json_response(
                send, 429, {"error": {"message": admission.message, "type": admission.openai_type, "param": None,
                                      "code": "rate_limit_exceeded"}},
                [(b"retry-after", str(admission.retry_after).encode())])

        # What the client asked for names the model in the answer (as OpenAI does), never the engine's
        # internal name (an adapter, or the checkpoint path of the served model).
        client_model = requested or served.name
        changed = payload.get("model") != decision.engine_model
        payload["model"] = decision.engine_model
        # the tenant's priority, never the client's own (a bulk client must not jump the queue)
        if payload.get("priority", 0) != tenant.priority or type(payload.get("priority", 0)) is not int:
            payload["priority"] = tenant.priority
            changed = True
        streaming = payload.get("stream") is True
        strip_usage = False
        if streaming:
            options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
            if options.get("include_usage") is not True:
                payload["stream_options"] = {**options, "include_usage": True}
                strip_usage = changed = True
        if changed:  # a body that needs no change is passed on as the client sent it
            body = json.dumps(payload).encode("utf-8")
            scope = dict(scope)
            scope["headers"] = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"]
            scope["headers"].append((b"content-length", str(len(body)).encode()))
        overhead = time.perf_counter() - started
        judged = config.judge_sample_rate >= 1.0 or random.random() < config.judge_sample_rate
        recorder = _ResponseRecorder(self, decision, endpoint, streaming, strip_usage, send, started, overhead,
                                     client_model, judged)
        # the adapter stays resolvable for this request whatever a reload does meanwhile (lora_resolver.py)
        adapter_done = service.admit_adapter(decision.alpha) if decision.engine_model != served.name else None
        try:
            await self.app(scope, _replay(body, receive, more), recorder.send)
        finally:
            if adapter_done is not None:
                adapter_done()
            try:
                recorder.finish_if_incomplete()
            finally:  # the tenant's slot is given back whatever happened to the request or its metrics
                capture = recorder.capture
                admission.done(capture.prompt_tokens + capture.completion_tokens if capture.tokens_exact else None)

    async def _too_large(self, send, cap: int) -> None:
        self.metrics.rejected.labels("body_too_large").inc()
        await _error(send, 413, f"rosi: request body is larger than {cap} bytes (max_body_bytes)")


class _ResponseRecorder:
    """Wraps ``send``: adds the x-rosi-* headers, captures text, records metrics at the end."""

    def __init__(self, mw: RosiTenantMiddleware, decision: Route, endpoint: str, streaming: bool,
                 strip_usage: bool, send, started: float, overhead: float, client_model: str, judged: bool = True):
        self.mw, self.decision, self.endpoint, self.downstream = mw, decision, endpoint, send
        self.started, self.overhead = started, overhead
        #: whether the refusal judge reads this response (`judge_sample_rate`); if not, its text is never kept
        self.judged = judged
        self.rename = ModelRename(decision.engine_model, client_model)
        self.capture = ResponseCapture(streaming=streaming, strip_usage_event=strip_usage,
                                       text_limit=TEXT_LIMIT if judged else 0, whole_events=self.rename.active)
        self.streaming = streaming
        self._held_start = None  # non-streaming: the start waits for the body (its content-length changes)
        self._held_body: list[bytes] = []
        self.status = 500
        self.ttft: float | None = None
        self.done = False
        self.labels = (decision.tenant, decision.variant, decision.experiment, decision.arm)

    async def send(self, message):
        tick = time.perf_counter()
        if message["type"] == "http.response.body":  # the per-token path: every stream in flight waits on it
            body = message.get("body", b"")
            out = self.capture.feed(body)
            if self.ttft is None and self.capture.first_content_seen:
                self.ttft = tick - self.started
            more = message.get("more_body", False)
            if not more:
                out += self.capture.finish()
            if self.rename.active:
                if self._held_start is not None:  # non-streaming: the whole body, renamed, after its start
                    self._held_body.append(out)
                    if more:
                        self.overhead += time.perf_counter() - tick
                        return
                    out = self.rename.body(b"".join(self._held_body))
                    start, self._held_start = self._held_start, None
                    headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(out)).encode()))
                    await self.downstream({**start, "headers": headers})
                else:
                    out = self.rename.events(out)
            if not more:
                await self._send_last(message, out, tick)
                return
            if out is not body:  # forwarded as it came when nothing changed: no copy
                message = {**message, "body": out}
        elif message["type"] == "http.response.start":
            self.status = message.get("status", 200)
            headers = list(message.get("headers", []))
            d = self.decision
            headers += [(b"x-rosi-tenant", d.tenant.encode()), (b"x-rosi-variant", d.variant.encode()),
                        (b"x-rosi-arm", d.arm.encode()), (b"x-rosi-alpha", f"{d.alpha:g}".encode())]
            if d.experiment:
                headers.append((b"x-rosi-experiment", d.experiment.encode()))
            message = {**message, "headers": headers}
            if not self.streaming and self.rename.active:
                self._held_start = message
                self.overhead += time.perf_counter() - tick
                return
        self.overhead += time.perf_counter() - tick
        await self.downstream(message)

    async def _send_last(self, message, out: bytes, tick: float) -> None:
        """The response's last message: forward it, then record the request."""
        if out is not message.get("body"):
            message = {**message, "body": out}
        self.overhead += time.perf_counter() - tick
        await self.downstream(message)
        self._record(time.perf_counter())

    def finish_if_incomplete(self) -> None:
        if not self.done:  # the app ended without a final body (client gone, engine dead, exception)
            self._record(time.perf_counter())

    def _final_status(self) -> str:
        """The status the request is counted with: what the client got, not only the first line of it.

        A stream starts with 200 before anything is generated; if it then carries
        vLLM's error event (engine dead, generation error) it is counted with that
        event's code, and if it ends without ``data: [DONE]`` (connection lost,
        server stopping) with 499, nginx's "client closed request" convention.
        """
        if self.status == 200 and self.streaming:
            if self.capture.error_status is not None:
                return str(self.capture.error_status)
            if not self.capture.done_seen:
                return "499"
        return str(self.status)

    def _record(self, ended: float) -> None:
        if self.done:
            return
        self.done = True
        series = self.mw.metrics.series(self.labels)
        status = self._final_status()
        series.requests(self.endpoint, status).inc()
        series.e2e.observe(ended - self.started)
        self.mw.metrics.overhead.observe(self.overhead)
        if status != "200":
            return
        if self.ttft is not None:
            series.ttft.observe(self.ttft)
        texts = list(self.capture.texts.values()) if self.judged else []
        if texts:
            series.responses.inc(len(texts))
            # inc(0) too: the series exists from the first judged response, so refusal *rates* are 0, not absent
            series.refusals.inc(sum(self.mw.judge.judge(texts)))
        if self.capture.completion_tokens:
            series.generated_tokens.inc(self.capture.completion_tokens)


def _bearer(scope) -> str | None:
    value = _header(scope, "authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


def _header(scope, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return value.decode("latin-1")
    return None


async def _read_body(receive, cap: int) -> tuple[bytes | None, bool]:
    """The whole body and whether the client is still connected; None as soon as it exceeds `cap` bytes.

    Checked while reading (chunked uploads have no content-length), so a huge
    body is never buffered, let alone parsed.
    """
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            return None, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive, connected: bool):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if not connected:
            return {"type": "http.disconnect"}
        return await receive()  # later reads wait for the client's disconnect, as vLLM expects

    return replay


async def _json_response(send, status: int, payload: dict, headers=()) -> None:
    body = json.dumps(payload).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


async def _error(send, status: int, message: str, kind: str = "invalid_request_error") -> None:
    headers = [(b"www-authenticate", b"Bearer")] if status == 401 else []
    await _json_response(send, status, {"error": {"message": message, "type": kind, "code": status}}, headers)
