"""Shared fixtures: tiny checkpoints are built once per session and reused; how tests share two xdist workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rosi_vllm.testing.tiny_models import build_tiny_model

from .helpers import write_direction


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model(family, **kw) -> path; cached per (family, options) for the session."""
    cache: dict = {}
    root = tmp_path_factory.mktemp("tiny")

    def get(family: str = "llama", **kwargs) -> Path:
        key = (family, tuple(sorted(kwargs.items())))
        if key not in cache:
            name = family + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
            cache[key] = build_tiny_model(family, root / name, **kwargs)
        return cache[key]

    return get


@pytest.fixture
def direction_for(tmp_path):
    def make(model_dir: Path, **kwargs) -> Path:
        return write_direction(model_dir, tmp_path / f"dir-{len(list(tmp_path.iterdir()))}.safetensors", **kwargs)

    return make


@pytest.fixture
def llama(tiny_model):
    """The tiny Llama in float32, without a tokenizer: for exact weight-level checks."""
    import torch

    return tiny_model("llama", dtype=torch.float32, with_tokenizer=False)


#: session fixtures that start something expensive (a server, an engine process): their tests share one xdist
#: worker, since every worker is a session of its own and would start its own copy
SHARED_SESSION_FIXTURES = ("tenant_server", "engines")
#: folders whose tests are cheap and independent, spread over the workers one by one
SPREAD = ("unit", "deploy")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Group tests for ``--dist loadgroup`` (pyproject's addopts): a test of a shared session fixture goes with
    every other test of that fixture, any other test outside `SPREAD` with the rest of its module (whose
    module-scoped servers and caches it shares); unit and deploy tests go wherever a worker is free."""
    for item in items:
        shared = next((name for name in SHARED_SESSION_FIXTURES if name in item.fixturenames), None)
        spread = item.path.parent.name in SPREAD or item.path.parent.parent.name in SPREAD
        if shared is None and spread:
            continue
        item.add_marker(pytest.mark.xdist_group(shared or item.module.__name__))


#: the offline engines of `rosi eval`, `rosi harden` and the sweep skip vLLM's graph compilation in tests (an
#: inductor C++ build per engine on CPU, for a few tokens of a tiny model); subprocesses inherit it
os.environ.setdefault("ROSI_ENFORCE_EAGER", "1")
#: niceness of every test but the shared tenant server's, while two workers share the cores
NICE_ELSEWHERE = 10


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Under xdist, the shared tenant server's tests (latency bounds: priority TTFT) keep normal CPU priority and
    every other test runs niced, before any fixture starts a process: the other worker's engine start-ups then
    yield the cores to the server rather than share them evenly. Raising priority back needs root (CI's user);
    elsewhere the niceness only ever goes up, which still leaves the server's worker ahead."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    wanted = 0 if "tenant_server" in item.fixturenames else NICE_ELSEWHERE
    try:
        os.setpriority(os.PRIO_PROCESS, 0, wanted)
    except PermissionError:
        pass
