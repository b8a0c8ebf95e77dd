"""Read what the tenant layer needs from vLLM's API server (through `vllm_glue.compat`).

Fails closed with a `RosiError` when the server is not a ``--load-format rosi``
deployment: the tenant layer's "baked" variant and its adapters are defined
relative to the loaded direction, so without one there is nothing safe to route.
"""

from __future__ import annotations

from ..core.direction_file import load_direction
from ..core.errors import RosiError
from ..core.loader_config import RosiLoaderConfig
from ..vllm_glue.compat import (
    runtime_lora_updating_allowed,
    scheduling_policy,
    served_model_name,
    served_tokenizer,
    server_state,
)
from .request_policy import ControlTokens
from .service import ServedModel


def served_model_facts(app) -> ServedModel:
    found = server_state(app)
    if found is None:
        raise RosiError("rosi: the tenant middleware runs inside `vllm serve` only (no vLLM app state found)")
    vllm_config, models = found
    load_config = vllm_config.load_config
    load_format = getattr(load_config.load_format, "value", load_config.load_format)
    if load_format != "rosi":
        raise RosiError(f"rosi: the tenant middleware needs --load-format rosi (this server uses {load_format!r})")
    loader_config, _ = RosiLoaderConfig.from_extra_config(load_config.model_loader_extra_config)
    direction = load_direction(loader_config.direction)
    baked = direction.recommended_alpha if loader_config.alpha is None else loader_config.alpha
    lora_enabled = vllm_config.lora_config is not None and runtime_lora_updating_allowed()
    tokenizer = served_tokenizer(app)
    return ServedModel(
        name=served_model_name(models),
        model_dir=str(vllm_config.model_config.model),
        baked_alpha=float(baked),
        direction_id=direction.direction_id,
        fingerprint=direction.model_fingerprint,
        layer=direction.layer,
        lora_enabled=lora_enabled,
        loader_config=loader_config,
        read=direction.read_kind,
        window=direction.window,
        priority_scheduling=scheduling_policy(vllm_config) == "priority",
        # read once here: the strings a forged turn is made of (request_policy.py); None: no tokenizer to ask
        control_tokens=None if tokenizer is None else ControlTokens.from_tokenizer(tokenizer),
    )
