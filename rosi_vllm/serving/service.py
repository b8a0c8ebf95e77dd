"""The tenant layer's per-process state: current config, the served model's facts, hot reload.

One `TenantService` per API-server process, shared by the middleware (routes
requests) and the LoRA resolver (builds adapters only for α values the current
config serves). No ASGI here and no vLLM imports: `bind` receives plain facts.

Reload contract: the config file is re-checked at most once per
`reload_interval` seconds, on the request path (a ``stat``). A changed file is
parsed and validated completely before it replaces the old config in one
reference swap, so a request sees either the old or the new config, never a
mix; an invalid file is rejected with one ``rosi:`` log line and the old config
keeps serving.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import RosiError
from ..core.loader_config import RosiLoaderConfig
from .metrics import RosiMetrics
from .request_policy import REJECT, ControlTokens
from .routing import ADAPTER_PREFIX, adapter_alphas, adapter_name
from .tenant_config import TenantConfig, load_tenant_config

logger = logging.getLogger("vllm.rosi.tenants")
#: seconds a failed adapter build is reported as is before it is tried again
ADAPTER_RETRY_S = 10.0

CONFIG_ENV = "ROSI_TENANT_CONFIG"
ADAPTER_CACHE_ENV = "ROSI_ADAPTER_CACHE"


@dataclass(frozen=True)
class ServedModel:
    """What the engine serves, read from vLLM's config once it exists."""
    name: str  # the served model name clients use
    model_dir: str
    baked_alpha: float
    direction_id: str
    fingerprint: str
    layer: int
    lora_enabled: bool  # --enable-lora and runtime LoRA resolution both on
    loader_config: RosiLoaderConfig  # the server's parsed --model-loader-extra-config (adapters must match it)
    read: str = "mean"  # DirectionFile.read_kind: "mean" (v1), "gated" (v2) or "threshold" (v3)
    window: tuple[int, ...] = ()  # gated and threshold: the edited layers
    priority_scheduling: bool = False  # --scheduling-policy priority (tenant priorities need it)
    #: the served tokenizer's special/added token strings; None when the server has no tokenizer to read them from
    control_tokens: ControlTokens | None = None


class TenantService:
    def __init__(self, config_path: str | Path, metrics: RosiMetrics, *, reload_interval: float = 1.0,
                 environ: dict[str, str] | None = None):
        self.config_path = Path(config_path)
        self.metrics = metrics
        self.reload_interval = reload_interval
        self.environ = environ
        self.config: TenantConfig = load_tenant_config(self.config_path, environ)
        self.generation = 1
        self.served: ServedModel | None = None
        self.adapter_store = None  # VariantAdapterStore, set by bind when adapters are needed
        self._seen = self._file_state()
        self._next_check = time.monotonic() + reload_interval
        self._reload_lock = threading.Lock()
        self._ready_adapters: set[float] = set()
        self._adapter_failures: dict[float, tuple[str, float]] = {}  # α → (reason, when), retried after a while
        #: α → requests admitted on its adapter and not finished: resolvable whatever a reload did since
        self._admitted: dict[float, int] = {}
        self._admitted_lock = threading.Lock()  # the resolver asks from a worker thread
        self._adapter_names: tuple | None = None  # (config, baked α, adapter name → α): `_adapter_index`
        metrics.config_generation.set(self.generation)

    # -- binding to the engine -------------------------------------------------------------
    def bind(self, served: ServedModel, adapter_store_factory) -> None:
        """Check the config against the served model; raise `RosiError` if it cannot be served."""
        self._check_servable(self.config, served)
        self.served = served
        self._adapter_store_factory = adapter_store_factory
        self._ensure_adapter_store(self.config)
        self.metrics.direction.labels(served.direction_id, f"{served.baked_alpha:g}", served.fingerprint,
                                      str(served.layer), served.read,
                                      ",".join(map(str, served.window))).set(1)
        logger.info("rosi: tenant layer serving %s (baked alpha %g) for tenants %s; variants %s",
                    served.name, served.baked_alpha, sorted(self.config.tenants), self._variant_summary(self.config))
        self._prebuild_adapters(self.config)

    def _ensure_adapter_store(self, config: TenantConfig) -> None:
        if self.adapter_store is None and adapter_alphas(config, self.served.baked_alpha):
            self.adapter_store = self._adapter_store_factory()

    def _check_servable(self, config: TenantConfig, served: ServedModel) -> None:
        config.check_baked_alpha(served.baked_alpha)
        prioritized = sorted(name for name, tenant in config.tenants.items() if tenant.priority)
        if prioritized and not served.priority_scheduling:
            raise RosiError(f"rosi: tenant config gives tenants {prioritized} a priority, which vLLM applies only "
                            "with vllm serve --scheduling-policy priority (this server schedules first come, "
                            "first served)")
        rejecting = sorted(name for name, tenant in config.tenants.items()
                           if tenant.policies.control_tokens_in_content == REJECT)
        if rejecting and served.control_tokens is None:
            raise RosiError(f"rosi: tenants {rejecting} reject control tokens in content "
                            "(control_tokens_in_content: reject), but the server has no tokenizer to read them from "
                            "(--skip-tokenizer-init?); set control_tokens_in_content: allow for them or serve a "
                            "tokenizer")
        needed = adapter_alphas(config, served.baked_alpha)
        if needed and not served.lora_enabled:
            raise RosiError(
                f"rosi: tenant config serves alpha values {sorted(needed)} besides the baked {served.baked_alpha:g}, "
                "which are rank-1 LoRA adapters: start vllm serve with --enable-lora --max-lora-rank 1 and "
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true")

    def _variant_summary(self, config: TenantConfig) -> dict[str, str]:
        baked = self.served.baked_alpha if self.served else 0.0
        return {name: f"{config.alpha_of(name, baked):g}" for name in config.variants}

    def _prebuild_adapters(self, config: TenantConfig) -> None:
        """Build adapters in the background so the first request of a new α does not wait for it."""
        if self.adapter_store is None or self.served is None:
            return
        alphas = sorted(adapter_alphas(config, self.served.baked_alpha))

        def build():
            for alpha in alphas:
                self._build_adapter(alpha)

        threading.Thread(target=build, name="rosi-adapters", daemon=True).start()

    def _build_adapter(self, alpha: float) -> str | None:
        """Build (or find) the adapter for α; the failure reason, also logged and remembered, if it cannot be."""
        try:
            self.adapter_store.adapter_for(alpha)
        except Exception as exc:
            reason = str(exc).removeprefix("rosi: ")
            self._adapter_failures[alpha] = (reason, time.monotonic())
            logger.error("rosi: adapter for alpha %g unavailable (its variants answer 503, the others serve): %s",
                         alpha, reason)
            return reason
        self._adapter_failures.pop(alpha, None)
        self._ready_adapters.add(alpha)
        return None

    async def adapter_problem(self, alpha: float) -> str | None:
        """None when the adapter for α is ready (building it first if needed), else why it is not.

        Asked by the middleware before a request on an adapter reaches the engine,
        so a read-only or full cache folder gives a clear error for that variant
        only, instead of a failure inside vLLM's adapter resolution. A failure is
        remembered for `ADAPTER_RETRY_S` seconds, then the build is tried again
        (the operator may have freed space).
        """
        if alpha in self._ready_adapters:
            return None
        failed = self._adapter_failures.get(alpha)
        if failed is not None and time.monotonic() - failed[1] < ADAPTER_RETRY_S:
            return failed[0]
        import asyncio

        return await asyncio.to_thread(self._build_adapter, alpha)

    # -- LoRA resolution -------------------------------------------------------------------
    def admit_adapter(self, alpha: float):
        """Mark a request admitted on α's adapter; call the returned function when it ends.

        vLLM resolves the adapter name after the middleware admitted the request,
        so a reload in between may have dropped α; the request was admitted under
        a config that serves it, and must be served (not vLLM's 404).
        """
        with self._admitted_lock:
            self._admitted[alpha] = self._admitted.get(alpha, 0) + 1

        def done() -> None:
            with self._admitted_lock:
                left = self._admitted[alpha] - 1
                if left:
                    self._admitted[alpha] = left
                else:
                    del self._admitted[alpha]
        return done

    def alpha_for_adapter(self, lora_name: str) -> float | None:
        """α of a ``rosi-alpha-*`` adapter name, if the current config serves it or an admitted request needs it."""
        if self.served is None or not lora_name.startswith(ADAPTER_PREFIX):
            return None
        alpha = self._adapter_index().get(lora_name)
        if alpha is not None:
            return alpha
        with self._admitted_lock:  # few: the α values of requests still running since a reload dropped them
            admitted = list(self._admitted)
        return next((a for a in admitted if adapter_name(a) == lora_name), None)

    def _adapter_index(self) -> dict[str, float]:
        """Adapter name → α for the current config: built once per config and baked α (a reload swaps
        `self.config`), so a resolver call is one lookup, not a scan of every variant."""
        config, baked = self.config, self.served.baked_alpha
        cached = self._adapter_names
        if cached is None or cached[0] is not config or cached[1] != baked:
            cached = self._adapter_names = (config, baked, {adapter_name(a): a for a in adapter_alphas(config, baked)})
        return cached[2]

    # -- hot reload ------------------------------------------------------------------------
    def _file_state(self):
        try:
            st = os.stat(self.config_path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return None

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.reload_interval
        state = self._file_state()
        if state == self._seen:
            return
        with self._reload_lock:
            if state == self._seen:
                return
            self._seen = state
            self.reload()

    def reload(self) -> bool:
        """Validate the file and swap it in; on any error keep serving the current config."""
        try:
            config = load_tenant_config(self.config_path, self.environ)
            if self.served is not None:
                self._check_servable(config, self.served)
        except RosiError as exc:
            self.metrics.config_reloads.labels("rejected").inc()
            logger.error("rosi: tenant config reload rejected, still serving generation %d: %s", self.generation,
                         str(exc).removeprefix("rosi: "))
            return False
        if self.served is not None:
            try:
                self._ensure_adapter_store(config)
            except Exception as exc:
                self.metrics.config_reloads.labels("rejected").inc()
                logger.error("rosi: tenant config reload rejected, still serving generation %d: cannot prepare "
                             "adapters: %s", self.generation, exc)
                return False
        self.config = config
        self.generation += 1
        self.metrics.config_generation.set(self.generation)
        self.metrics.config_reloads.labels("applied").inc()
        logger.info("rosi: tenant config generation %d applied: tenants %s; variants %s", self.generation,
                    sorted(config.tenants), self._variant_summary(config))
        self._prebuild_adapters(config)
        return True
