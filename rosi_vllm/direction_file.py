"""Direction file formats v1 and v2: one safetensors file per direction.

Layout (see directions/README.md for the operator-facing description):

* tensor ``direction``: float32, shape ``[hidden_size]``. Stored as extracted;
  consumers normalise it to unit norm themselves.
* v2 only (``read: gated``): one float32 read vector per edited residual writer,
  tensor ``read.<layer>.<target>`` (``read.<layer>.<target>.expert.<E>`` for a
  mixture-of-experts expert), shape ``[d_in]`` of that writer. The edit becomes
  ``W + α·ŝ·hᵀ`` with the fitted h instead of the paper's row mean w̄, so it fires
  on the inputs h was fitted to (harmful requests) and not on others. The layers
  that have read vectors are the ``window``; writers outside it are not edited.
* string metadata (safetensors ``__metadata__``), every key below. Numbers are
  stored as decimal strings because safetensors metadata is ``str → str``.

A v1 file is written whenever there are no read vectors, so v1 consumers keep
reading everything they could; a v1-only reader refuses v2 by its version.

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
from .architectures import DEFAULT_TARGETS
from .checkpoint import ModelShape, model_shape
from .errors import RosiError
from .fingerprint import fingerprint_checkpoint
from .injection import unit_direction

FORMAT_NAME = "rosi-direction"
FORMAT_VERSION = "1"  # the paper's read vector w̄, computed from the weights at load
GATED_FORMAT_VERSION = "2"  # fitted read vectors in the file
READABLE_VERSIONS = (FORMAT_VERSION, GATED_FORMAT_VERSION)
TENSOR_NAME = "direction"
READ_PREFIX = "read."
READ_GATED = "gated"

# Metadata keys. Provenance keys are free-form beyond the ones named here.
K_FORMAT = "format"
K_VERSION = "format_version"
K_ARCH = "architecture"
K_HIDDEN = "hidden_size"
K_LAYERS = "num_layers"
K_LAYER = "layer"
K_ALPHA = "recommended_alpha"
K_FINGERPRINT = "model_fingerprint"
K_READ = "read"  # v2: "gated"
K_WINDOW = "window"  # v2: JSON list of the layers with read vectors
K_FIT = "fit"  # v2: JSON object, the fit's settings
K_GATE = "gate"  # v2: JSON object, per read vector: held-out gate statistics
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
    #: v2: read-vector key (``"<layer>.<target>"`` or ``"<layer>.<target>.expert.<E>"``) → float32 ``[d_in]``
    reads: dict[str, torch.Tensor] = field(default_factory=dict)
    fit: dict = field(default_factory=dict)  # v2: settings of the fit (free-form JSON)
    gate: dict = field(default_factory=dict)  # v2: read-vector key → held-out gate statistics

    @property
    def gated(self) -> bool:
        return bool(self.reads)

    @property
    def format_version(self) -> str:
        return GATED_FORMAT_VERSION if self.gated else FORMAT_VERSION

    @property
    def default_targets(self) -> tuple[str, ...]:
        """The writers this direction edits when the operator names none: those with read vectors (v2), else all."""
        if not self.gated:
            return DEFAULT_TARGETS
        return tuple(t for t in DEFAULT_TARGETS if any(key.split(".")[1] == t for key in self.reads))

    @property
    def window(self) -> tuple[int, ...]:
        """Layers with read vectors (v2); empty for v1, where every layer is edited."""
        return tuple(sorted({read_key_layer(key) for key in self.reads}))

    @property
    def direction_id(self) -> str:
        """Content id: the first 12 hex of sha256 of the float32 bytes of the direction (and read vectors, v2)."""
        digest = hashlib.sha256(self.direction.to(torch.float32).contiguous().numpy().tobytes())
        for key in sorted(self.reads):
            digest.update(key.encode())
            digest.update(self.reads[key].to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()[:12]

    @property
    def unit(self) -> torch.Tensor:
        return unit_direction(self.direction)

    def metadata(self) -> dict[str, str]:
        meta = {
            K_FORMAT: FORMAT_NAME,
            K_VERSION: self.format_version,
            K_ARCH: self.architecture,
            K_HIDDEN: str(self.hidden_size),
            K_LAYERS: str(self.num_layers),
            K_LAYER: str(self.layer),
            K_ALPHA: repr(float(self.recommended_alpha)),
            K_FINGERPRINT: self.model_fingerprint,
        }
        if self.gated:
            meta.update({K_READ: READ_GATED, K_WINDOW: json.dumps(list(self.window)),
                         K_FIT: json.dumps(self.fit, sort_keys=True), K_GATE: json.dumps(self.gate, sort_keys=True)})
        for key, value in self.provenance.items():
            meta[PROVENANCE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return meta


def read_key(layer: int, target: str, expert: int | None = None) -> str:
    """The read-vector key of a writer: ``"12.mlp_out"``, or ``"3.mlp_out.expert.7"`` for an expert."""
    return f"{layer}.{target}" if expert is None else f"{layer}.{target}.expert.{expert}"


def read_key_layer(key: str) -> int:
    return int(key.split(".", 1)[0])


def _parse_read_key(key: str, where: str, num_layers: int) -> None:
    parts = key.split(".")
    valid = (len(parts) in (2, 4) and parts[0].isdigit() and parts[1] in ("attn_out", "mlp_out")
             and (len(parts) == 2 or (parts[2] == "expert" and parts[3].isdigit())))
    if not valid:
        raise RosiError(f"rosi: {where!r} has a malformed read vector name {READ_PREFIX + key!r} "
                        "(expected read.<layer>.<attn_out|mlp_out>[.expert.<E>])")
    if int(parts[0]) >= num_layers:
        raise RosiError(f"rosi: {where!r} has read vector {READ_PREFIX + key!r} for layer {parts[0]}, "
                        f"but the model has {num_layers} layers")


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
    """Write a direction file (v1, or v2 when it has read vectors) after checking it would load back."""
    from safetensors.torch import save_file

    vector = direction_file.direction.detach().to(torch.float32).contiguous().cpu()
    direction_file.direction = vector
    _check_vector(vector, direction_file.hidden_size, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {TENSOR_NAME: vector}
    for key, read in direction_file.reads.items():
        read = read.detach().to(torch.float32).contiguous().cpu()
        _check_read(key, read, str(path))
        tensors[READ_PREFIX + key] = direction_file.reads[key] = read
    save_file(tensors, str(path), metadata=direction_file.metadata())
    return path


def load_direction(path: str | Path) -> DirectionFile:
    """Read and validate a v1 or v2 direction file; every defect is a `RosiError`."""
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
            reads = {name[len(READ_PREFIX):]: f.get_tensor(name) for name in names if name.startswith(READ_PREFIX)}
            others = sorted(set(names) - {TENSOR_NAME} - {READ_PREFIX + k for k in reads})
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, RosiError):
            raise
        raise RosiError(f"rosi: {where!r} is not a valid safetensors direction file ({exc})") from exc

    if meta.get(K_FORMAT) != FORMAT_NAME:
        raise RosiError(f"rosi: {where!r} is not a ROSI direction file (format={meta.get(K_FORMAT)!r})")
    version = meta.get(K_VERSION)
    if version not in READABLE_VERSIONS:
        raise RosiError(
            f"rosi: {where!r} has format_version {version!r}; this rosi-vllm reads versions "
            f"{', '.join(READABLE_VERSIONS)}"
        )
    if others:
        raise RosiError(f"rosi: {where!r} has unexpected tensors {others[:5]}")
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
    fit, gate = _check_version_contents(version, meta, reads, layers, where)
    return DirectionFile(vector, meta[K_ARCH], hidden, layers, layer, alpha, meta[K_FINGERPRINT], provenance,
                         reads=reads, fit=fit, gate=gate)


def _check_version_contents(version: str, meta: dict, reads: dict, num_layers: int, where: str) -> tuple[dict, dict]:
    """v1 has no read vectors or v2 keys; v2 has read vectors, ``read: gated`` and a window that matches them."""
    v2_keys = sorted(k for k in (K_READ, K_WINDOW, K_FIT, K_GATE) if k in meta)
    if version == FORMAT_VERSION:
        if reads or v2_keys:
            found = ([READ_PREFIX + k for k in sorted(reads)] + v2_keys)[:5]
            raise RosiError(f"rosi: {where!r} is format_version 1 but carries version-2 keys {found}; "
                            "a file is one version or the other")
        return {}, {}
    if meta.get(K_READ) != READ_GATED:
        raise RosiError(f"rosi: {where!r} is format_version 2 but its read is {meta.get(K_READ)!r}, not 'gated'")
    if not reads:
        raise RosiError(f"rosi: {where!r} is format_version 2 (gated) but has no read vectors")
    for key, read in reads.items():
        _parse_read_key(key, where, num_layers)
        _check_read(key, read, where)
    try:
        window = json.loads(meta.get(K_WINDOW, "null"))
        fit, gate = json.loads(meta.get(K_FIT, "{}")), json.loads(meta.get(K_GATE, "{}"))
    except json.JSONDecodeError as exc:
        raise RosiError(f"rosi: {where!r} has malformed version-2 metadata ({exc})") from None
    layers_with_reads = sorted({read_key_layer(k) for k in reads})
    if window != layers_with_reads:
        raise RosiError(f"rosi: {where!r} declares window {window} but has read vectors for layers "
                        f"{layers_with_reads}")
    return fit, gate


def _check_read(key: str, read: torch.Tensor, where: str) -> None:
    if read.dtype != torch.float32 or read.ndim != 1 or read.numel() == 0:
        raise RosiError(f"rosi: {where!r} read vector {READ_PREFIX + key!r} must be a 1-D float32 tensor, "
                        f"got {read.dtype} {tuple(read.shape)}")
    if not torch.isfinite(read).all():
        raise RosiError(f"rosi: {where!r} read vector {READ_PREFIX + key!r} contains NaN or inf")


def _check_vector(vector: torch.Tensor, hidden_size: int, where: str) -> None:
    if vector.ndim != 1 or vector.shape[0] != hidden_size:
        raise RosiError(
            f"rosi: {where!r} direction has shape {tuple(vector.shape)}, metadata says hidden_size={hidden_size}"
        )
    unit_direction(vector)  # refuses NaN/inf and zero norm
