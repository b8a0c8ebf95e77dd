"""The ``--model-loader-extra-config`` of ``--load-format rosi``, parsed strictly.

Strict because a typo (``"alhpa"``) silently ignored would start a server with
the file's α, or none at all, while the operator believes otherwise. Keys meant
for vLLM's default loader (multithreaded loading) pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .alpha_policy import check_alpha
from .architectures import DEFAULT_TARGETS, SandwichNormPolicy, validate_targets
from .errors import RosiError

#: Keys of vLLM's DefaultModelLoader that the rosi loader forwards to it.
PASSTHROUGH_KEYS = frozenset({"enable_multithread_load", "num_threads", "enable_weights_track"})
ROSI_KEYS = frozenset(
    {"direction", "alpha", "targets", "verify_fingerprint", "allow_negative_alpha", "sandwich_norm"}
)


@dataclass(frozen=True)
class RosiLoaderConfig:
    direction: str
    alpha: float | None = None  # None: use the direction file's recommended α
    targets: tuple[str, ...] = DEFAULT_TARGETS
    verify_fingerprint: bool = True
    allow_negative_alpha: bool = False
    sandwich_norm: SandwichNormPolicy = SandwichNormPolicy.REFUSE

    @classmethod
    def from_extra_config(cls, extra: Any) -> tuple["RosiLoaderConfig", dict]:
        """Split an extra-config dict into (rosi config, keys for vLLM's loader)."""
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise RosiError(f"rosi: model-loader-extra-config must be a JSON object, got {type(extra).__name__}")
        unknown = sorted(set(extra) - ROSI_KEYS - PASSTHROUGH_KEYS)
        if unknown:
            raise RosiError(
                f"rosi: unknown model-loader-extra-config key(s) {unknown}; known: {sorted(ROSI_KEYS | PASSTHROUGH_KEYS)}"
            )
        passthrough = {k: v for k, v in extra.items() if k in PASSTHROUGH_KEYS}
        direction = extra.get("direction")
        if not isinstance(direction, str) or not direction:
            raise RosiError('rosi: model-loader-extra-config needs "direction": path to a direction .safetensors file')
        alpha = extra.get("alpha")
        if alpha is not None:
            alpha = _as_float(alpha, "alpha")
        targets = extra.get("targets", DEFAULT_TARGETS)
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not isinstance(targets, (list, tuple)) or not all(isinstance(t, str) for t in targets):
            raise RosiError(f"rosi: targets must be a list of names, got {targets!r}")
        try:
            sandwich = SandwichNormPolicy(extra.get("sandwich_norm", SandwichNormPolicy.REFUSE.value))
        except ValueError:
            raise RosiError(
                f"rosi: sandwich_norm must be one of {[p.value for p in SandwichNormPolicy]}, "
                f"got {extra.get('sandwich_norm')!r}"
            ) from None
        config = cls(
            direction=direction,
            alpha=alpha,
            targets=validate_targets(targets),
            verify_fingerprint=_as_bool(extra.get("verify_fingerprint", True), "verify_fingerprint"),
            allow_negative_alpha=_as_bool(extra.get("allow_negative_alpha", False), "allow_negative_alpha"),
            sandwich_norm=sandwich,
        )
        if alpha is not None:
            check_alpha(alpha, config.allow_negative_alpha)
        return config, passthrough


def _as_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RosiError(f"rosi: {key} must be a number, got {value!r}")
    try:
        return float(value)
    except ValueError:
        raise RosiError(f"rosi: {key} must be a number, got {value!r}") from None


def _as_bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise RosiError(f"rosi: {key} must be true or false, got {value!r}")
    return value
