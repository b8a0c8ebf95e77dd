"""Wilson intervals."""

from __future__ import annotations

from rosi_vllm.stats import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.09
    lo, hi = wilson_interval(25, 50)
    assert lo < 0.5 < hi and abs((0.5 - lo) - (hi - 0.5)) < 1e-9
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k in range(0, 101):
        lo, hi = wilson_interval(k, 100)
        assert lo <= k / 100 <= hi
