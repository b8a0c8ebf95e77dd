"""Reading a local safetensors checkpoint folder without loading its weights.

Fingerprinting, validation and offline injection all need the same three facts
about a checkpoint: which safetensors files make it up, the byte layout of each
tensor inside them, and the model shape from config.json. This module gives
those and nothing more (no vLLM import).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import RosiError

SAFE_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorRecord:
    """Where one tensor's bytes live inside a safetensors file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in `file`
    nbytes: int


@dataclass(frozen=True)
class ModelShape:
    """The facts about a model a direction must agree with."""

    architecture: str
    hidden_size: int
    num_layers: int
    tie_word_embeddings: bool


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The safetensors files that make up a checkpoint, as vLLM would pick them.

    With an index file, only the files it names (a folder may also hold a
    `consolidated.safetensors` duplicate); otherwise every `*.safetensors`.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise RosiError(f"rosi: model folder {str(model_dir)!r} does not exist")
    index = model_dir / SAFE_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({model_dir / f for f in weight_map.values()})
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RosiError(
            f"rosi: no *.safetensors in {str(model_dir)!r}; ROSI reads safetensors checkpoints only "
            "(convert .bin with transformers' save_pretrained)"
        )
    return files


def read_header(path: Path) -> tuple[dict, int]:
    """Parse a safetensors header: returns (header dict, offset where data begins)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 100 * 1024 * 1024:
                raise ValueError("header length implausible")
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise RosiError(f"rosi: {str(path)!r} is not a readable safetensors file ({exc})") from exc
    return header, 8 + length


def tensor_records(files: list[Path]) -> list[TensorRecord]:
    """Every tensor of the checkpoint, sorted by name (independent of sharding)."""
    records = []
    for path in files:
        header, data_start = read_header(path)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            records.append(
                TensorRecord(name, info["dtype"], tuple(info["shape"]), path, data_start + begin, end - begin)
            )
    records.sort(key=lambda r: r.name)
    return records


def model_shape_from_hf_config(hf_config) -> ModelShape:
    """Architecture and sizes from a transformers config object.

    Takes the object, not config.json, because transformers resolves per-class
    defaults (`tie_word_embeddings` is often absent from the file) and aliases
    (`n_embd` → `hidden_size`). vLLM hands the loader the same object.
    """
    architectures = getattr(hf_config, "architectures", None) or []
    if not architectures:
        raise RosiError("rosi: the model config names no architecture")
    text = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    hidden = getattr(text, "hidden_size", None)
    layers = getattr(text, "num_hidden_layers", None)
    if hidden is None or layers is None:
        raise RosiError("rosi: the model config lacks hidden_size / num_hidden_layers")
    tie = bool(getattr(hf_config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False))
    return ModelShape(architectures[0], int(hidden), int(layers), tie)


def model_shape(model_dir: str | Path) -> ModelShape:
    """ModelShape of a local checkpoint folder (offline; never reaches a hub)."""
    from transformers import AutoConfig

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise RosiError(f"rosi: {str(path / 'config.json')!r} not found")
    return model_shape_from_hf_config(AutoConfig.from_pretrained(str(path), local_files_only=True))
