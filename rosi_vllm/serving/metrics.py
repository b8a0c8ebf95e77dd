"""Prometheus metrics of the tenant layer, exported on vLLM's own ``/metrics``.

Registered in prometheus-client's default registry, which vLLM's ``/metrics``
serves; with ``--api-server-count > 1`` vLLM switches prometheus-client to
multiprocess mode before its API-server processes start, and these metrics
follow (which is why the direction "info" is a Gauge with ``multiprocess_mode``,
not an Info: Info is not supported across processes).

Labels are bounded by the operator's config (tenant, variant, experiment, arm),
never by client input, so a client cannot blow up cardinality.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

LABELS = ("tenant", "variant", "experiment", "arm")
#: seconds; 1 ms .. 2 min, dense where CPU and GPU TTFTs live
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: the middleware's own work per request: far below a millisecond when healthy
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05)


class RosiMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.requests = Counter("rosi_requests", "Requests routed by the rosi tenant layer, by HTTP status",
                                LABELS + ("endpoint", "status"), registry=registry)
        self.responses = Counter("rosi_judged_responses", "Completed choices judged for refusal", LABELS,
                                 registry=registry)
        self.refusals = Counter("rosi_refusals", "Completed choices the refusal judge flagged", LABELS,
                                registry=registry)
        self.generated_tokens = Counter("rosi_generated_tokens", "Completion tokens returned", LABELS,
                                        registry=registry)
        self.ttft = Histogram("rosi_ttft_seconds", "Time to first generated content (streaming requests)", LABELS,
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("rosi_e2e_seconds", "Request arrival to last response byte", LABELS,
                             buckets=LATENCY_BUCKETS, registry=registry)
        self.overhead = Histogram("rosi_middleware_overhead_seconds",
                                  "Time the tenant layer itself spends on a request (auth, routing, capture)",
                                  buckets=OVERHEAD_BUCKETS, registry=registry)
        self.rejected = Counter("rosi_rejected_requests", "Requests refused before reaching the engine",
                                ("reason",), registry=registry)
        self.limited = Counter("rosi_limited_requests", "Requests answered 429 by a tenant's limits, by reason "
                               "(concurrency, tokens)", ("tenant", "reason"), registry=registry)
        self.direction = Gauge("rosi_direction_info", "The loaded ROSI direction (value is always 1); read is "
                               "'mean' (format v1, the paper's w̄), 'gated' (format v2, fitted read vectors) or "
                               "'threshold' (format v3, one transplanted MLP neuron per edited layer)",
                               ("direction_id", "baked_alpha", "fingerprint", "layer", "read", "window"),
                               registry=registry,
                               multiprocess_mode="max")
        self.config_generation = Gauge("rosi_tenant_config_generation",
                                       "Tenant config generation now serving (1 = as started)", registry=registry,
                                       multiprocess_mode="max")
        self.config_reloads = Counter("rosi_tenant_config_reloads", "Tenant config reload attempts", ("result",),
                                      registry=registry)
        self._series: dict[tuple[str, ...], TenantSeries] = {}

    def series(self, labels: tuple[str, str, str, str]) -> TenantSeries:
        """The per-request series of one (tenant, variant, experiment, arm), looked up once and kept.

        prometheus-client's ``labels()`` validates and locks on every call; a
        request records up to six series, so the children are cached here (the
        registry keeps every child forever anyway, so this holds nothing extra).
        """
        found = self._series.get(labels)
        if found is None:
            found = self._series[labels] = TenantSeries(self, labels)
        return found


class TenantSeries:
    """The children of one label set: what the middleware updates at the end of each request."""

    __slots__ = ("_requests_metric", "_labels", "_requests", "responses", "refusals", "generated_tokens", "ttft",
                 "e2e")

    def __init__(self, metrics: RosiMetrics, labels: tuple[str, ...]):
        self._requests_metric, self._labels, self._requests = metrics.requests, labels, {}
        self.responses = metrics.responses.labels(*labels)
        self.refusals = metrics.refusals.labels(*labels)
        self.generated_tokens = metrics.generated_tokens.labels(*labels)
        self.ttft = metrics.ttft.labels(*labels)
        self.e2e = metrics.e2e.labels(*labels)

    def requests(self, endpoint: str, status: str):
        key = (endpoint, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self._requests_metric.labels(*self._labels, endpoint, status)
        return child


_DEFAULT: RosiMetrics | None = None


def default_metrics() -> RosiMetrics:
    """One set per process in the default registry (creating it twice would raise)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RosiMetrics()
    return _DEFAULT
