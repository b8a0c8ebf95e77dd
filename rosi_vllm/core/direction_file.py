"""Direction file formats v1 and v2: one safetensors file per direction.

Layout (see directions/README.md for the operator-facing description):

* tensor ``direction``: float32, shape ``[hidden_size]``. Stored as extracted;
  consumers normalise it to unit norm themselves.
* each edit method's own section (its keys and tensors, and their checks) is
  written in its folder, `rosi_vllm/methods/<name>/format.py`; summarised here:
* v2 only (``read: gated``): one float32 read vector per edited residual writer,
  tensor ``read.<layer>.<target>`` (``read.<layer>.<target>.expert.<E>`` for a
  mixture-of-experts expert), shape ``[d_in]`` of that writer. The edit becomes
  ``W + α·ŝ·hᵀ`` with the fitted h instead of the paper's row mean w̄, so it fires
  on the inputs h was fitted to (harmful requests) and not on others. The layers
  that have read vectors are the ``window``; writers outside it are not edited.
* v3 only (``read: threshold``): per edited layer L, the MLP neuron given up
  (metadata ``neurons``, ``{"L": index}``) and two float32 ``[hidden_size]``
  tensors, ``neuron.<L>.read`` (g, fitted like a v2 read vector on the MLP's
  normalised input) and ``neuron.<L>.bias`` (u, with u·x ≈ 1 on every input),
  plus ``threshold`` t and ``sharpness`` c. The loader replaces that neuron's
  gate row, up row and down column so the layer adds ≈ ``α·ReLU(g·x − t)·ŝ``
  (`injection.threshold_rows`): the edit fires only where the read passes t.
* string metadata (safetensors ``__metadata__``), every key below. Numbers are
  stored as decimal strings because safetensors metadata is ``str → str``.

A v1 file is written whenever there are no read vectors or neurons, so v1
consumers keep reading everything they could; an older reader refuses a newer
version by its number (a v2 reader refuses v3).

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

from .. import __version__
from .checkpoint import ModelShape, model_shape
from .errors import RosiError
from .fingerprint import fingerprint_checkpoint
from .injection import unit_direction

FORMAT_NAME = "rosi-direction"
FORMAT_VERSION = "1"  # the paper's read vector w̄, computed from the weights at load
GATED_FORMAT_VERSION = "2"  # fitted read vectors in the file
THRESHOLD_FORMAT_VERSION = "3"  # one transplanted MLP neuron per edited layer
TENSOR_NAME = "direction"
READ_PREFIX = "read."  # a read vector's tensor name is READ_PREFIX + `read_key` (gated's section)

# Metadata keys of the shared header; provenance keys are free-form beyond the ones named here. A method's own
# keys are in its format.py.
K_FORMAT = "format"
K_VERSION = "format_version"
K_ARCH = "architecture"
K_HIDDEN = "hidden_size"
K_LAYERS = "num_layers"
K_LAYER = "layer"
K_ALPHA = "recommended_alpha"
K_FINGERPRINT = "model_fingerprint"
# Keys more than one method's section uses
K_READ = "read"  # the method: "gated", "threshold" (v1 files have none)
K_WINDOW = "window"  # JSON list of the edited layers
K_FIT = "fit"  # JSON object, the fit's settings
K_GATE = "gate"  # JSON object, per read vector (v3: per layer): held-out gate statistics
PROVENANCE_PREFIX = "provenance."
PROVENANCE_KEYS = ("tool_version", "created", "method", "harmful_sha256", "harmless_sha256", "system_prompt")
REQUIRED_KEYS = (K_FORMAT, K_VERSION, K_ARCH, K_HIDDEN, K_LAYERS, K_LAYER, K_ALPHA, K_FINGERPRINT)


def _registry():
    """The methods registry, imported when first asked: the methods build on this module."""
    from .. import methods

    return methods


@dataclass(frozen=True)
class ThresholdNeuron:
    """v3: the MLP neuron of a layer given up to the threshold gate, and what its transplant reads."""

    index: int
    read: torch.Tensor  # g, float32 [hidden_size]: g·x ≈ 1 on harmful MLP inputs, ≈ 0 on benign ones
    bias: torch.Tensor  # u, float32 [hidden_size]: u·x ≈ 1 on every MLP input


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
    gate: dict = field(default_factory=dict)  # v2: read-vector key (v3: layer) → held-out gate statistics
    #: v3: layer → its transplanted neuron; with `threshold` t and `sharpness` c
    neurons: dict[int, ThresholdNeuron] = field(default_factory=dict)
    threshold: float = 0.0
    sharpness: float = 0.0

    @property
    def gated(self) -> bool:
        """Format v2: a linear read vector per writer."""
        return bool(self.reads)

    @property
    def thresholded(self) -> bool:
        """Format v3: one transplanted MLP neuron per edited layer."""
        return bool(self.neurons)

    @property
    def method(self):
        """The edit method whose section this file carries (`rosi_vllm.methods`)."""
        return _registry().method_of(self)

    @property
    def read_kind(self) -> str:
        """What the edit reads: "mean" (v1, the paper's w̄), "gated" (v2) or "threshold" (v3)."""
        return self.method.read

    @property
    def format_version(self) -> str:
        return self.method.format_version

    @property
    def default_targets(self) -> tuple[str, ...]:
        """The writers this direction edits when the operator names none: those with read vectors (v2), the
        MLP's down projection (v3), else all."""
        return self.method.default_targets(self)

    @property
    def window(self) -> tuple[int, ...]:
        """Layers with read vectors (v2) or transplanted neurons (v3); empty for v1, where every layer is edited."""
        return self.method.window(self)

    @property
    def direction_id(self) -> str:
        """Content id: the first 12 hex of sha256 of the float32 bytes of the direction and of the method's
        section (read vectors, v2; each neuron with t and c, v3)."""
        digest = hashlib.sha256(self.direction.to(torch.float32).contiguous().numpy().tobytes())
        self.method.digest(self, digest)
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
            **self.method.metadata(self),
        }
        for key, value in self.provenance.items():
            meta[PROVENANCE_PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        return meta


def read_key(layer: int, target: str, expert: int | None = None) -> str:
    """The read-vector key of a writer: ``"12.mlp_out"``, or ``"3.mlp_out.expert.7"`` for an expert."""
    return f"{layer}.{target}" if expert is None else f"{layer}.{target}.expert.{expert}"


def read_key_layer(key: str) -> int:
    return int(key.split(".", 1)[0])


def parse_read_key(key: str, where: str, num_layers: int) -> None:
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
    """Write a direction file (v1; v2 with read vectors; v3 with neurons) after checking it would load back."""
    from safetensors.torch import save_file

    vector = direction_file.direction.detach().to(torch.float32).contiguous().cpu()
    direction_file.direction = vector
    _check_vector(vector, direction_file.hidden_size, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sections = [m for m in _registry().METHODS if m.tensor_prefix and m.carried_by(direction_file)]
    tensors = {TENSOR_NAME: vector}
    for method in sections:
        tensors.update(method.tensors(direction_file, str(path)))
    if len(sections) > 1:
        kinds = " or ".join(f"{m.read} (v{m.format_version})" for m in sorted(sections, key=lambda m: int(m.format_version)))
        raise RosiError(f"rosi: {str(path)!r}: a direction is {kinds}, not both")
    save_file(tensors, str(path), metadata=direction_file.metadata())
    return path


def load_direction(path: str | Path) -> DirectionFile:
    """Read and validate a direction file of any method; every defect is a `RosiError`."""
    from safetensors import SafetensorError, safe_open

    registry = _registry()
    prefixes = [m.tensor_prefix for m in registry.METHODS if m.tensor_prefix]
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
            sections = {prefix: {name[len(prefix):]: f.get_tensor(name) for name in names if name.startswith(prefix)}
                        for prefix in prefixes}
            others = sorted(name for name in names if name != TENSOR_NAME and not name.startswith(tuple(prefixes)))
    except (SafetensorError, OSError, ValueError) as exc:
        if isinstance(exc, RosiError):
            raise
        raise RosiError(f"rosi: {where!r} is not a valid safetensors direction file ({exc})") from exc

    if meta.get(K_FORMAT) != FORMAT_NAME:
        raise RosiError(f"rosi: {where!r} is not a ROSI direction file (format={meta.get(K_FORMAT)!r})")
    version = meta.get(K_VERSION)
    if version not in registry.BY_VERSION:
        raise RosiError(
            f"rosi: {where!r} has format_version {version!r}; this rosi-vllm reads versions "
            f"{', '.join(registry.READABLE_VERSIONS)}"
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
    method = registry.BY_VERSION[version]
    registry.refuse_foreign_tensors(method, registry.METHODS, sections, where)
    section = method.load(meta, sections, hidden_size=hidden, num_layers=layers, where=where)
    return DirectionFile(vector, meta[K_ARCH], hidden, layers, layer, alpha, meta[K_FINGERPRINT], provenance,
                         **section)


def check_read(key: str, read: torch.Tensor, where: str) -> None:
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
