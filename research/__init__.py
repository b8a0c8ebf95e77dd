"""Research studies: how a direction is extracted, gated, selected and judged (see README.md).

Each study is one command, ``python -m research.<name>``, writing JSON (+ PNG) under ``research/results/``.
They are not benchmarks of the product (those are ``benchmarks/``) and nothing in ``rosi_vllm`` imports them.
"""
