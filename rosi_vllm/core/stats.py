"""Small statistics used in every report: Wilson score intervals for rates, a bound on a mean."""

from __future__ import annotations

import math


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (well-behaved at 0 and 1, unlike Wald)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp, and keep p inside despite rounding (at p = 0 or 1 the bound equals p exactly).
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def rate(flags) -> dict:
    flags = list(flags)
    k, n = sum(bool(f) for f in flags), len(flags)
    lo, hi = wilson_interval(k, n)
    return {"rate": k / n if n else 0.0, "k": k, "n": n, "ci95": [lo, hi]}


def mean_upper_bound(values, z: float = 1.6448536269514722) -> float:
    """One-sided 95 % upper confidence bound of the mean of `values` (normal approximation, sample sd).

    What a selection checks a budget on when the quantity is an average over a
    few dozen prompts: the mean alone passes about half the time when the true
    value sits on the budget.
    """
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.inf
    mean = sum(values) / n
    if n == 1:
        return math.inf
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean + z * sd / math.sqrt(n)
