"""vLLM general-plugin entry point (group ``vllm.general_plugins``).

vLLM calls `register` in every process it starts (API server, engine core,
each tensor/pipeline-parallel worker), so the ``rosi`` load format exists
wherever a model is loaded. Registration must be idempotent: vLLM may call it
more than once per process. Like the CLI, this is wiring: the one place that
connects the vLLM glue with the tenant layer.
"""

from __future__ import annotations

import os


def register() -> None:
    from .vllm_glue.compat import register_load_format
    from .vllm_glue.loader import LOAD_FORMAT, RosiModelLoader

    register_load_format(LOAD_FORMAT, RosiModelLoader)

    from .serving.service import CONFIG_ENV

    if os.environ.get(CONFIG_ENV):
        # Tenant layer on: α variants other than the baked one are adapters resolved by name.
        from .serving.middleware import adapter_path_for
        from .vllm_glue.lora_resolver import register_resolver

        register_resolver(adapter_path_for)
