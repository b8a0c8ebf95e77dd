"""Shared fixtures: tiny checkpoints are built once per session and reused."""

from __future__ import annotations

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
