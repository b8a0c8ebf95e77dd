"""Read what the tenant layer needs from vLLM's API-server state (thin vLLM glue).

Fails closed with a `RosiError` when the server is not a ``--load-format rosi``
deployment: the tenant layer's "baked" variant and its adapters are defined
relative to the loaded direction, so without one there is nothing safe to route.
"""

from __future__ import annotations

from ..direction_file import load_direction
from ..errors import RosiError
from ..loader_config import RosiLoaderConfig
from .service import ServedModel


def served_model_facts(state) -> ServedModel:
    vllm_config = getattr(state, "vllm_config", None)
    models = getattr(state, "openai_serving_models", None)
    if vllm_config is None or models is None:
        raise RosiError("rosi: the tenant middleware runs inside `vllm serve` only (no vLLM app state found)")
    load_config = vllm_config.load_config
    load_format = getattr(load_config.load_format, "value", load_config.load_format)
    if load_format != "rosi":
        raise RosiError(f"rosi: the tenant middleware needs --load-format rosi (this server uses {load_format!r})")
    loader_config, _ = RosiLoaderConfig.from_extra_config(load_config.model_loader_extra_config)
    direction = load_direction(loader_config.direction)
    baked = direction.recommended_alpha if loader_config.alpha is None else loader_config.alpha
    from vllm import envs

    lora_enabled = vllm_config.lora_config is not None and bool(envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING)
    return ServedModel(
        name=models.base_model_paths[0].name,
        model_dir=str(vllm_config.model_config.model),
        baked_alpha=float(baked),
        direction_id=direction.direction_id,
        fingerprint=direction.model_fingerprint,
        layer=direction.layer,
        lora_enabled=lora_enabled,
        loader_config=loader_config,
    )
