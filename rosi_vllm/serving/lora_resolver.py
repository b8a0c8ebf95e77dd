"""vLLM LoRA resolver for ``rosi-alpha-*`` adapter names (thin vLLM glue).

vLLM asks registered resolvers for adapter names it has not loaded yet (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``). This one answers only for α values
the *current* tenant config serves, so a client naming ``rosi-alpha-1000``
gets vLLM's ordinary "model does not exist" (and the middleware never lets a
client name adapters anyway). The folder is built by `VariantAdapterStore`.
"""

from __future__ import annotations

import asyncio

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver

RESOLVER_NAME = "rosi"


class RosiVariantResolver(LoRAResolver):
    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        from .middleware import current_service

        service = current_service()
        if service is None or service.adapter_store is None:
            return None
        alpha = service.alpha_for_adapter(lora_name)
        if alpha is None:
            return None
        path = await asyncio.to_thread(service.adapter_store.adapter_for, alpha)
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))


def register_resolver() -> None:
    from vllm.lora.resolver import LoRAResolverRegistry

    if not isinstance(LoRAResolverRegistry.resolvers.get(RESOLVER_NAME), RosiVariantResolver):
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RosiVariantResolver())
