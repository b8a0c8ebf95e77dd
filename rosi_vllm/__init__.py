"""rosi-vllm: Rank-One Safety Injection served by vLLM.

The core (the modules at this package's root: direction files, fingerprints,
the injection math and plan, the architecture table) imports neither vLLM nor
its CUDA stack, so offline tools can use it and it is tested anywhere. Only
`rosi_vllm.vllm_glue` imports vLLM; docs/architecture.md lists the layers and
pyproject.toml holds the import contracts the tests enforce.
"""

__version__ = "0.1.0"
