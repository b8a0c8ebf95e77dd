"""Read a steering/refusal vector written by another tool, so it can be served.

Accepted: ``.npy`` (numpy, no pickles), ``.safetensors``, weights-only torch
files (``.pt``/``.pth``/``.bin``, loaded with ``weights_only=True``, never a
general pickle) and llama.cpp GGUF control vectors (tensors ``direction.<L>``,
as written by llama.cpp's cvector-generator and repeng). A file may hold one
vector ``[hidden]``, a per-layer stack ``[n, hidden]`` indexed by layer, or
named tensors (``direction``, ``direction.<L>``, ``layers.<L>``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import RosiError


def _pick(tensors: dict[str, torch.Tensor], layer: int, where: str) -> torch.Tensor:
    for key in ("direction", f"direction.{layer}", f"layers.{layer}", str(layer)):
        if key in tensors:
            return _pick_row(tensors[key], layer, where) if key == "direction" else tensors[key]
    if len(tensors) == 1:
        return _pick_row(next(iter(tensors.values())), layer, where)
    raise RosiError(f"rosi: {where!r} holds {sorted(tensors)[:10]}; none is the vector for layer {layer}")


def _pick_row(tensor: torch.Tensor, layer: int, where: str) -> torch.Tensor:
    if tensor.ndim == 1:
        return tensor
    if tensor.ndim == 2:
        if not 0 <= layer < tensor.shape[0]:
            raise RosiError(f"rosi: {where!r} stacks {tensor.shape[0]} vectors; layer {layer} is out of range")
        return tensor[layer]
    raise RosiError(f"rosi: {where!r} holds a tensor of shape {tuple(tensor.shape)}; expected 1-D or 2-D")


def _read_gguf(path: Path) -> dict[str, torch.Tensor]:
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise RosiError("rosi: reading GGUF control vectors needs the `gguf` package (pip install gguf)") from exc
    reader = GGUFReader(str(path))
    arch = reader.fields.get("general.architecture")
    if arch is not None:
        name = bytes(arch.parts[arch.data[0]]).decode()
        if name != "controlvector":
            raise RosiError(f"rosi: {str(path)!r} is a GGUF {name!r} file, not a control vector")
    return {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32).reshape(-1)) for t in reader.tensors}


def read_vector(path: str | Path, layer: int) -> torch.Tensor:
    """The float32 vector for `layer` from a file in any accepted format."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise RosiError(f"rosi: vector file {where!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            vector = _pick_row(torch.from_numpy(np.load(path, allow_pickle=False)), layer, where)
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            vector = _pick(load_file(where), layer, where)
        elif suffix in (".pt", ".pth", ".bin"):
            obj = torch.load(where, map_location="cpu", weights_only=True)
            if isinstance(obj, torch.Tensor):
                vector = _pick_row(obj, layer, where)
            elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
                vector = _pick(obj, layer, where)
            else:
                raise RosiError(f"rosi: {where!r} holds a {type(obj).__name__}, not a tensor or dict of tensors")
        elif suffix == ".gguf":
            vector = _pick(_read_gguf(path), layer, where)
        else:
            raise RosiError(f"rosi: unknown vector file type {suffix!r}; use .npy, .safetensors, .pt or .gguf")
    except RosiError:
        raise
    except Exception as exc:  # corrupt file in any reader: one clear line
        raise RosiError(f"rosi: cannot read vector from {where!r}: {exc}") from exc
    return vector.detach().to(torch.float32).reshape(-1).clone()


def import_direction(model_dir: str | Path, vector_path: str | Path, *, layer: int, alpha: float):
    """Wrap the vector for `layer` in `vector_path` as a direction file bound to the checkpoint `model_dir`."""
    import hashlib

    from .checkpoint import model_shape
    from .direction_file import direction_for_checkpoint

    shape = model_shape(model_dir)
    if not 0 <= layer < shape.num_layers:
        raise RosiError(f"rosi: --layer {layer} is outside 0..{shape.num_layers - 1}")
    vector = read_vector(vector_path, layer)
    if vector.shape[0] != shape.hidden_size:
        raise RosiError(f"rosi: vector has {vector.shape[0]} elements, the model's hidden_size is {shape.hidden_size}")
    source = Path(vector_path)
    return direction_for_checkpoint(
        model_dir, vector, alpha=alpha, layer=layer, method="import", shape=shape,
        provenance={"source_file": source.name, "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest()},
    )
