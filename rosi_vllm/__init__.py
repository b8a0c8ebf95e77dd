"""rosi-vllm: Rank-One Safety Injection served by vLLM.

The pure parts (direction files, fingerprints, the injection math, the
architecture table) import neither vLLM nor its CUDA stack, so they can be used
by offline tools and tested anywhere. vLLM glue lives in `vllm_loader` and
`plugin` only.
"""

__version__ = "0.1.0"
