"""The core: direction files, fingerprints, the injection math and plan, the architecture table, the α rule,
the judge and statistics.

It imports neither vLLM nor any layer above it (pyproject.toml's first import contract names this package,
so a module added here is covered without editing the contract), which is what lets the offline tools use it
and lets it be tested anywhere.
"""
