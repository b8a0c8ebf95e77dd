"""Benchmarks: each `pN_*.py` is one documented command writing JSON + PNG (see README.md)."""
