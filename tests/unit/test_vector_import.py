"""`rosi direction import` reads vectors from other tools' formats, never a pickle."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rosi_vllm.core.direction_file import load_direction
from rosi_vllm.core.errors import RosiError
from rosi_vllm.core.fingerprint import fingerprint_checkpoint
from rosi_vllm.core.vector_import import read_vector

HIDDEN, LAYERS = 128, 2


def _stack(seed=0):
    return np.random.RandomState(seed).randn(LAYERS, HIDDEN).astype(np.float32)


def write_gguf_control_vector(path, stack):
    """A control vector laid out as llama.cpp's cvector-generator writes it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", stack.shape[0])
    for layer in range(stack.shape[0]):
        writer.add_tensor(f"direction.{layer}", stack[layer])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("fmt", ["npy-1d", "npy-stack", "safetensors-named", "safetensors-layer", "pt-tensor", "pt-dict", "gguf"])
def test_formats(tmp_path, fmt):
    stack = _stack()
    if fmt == "npy-1d":
        path = tmp_path / "v.npy"
        np.save(path, stack[1])
    elif fmt == "npy-stack":
        path = tmp_path / "v.npy"
        np.save(path, stack)
    elif fmt == "safetensors-named":
        path = tmp_path / "v.safetensors"
        save_file({"direction": torch.from_numpy(stack[1])}, str(path))
    elif fmt == "safetensors-layer":
        path = tmp_path / "v.safetensors"
        save_file({f"layers.{i}": torch.from_numpy(stack[i]) for i in range(LAYERS)}, str(path))
    elif fmt == "pt-tensor":
        path = tmp_path / "v.pt"
        torch.save(torch.from_numpy(stack), path)
    elif fmt == "pt-dict":
        path = tmp_path / "v.pt"
        torch.save({f"direction.{i}": torch.from_numpy(stack[i]) for i in range(LAYERS)}, path)
    else:
        path = tmp_path / "v.gguf"
        write_gguf_control_vector(path, stack)
    assert torch.equal(read_vector(path, 1), torch.from_numpy(stack[1]))


def test_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "v.pt"
    with open(path, "wb") as f:
        pickle.dump({"direction": Evil()}, f)
    with pytest.raises(RosiError, match="cannot read vector"):
        read_vector(path, 0)
    assert not marker.exists()
    npy = tmp_path / "o.npy"
    np.save(npy, np.array([Evil()], dtype=object), allow_pickle=True)
    with pytest.raises(RosiError, match="cannot read vector"):
        read_vector(npy, 0)
    assert not marker.exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(RosiError, match="not found"):
        read_vector(tmp_path / "none.npy", 0)
    np.save(tmp_path / "s.npy", _stack())
    with pytest.raises(RosiError, match="layer 5 is out of range"):
        read_vector(tmp_path / "s.npy", 5)
    (tmp_path / "v.txt").write_text("1 2 3")
    with pytest.raises(RosiError, match="unknown vector file type"):
        read_vector(tmp_path / "v.txt", 0)


def test_cli_import_then_inspect(tiny_model, tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "cv.gguf"
    write_gguf_control_vector(path, _stack())
    out = tmp_path / "imported.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "rosi_vllm.cli", "direction", "import", "--model", str(model), "--vector", str(path),
         "--layer", "1", "--alpha", "16", "--out", str(out)],
        capture_output=True, text=True, check=True,
    )
    assert "wrote" in run.stdout
    d = load_direction(out)
    assert d.layer == 1 and d.recommended_alpha == 16.0 and d.model_fingerprint == fingerprint_checkpoint(model)
    assert torch.equal(d.direction, torch.from_numpy(_stack()[1]))
    assert d.provenance["method"] == "import" and len(d.provenance["source_sha256"]) == 64
    shown = subprocess.run([sys.executable, "-m", "rosi_vllm.cli", "inspect", str(out), "--json"],
                           capture_output=True, text=True, check=True)
    assert '"layer": 1' in shown.stdout and d.direction_id in shown.stdout


def test_cli_import_wrong_hidden_size(tiny_model, tmp_path):
    np.save(tmp_path / "v.npy", np.ones(64, dtype=np.float32))
    run = subprocess.run(
        [sys.executable, "-m", "rosi_vllm.cli", "direction", "import", "--model", str(tiny_model("llama")),
         "--vector", str(tmp_path / "v.npy"), "--layer", "0", "--alpha", "1", "--out", str(tmp_path / "o.safetensors")],
        capture_output=True, text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "rosi: vector has 64 elements, the model's hidden_size is 128"
