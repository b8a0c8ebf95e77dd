"""Direction file format v1: one safetensors file per direction.

Layout (see directions/README.md for the operator-facing description):

* tensor ``direction``: float32, shape ``[hidden_size]``. Stored as extracted;
  consumers normalise it to unit norm themselves.
* string metadata (safetensors ``__metadata__``), every key below. Numbers are
  stored as decimal strings because safetensors metadata is ``str → str``.

safetensors rather than a pickle so that loading a direction can never run
code, and the same file opens in any safetensors reader.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import __version__
from .checkpoint import ModelShape, model_shape
from .errors import RosiError
from .fingerprint import fingerprint_checkpoint
from .injection import unit_direction

FORMAT_NAME = "rosi-direction"
FORMAT_VERSION = "1"
TENSOR_NAME = "direction"

# Metadata keys. Provenance keys are free-form beyond the ones named here.
K_FORMAT = "format"
K_VERSION = "format_version"
K_ARCH = "architecture"
K_HIDDEN = "hidden_size"
K_LAYERS = "num_layers"
K_LAYER = "layer"
K_ALPHA = "recommended_alpha"
K_FINGERPRINT = "model_fingerprint"
PROVENANCE_PREFIX = "provenance."
PROVENANCE_KEYS = ("tool_version", "created", "method", "harmful_sha256", "harmless_sha256", "system_prompt")
REQUIRED_KEYS = (K_FORMAT, K_VERSION, K_ARCH, K_HIDDEN, K_LAYERS, K_LAYER, K_ALPHA, K_FINGERPRINT)


@dataclass
class DirectionFile:
    direction: torch.Tensor
    architecture: str
    hidden_size: int
    num_layers: int
    layer: int
    recommended_alpha: float
    model_fingerprint: str
    provenance: dict[str, str] = field(default_factory=dict)

    @property
    def direction_id(self) -> str:
        """Content id of the vector: the first 12 hex of sha256 of its float32 bytes."""
        data = self.direction.to(torch.float32).contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:12]

    @property
    def unit(self) -> torch.Tensor:
        return unit_direction(self.direction)

    def metadata(self) -> dict[str, str]:
        meta = {
            K_FORMAT: FORMAT_NAME,
            K_VERSION: FORMAT_VERSION,
            K_ARCH: self.architecture,
            K_HIDDEN: str(self.hidden_size),
            K_LAYERS: str(self.num_layers),
            K_LAYER: str(self.layer),
            K_ALPHA: repr(float(self.recommended_alpha)),
            K_FINGERPRINT: self.model_fingerprint,
        }
        for key, value in self.provenance.items():
            meta[PROVENANCE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return meta


def direction_for_checkpoint(model_dir: str | Path, vector: torch.Tensor, *, alpha: float, method: str,
                             layer: int | None = None, provenance: dict[str, str] | None = None,
                             shape: ModelShape | None = None, fingerprint: str | None = None) -> DirectionFile:
    """A direction file bound to the checkpoint in `model_dir`: its shape, fingerprint and provenance.

    The one way every tool (extraction, import, tests, benchmarks, the demo) makes
    a direction for a checkpoint, so each records the same identity and provenance.
    ``layer`` defaults to the middle layer (it is informational for injection);
    ``shape`` and ``fingerprint`` may be passed when the caller already has them.
    """
    shape = shape or model_shape(model_dir)
    return DirectionFile(
        direction=vector.detach().to(torch.float32).clone(),
        architecture=shape.architecture,
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        layer=shape.num_layers // 2 if layer is None else layer,
        recommended_alpha=float(alpha),
        model_fingerprint=fingerprint or fingerprint_checkpoint(model_dir),
        provenance={
            "tool_version": f"rosi-vllm {__version__}",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "method": method,
            **(provenance or {}),
        },
    )


def save_direction(path: str | Path, direction_file: DirectionFile) -> Path:
    """Write a v1 direction file after checking it would load back."""
    from safetensors.torch import save_file

    vector = direction_file.direction.detach().to(torch.float32).contiguous().cpu()
    direction_file.direction = vector
    _check_vector(vector, direction_file.hidden_size, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR_NAME: vector}, str(path), metadata=direction_file.metadata())
    return path


def load_direction(path: str | Path) -> DirectionFile:
    """Read and validate a v1 direction file; every defect is a `RosiError`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise RosiError(f"rosi: direction file {where!r} not found")
    try:
        with safe_open(where, framework="pt") as f:
            meta = f.metadata() or {}
            names = list(f.keys())
            if TENSOR_NAME not in names:
                raise RosiError(f"rosi: {where!r} has no tensor {TENSOR_NAME!r} (found {names})")
            vector = f.get_tensor(TENSOR_NAME)
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, RosiError):
            raise
        raise RosiError(f"rosi: {where!r} is not a valid safetensors direction file ({exc})") from exc

    if meta.get(K_FORMAT) != FORMAT_NAME:
        raise RosiError(f"rosi: {where!r} is not a ROSI direction file (format={meta.get(K_FORMAT)!r})")
    if meta.get(K_VERSION) != FORMAT_VERSION:
        raise RosiError(
            f"rosi: {where!r} has format_version {meta.get(K_VERSION)!r}; this rosi-vllm reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise RosiError(f"rosi: {where!r} lacks metadata {missing}")
    try:
        hidden = int(meta[K_HIDDEN])
        layers = int(meta[K_LAYERS])
        layer = int(meta[K_LAYER])
        alpha = float(meta[K_ALPHA])
    except ValueError as exc:
        raise RosiError(f"rosi: {where!r} has malformed numeric metadata ({exc})") from exc
    if vector.dtype != torch.float32:
        raise RosiError(f"rosi: {where!r} direction is {vector.dtype}; format v1 stores float32")
    _check_vector(vector, hidden, where)
    provenance = {k[len(PROVENANCE_PREFIX):]: v for k, v in meta.items() if k.startswith(PROVENANCE_PREFIX)}
    return DirectionFile(vector, meta[K_ARCH], hidden, layers, layer, alpha, meta[K_FINGERPRINT], provenance)


def _check_vector(vector: torch.Tensor, hidden_size: int, where: str) -> None:
    if vector.ndim != 1 or vector.shape[0] != hidden_size:
        raise RosiError(
            f"rosi: {where!r} direction has shape {tuple(vector.shape)}, metadata says hidden_size={hidden_size}"
        )
    unit_direction(vector)  # refuses NaN/inf and zero norm
