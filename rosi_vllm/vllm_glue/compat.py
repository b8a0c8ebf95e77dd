"""Every use of vLLM internals, in one file, so a vLLM upgrade touches only this.

Written against vLLM 0.32 (the version pinned by the ``cpu`` and ``gpu`` extras).
Each function names the private attribute or positional signature it depends on;
when vLLM changes one, the engine tests fail here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def register_load_format(name: str, loader_cls: type) -> None:
    """Register ``--load-format NAME`` once per process (vLLM may run plugins more than once).

    vLLM's public `register_model_loader` refuses nothing but warns on re-registration,
    so the private table says whether this class is already there.
    """
    from vllm.model_executor.model_loader import (
        _LOAD_FORMAT_TO_MODEL_LOADER,
        register_model_loader,
    )

    if _LOAD_FORMAT_TO_MODEL_LOADER.get(name) is not loader_cls:
        register_model_loader(name)(loader_cls)


def checkpoint_files(loader: Any, model_config: Any) -> tuple[list[Path], bool]:
    """The checkpoint files vLLM's default loader will stream, and whether they are safetensors.

    `DefaultModelLoader._prepare_weights(model_name_or_path, subfolder, revision,
    fall_back_to_pt, allow_patterns_overrides)` is private and positional in 0.32.
    """
    _, files, use_safetensors, _ = loader._prepare_weights(
        model_config.model, None, model_config.revision, True, None
    )
    return [Path(f) for f in files], bool(use_safetensors)


def server_state(app: Any) -> tuple[Any, Any] | None:
    """(vllm_config, openai_serving_models) from the API server's ``app.state``; None outside `vllm serve`.

    Both are attributes vLLM's `init_app_state` sets on the Starlette app; they are
    not a documented interface.
    """
    state = getattr(app, "state", None)
    vllm_config = getattr(state, "vllm_config", None)
    models = getattr(state, "openai_serving_models", None)
    if vllm_config is None or models is None:
        return None
    return vllm_config, models


def served_tokenizer(app: Any) -> Any | None:
    """The tokenizer the API server renders prompts with (`app.state.engine_client.tokenizer`, vLLM's renderer's).

    None when the server has none (``--skip-tokenizer-init``) or this is not a vLLM app.
    """
    client = getattr(getattr(app, "state", None), "engine_client", None)
    return getattr(client, "tokenizer", None)


def served_model_name(models: Any) -> str:
    """The first ``--served-model-name`` (or the model path), as clients name it."""
    return models.base_model_paths[0].name


def scheduling_policy(vllm_config: Any) -> str:
    """``--scheduling-policy`` of the engine ("fcfs" or "priority"); request priorities count only under "priority"."""
    policy = getattr(getattr(vllm_config, "scheduler_config", None), "policy", "fcfs")
    return str(getattr(policy, "value", policy))


def runtime_lora_updating_allowed() -> bool:
    """``VLLM_ALLOW_RUNTIME_LORA_UPDATING``: whether resolvers may load adapters while serving."""
    from vllm import envs

    return bool(envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING)


def lora_resolver_registered(name: str, resolver_cls: type) -> bool:
    """Whether a resolver of this class is registered under `name` (the registry's dict is not public)."""
    from vllm.lora.resolver import LoRAResolverRegistry

    return isinstance(LoRAResolverRegistry.resolvers.get(name), resolver_cls)


def openapi_schema(serve_args: list[str]) -> dict:
    """The OpenAPI schema `vllm serve <serve_args>` publishes, built in-process (no engine).

    The tenant middleware answers ``/openapi.json`` 401 (default deny), so the
    fuzz tests read vLLM's own schema here. `build_app` and the argument parser
    are vLLM internals.
    """
    import warnings

    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(serve_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return build_app(args, ("generate",)).openapi()
