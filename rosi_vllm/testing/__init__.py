"""Fixtures the tests and benchmarks share: tiny random checkpoints and a `vllm serve` process helper."""
