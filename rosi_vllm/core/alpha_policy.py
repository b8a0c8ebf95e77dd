"""The one rule for α: finite, and negative (ablation: removes safety) only with an explicit opt-in.

Every way an α reaches the model asks here: the loader's extra config, the
offline `rosi inject`, adapter export and every tenant-config variant. Each
caller names its own opt-in switch, so the message tells the operator which
setting to change.
"""

from __future__ import annotations

import math

from .errors import RosiError

#: the loader's and the tenant config's opt-in key
LOADER_OPT_IN = 'set "allow_negative_alpha": true'


def alpha_problem(alpha: float, allow_negative: bool, *, subject: str = "alpha",
                  opt_in: str = LOADER_OPT_IN) -> str | None:
    """Why `alpha` may not be served (without the ``rosi:`` prefix), or None when it may."""
    if not math.isfinite(alpha):
        return f"{subject} must be finite, got {alpha}"
    if alpha < 0 and not allow_negative:
        return (f"{subject}={float(alpha)} is negative, which ablates (removes) the safety direction; "
                f"{opt_in} to do this deliberately")
    return None


def check_alpha(alpha: float, allow_negative: bool, *, opt_in: str = LOADER_OPT_IN) -> float:
    """Return `alpha` if it may be served; otherwise raise the `RosiError` that says how to opt in."""
    problem = alpha_problem(alpha, allow_negative, opt_in=opt_in)
    if problem:
        raise RosiError(f"rosi: {problem}")
    return alpha
