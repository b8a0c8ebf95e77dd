"""vLLM general-plugin entry point (group ``vllm.general_plugins``).

vLLM calls `register` in every process it starts (API server, engine core,
each tensor/pipeline-parallel worker), so the ``rosi`` load format exists
wherever a model is loaded. Registration must be idempotent: vLLM may call it
more than once per process.
"""

from __future__ import annotations


def register() -> None:
    from vllm.model_executor.model_loader import _LOAD_FORMAT_TO_MODEL_LOADER, register_model_loader

    from .vllm_loader import LOAD_FORMAT, RosiModelLoader

    if _LOAD_FORMAT_TO_MODEL_LOADER.get(LOAD_FORMAT) is not RosiModelLoader:
        register_model_loader(LOAD_FORMAT)(RosiModelLoader)

    import os

    from .serving.service import CONFIG_ENV

    if os.environ.get(CONFIG_ENV):
        # Tenant layer on: α variants other than the baked one are adapters resolved by name.
        from .serving.lora_resolver import register_resolver

        register_resolver()
