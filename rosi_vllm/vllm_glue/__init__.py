"""The only layer that imports vLLM.

`loader` is the ``rosi`` load format, `lora_resolver` names per-tenant adapters,
`generation` drives vLLM's offline engine for evaluation, and `compat` holds
every use of vLLM API that is not public and stable, so a vLLM upgrade touches
one file. The import-linter contracts in ``pyproject.toml`` enforce the rule.
"""
