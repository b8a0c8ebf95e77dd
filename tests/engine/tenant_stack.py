"""One `vllm serve` with the tenant layer, shared by every test module that needs one (engine starts are CI's cost).

Each module keeps its own tenants: it registers a *section* of the tenant config
(`section`), and the server's file is the merge of every registered section, so a
module that rewrites its part (hot reload, limits) rewrites the whole file with
the others' parts unchanged. Variant names two sections share must mean the same α.

The server carries what every module needs at once: LoRA for per-tenant α,
``--scheduling-policy priority`` with a small batch (``--max-num-seqs 4``) so a
flood really queues, and ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH`` so the engine-death
test can see the API server outlive its engine. That test is marked
``kills_engine`` and runs after every other test of the session (tests/engine/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from rosi_vllm.testing.serve_process import Server

MIDDLEWARE = "rosi_vllm.serving.middleware.RosiTenantMiddleware"
BAKED = 8.0
#: module name -> the function that builds its section (keyword overrides, e.g. a reloaded limit)
SECTIONS: dict[str, Callable[..., dict]] = {}


def section(build: Callable[..., dict]) -> Callable[..., dict]:
    """Register a test module's part of the shared tenant config."""
    SECTIONS[build.__module__] = build
    return build


def merged_config(overrides: dict[str, dict] | None = None) -> dict:
    """Every registered section merged; ``overrides``: module name → keyword arguments for its section."""
    merged: dict = {"version": 1, "variants": {}, "tenants": {}}
    for module, build in sorted(SECTIONS.items()):
        part = build(**(overrides or {}).get(module, {}))
        for key, value in part.items():
            if key in ("variants", "tenants"):
                for name, item in value.items():
                    if key == "tenants":
                        assert name not in merged[key], f"tenant {name!r} is in two sections"
                    else:
                        assert merged[key].get(name, item) == item, f"variant {name!r} differs between sections"
                    merged[key][name] = item
            else:
                assert merged.get(key, value) == value, f"{key!r} differs between sections"
                merged[key] = value
    return merged


def write_config(path: Path, data) -> None:
    """Atomically, as an operator's config management would (a new inode)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    tmp.replace(path)


@dataclass
class TenantServer:
    server: Server
    config: Path
    model: Path
    direction: Path

    def write_section(self, module: str, **overrides) -> None:
        """Rewrite the config file with `module`'s section built from `overrides` (the others unchanged)."""
        write_config(self.config, merged_config({module: overrides}))

    def restore(self) -> None:
        write_config(self.config, merged_config())

    def __getattr__(self, name):  # url, log(), proc, … of the underlying server
        return getattr(self.server, name)


def start_tenant_server(model: Path, direction: Path, work: Path) -> TenantServer:
    from rosi_vllm.testing.serve_process import start_server

    config = work / "tenants.yaml"
    write_config(config, merged_config())
    env = {"ROSI_TENANT_CONFIG": str(config), "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true",
           "ROSI_ADAPTER_CACHE": str(work / "adapters"), "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"}
    server = start_server(model, work / "tenants.log", extra={"direction": str(direction)}, env=env,
                          args=["--enable-lora", "--max-lora-rank", "1", "--max-loras", "4",
                                "--scheduling-policy", "priority", "--max-num-seqs", "4", "--middleware", MIDDLEWARE])
    return TenantServer(server, config, model, direction)
