"""vLLM LoRA resolver for ``rosi-alpha-*`` adapter names.

vLLM asks registered resolvers for adapter names it has not loaded yet (with
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``). This one asks a lookup function
(the tenant layer's, wired by the plugin) for the folder of an adapter name.
The lookup answers only for α values the current tenant config serves or an
admitted, unfinished request was routed to (the config it was admitted under,
so a reload between admission and resolution cannot turn it into a 404); a
client naming ``rosi-alpha-1000`` gets vLLM's ordinary "model does not exist"
(and the middleware never lets a client name adapters anyway).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from vllm.lora.request import LoRARequest
from vllm.lora.resolver import LoRAResolver, LoRAResolverRegistry

from .compat import lora_resolver_registered

RESOLVER_NAME = "rosi"

#: adapter name -> adapter folder, or None when the name is not served. May block (builds the folder).
AdapterLookup = Callable[[str], "str | None"]


class RosiVariantResolver(LoRAResolver):
    def __init__(self, lookup: AdapterLookup):
        self.lookup = lookup

    async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
        path = await asyncio.to_thread(self.lookup, lora_name)
        if path is None:
            return None
        return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(path))


def register_resolver(lookup: AdapterLookup) -> None:
    if not lora_resolver_registered(RESOLVER_NAME, RosiVariantResolver):
        LoRAResolverRegistry.register_resolver(RESOLVER_NAME, RosiVariantResolver(lookup))
