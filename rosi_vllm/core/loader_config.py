"""The ``--model-loader-extra-config`` of ``--load-format rosi``, parsed strictly (pydantic).

Strict because a typo (``"alhpa"``) silently ignored would start a server with
the file's α, or none at all, while the operator believes otherwise. Keys meant
for vLLM's default loader (multithreaded loading) pass through untouched.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    ValidationError,
    model_validator,
)

from .alpha_policy import alpha_problem
from .architectures import SandwichNormPolicy, validate_targets
from .errors import RosiError

#: Keys of vLLM's DefaultModelLoader that the rosi loader forwards to it.
PASSTHROUGH_KEYS = frozenset({"enable_multithread_load", "num_threads", "enable_weights_track"})
ROSI_KEYS = frozenset(
    {"direction", "alpha", "targets", "verify_fingerprint", "allow_negative_alpha", "sandwich_norm"}
)

#: what each key must be, for the message when it is not (pydantic's own messages are for developers)
_MUST = {
    "alpha": "alpha must be a number",
    "targets": "targets must be a list of names",
    "verify_fingerprint": "verify_fingerprint must be true or false",
    "allow_negative_alpha": "allow_negative_alpha must be true or false",
    "sandwich_norm": f"sandwich_norm must be one of {[p.value for p in SandwichNormPolicy]}",
}
_NEEDS_DIRECTION = 'model-loader-extra-config needs "direction": path to a direction .safetensors file'


def _number_text(value: Any) -> Any:
    """Numbers may come as JSON strings ("8"); anything else is left for the strict check to refuse."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _target_list(value: Any) -> Any:
    """``"mlp_out, embed"`` is accepted for a list of targets."""
    return [t.strip() for t in value.split(",") if t.strip()] if isinstance(value, str) else value


class RosiLoaderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    direction: Annotated[str, Field(strict=True, min_length=1)]
    alpha: Annotated[StrictFloat | None, BeforeValidator(_number_text)] = None  # None: the file's recommended α
    #: None: the direction's own writers (format v2: those with read vectors; v1: attn_out and mlp_out)
    targets: Annotated[tuple[str, ...], BeforeValidator(_target_list), AfterValidator(validate_targets)] | None = None
    verify_fingerprint: StrictBool = True
    allow_negative_alpha: StrictBool = False
    sandwich_norm: SandwichNormPolicy = SandwichNormPolicy.REFUSE

    @model_validator(mode="after")
    def _alpha_policy(self) -> RosiLoaderConfig:
        if self.alpha is not None and (problem := alpha_problem(self.alpha, self.allow_negative_alpha)):
            raise ValueError(problem)
        return self

    @classmethod
    def from_extra_config(cls, extra: Any) -> tuple[RosiLoaderConfig, dict]:
        """Split an extra-config dict into (rosi config, keys for vLLM's loader)."""
        if extra is None:
            extra = {}
        if not isinstance(extra, dict):
            raise RosiError(f"rosi: model-loader-extra-config must be a JSON object, got {type(extra).__name__}")
        passthrough = {k: v for k, v in extra.items() if k in PASSTHROUGH_KEYS}
        try:
            config = cls.model_validate({k: v for k, v in extra.items() if k not in PASSTHROUGH_KEYS})
        except ValidationError as exc:
            raise RosiError("rosi: " + "; ".join(_problems(exc))) from None
        return config, passthrough


def _problems(exc: ValidationError) -> list[str]:
    problems, unknown = [], []
    for err in exc.errors(include_url=False):
        key = str(err["loc"][0]) if err["loc"] else ""
        if err["type"] == "extra_forbidden":
            unknown.append(key)
        elif err["type"] == "value_error":  # the α policy, validate_targets: already in operator language
            problems.append(str(err["ctx"]["error"]).removeprefix("rosi: "))
        elif key == "direction":
            problems.append(_NEEDS_DIRECTION)
        else:
            problems.append(f"{_MUST[key]}, got {err['input']!r}")
    if unknown:
        problems.insert(0, f"unknown model-loader-extra-config key(s) {sorted(unknown)}; "
                           f"known: {sorted(ROSI_KEYS | PASSTHROUGH_KEYS)}")
    return list(dict.fromkeys(problems))  # a union reports once per member
