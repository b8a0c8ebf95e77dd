"""An independent reference of the ROSI formula, for tests only.

Written from the paper's equation, sharing no code with `rosi_vllm`: float64,
and it works on the *effective linear map* of a layer (``[d_model, d_in]``,
what the layer multiplies its input by), so a layout bug in the library cannot
be mirrored here. Each test family lists its own expected residual writers.
"""

from __future__ import annotations

import torch

# family -> list of (checkpoint name template, layout) where layout "linear" means
# the stored tensor is the effective map, "transposed" means it is its transpose.
_LLAMA = [("model.layers.{i}.self_attn.o_proj.weight", "linear"), ("model.layers.{i}.mlp.down_proj.weight", "linear")]
EXPECTED_WRITERS = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": _LLAMA,
    "qwen2_moe": [("model.layers.{i}.self_attn.o_proj.weight", "linear")]
    + [(f"model.layers.{{i}}.mlp.experts.{e}.down_proj.weight", "linear") for e in range(4)]
    + [("model.layers.{i}.mlp.shared_expert.down_proj.weight", "linear")],
    "mixtral": [("model.layers.{i}.self_attn.o_proj.weight", "linear")]
    + [(f"model.layers.{{i}}.block_sparse_moe.experts.{e}.w2.weight", "linear") for e in range(4)],
    "gpt2": [("transformer.h.{i}.attn.c_proj.weight", "transposed"), ("transformer.h.{i}.mlp.c_proj.weight", "transposed")],
    "gpt_neox": [
        ("gpt_neox.layers.{i}.attention.dense.weight", "linear"),
        ("gpt_neox.layers.{i}.mlp.dense_4h_to_h.weight", "linear"),
    ],
}


def expected_names(family: str, num_layers: int) -> dict[str, str]:
    return {tmpl.format(i=i): layout for i in range(num_layers) for tmpl, layout in EXPECTED_WRITERS[family]}


def reference_effective(effective: torch.Tensor, direction: torch.Tensor, alpha: float,
                        read: torch.Tensor | None = None) -> torch.Tensor:
    """W' = W + α ŝ rᵀ on the effective [d_model, d_in] map, in float64; r = `read` (gated) or w̄ = mean of rows."""
    w = effective.to(torch.float64)
    s = direction.to(torch.float64)
    s = s / s.norm()
    r = w.mean(dim=0) if read is None else read.to(torch.float64)
    return w + alpha * torch.outer(s, r)


def reference_tensor(stored: torch.Tensor, layout: str, direction: torch.Tensor, alpha: float,
                     read: torch.Tensor | None = None) -> torch.Tensor:
    """The reference edit of a stored checkpoint tensor, returned in float64 and stored layout."""
    if layout == "linear":
        return reference_effective(stored, direction, alpha, read)
    return reference_effective(stored.T, direction, alpha, read).T


def reference_inject_checkpoint(src, dst, family: str, num_layers: int, direction, alpha: float,
                                reads: dict[str, torch.Tensor] | None = None) -> None:
    """Copy checkpoint folder src to dst with the reference edit applied (cast back to the stored dtype).

    ``reads``: gated mode, checkpoint tensor name → its read vector h; only those tensors are edited.
    """
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    targets = expected_names(family, num_layers)
    if reads is not None:
        targets = {name: layout for name, layout in targets.items() if name in reads}
    for path in dst.glob("*.safetensors"):
        tensors = load_file(str(path))
        for name, layout in targets.items():
            if name in tensors:
                original = tensors[name]
                read = None if reads is None else reads[name]
                tensors[name] = reference_tensor(original, layout, direction, alpha, read).to(original.dtype).contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})


def reference_transplant_checkpoint(src, dst, neurons: dict[int, tuple[int, torch.Tensor, torch.Tensor]], direction,
                                    alpha: float, threshold: float, sharpness: float) -> None:
    """Copy the Llama-style checkpoint src to dst with the threshold (format v3) edit, in float64.

    ``neurons``: layer → (neuron j, g, u). Written from the formula: neuron j of the
    layer's MLP gets gate row c·(g − t·u), up row u and down column α·ŝ/c.
    """
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst)
    s = direction.to(torch.float64)
    s = s / s.norm()
    for path in dst.glob("*.safetensors"):
        tensors = load_file(str(path))
        for layer, (j, g, u) in neurons.items():
            prefix = f"model.layers.{layer}.mlp."
            gate, up, down = (tensors[prefix + p].to(torch.float64) for p in
                              ("gate_proj.weight", "up_proj.weight", "down_proj.weight"))
            gate[j] = sharpness * (g.to(torch.float64) - threshold * u.to(torch.float64))
            up[j] = u.to(torch.float64)
            down[:, j] = alpha / sharpness * s
            for name, value in (("gate_proj.weight", gate), ("up_proj.weight", up), ("down_proj.weight", down)):
                tensors[prefix + name] = value.to(tensors[prefix + name].dtype).contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})
