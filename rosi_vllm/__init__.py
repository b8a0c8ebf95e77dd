"""rosi-vllm: Rank-One Safety Injection served by vLLM.

The core (`rosi_vllm.core`: direction files, fingerprints, the injection math
and plan, the architecture table) and the edit methods (`rosi_vllm.methods`, all but each method's fit) import
neither vLLM nor its CUDA stack, so offline tools can use them and they are tested anywhere. Only
`rosi_vllm.vllm_glue` imports vLLM; docs/architecture.md lists the layers and
pyproject.toml holds the import contracts the tests enforce.
"""

__version__ = "0.1.0"
