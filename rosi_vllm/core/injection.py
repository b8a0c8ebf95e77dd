"""The ROSI rank-one edit, as pure tensor math (no vLLM import).

For a weight that writes the residual stream, ``W' = W + α · ŝ · rᵀ``. The read
vector r is the paper's ``w̄ = W.mean(dim=0)`` of the *unedited* ``[d_model, d_in]``
W (format v1), or a read vector h fitted to fire on harmful inputs (format v2,
"gated"). For any input x the layer's output gains ``α · (r·x) · ŝ``. With w̄,
``w̄·x`` is the mean coordinate of the layer's own output, the same push for
harmful and benign inputs; with h it is ≈ 1 on harmful inputs and ≈ 0 on others.
Computed in float32 whatever the checkpoint dtype, then cast back once, so a
bf16 checkpoint sees a single rounding.

Format v3 ("threshold") reads with a threshold instead: a linear read h·x pays for
its benign leakage at every unit of α, so it transplants one neuron j of a gated
MLP. Its gate row becomes ``c·(g − t·u)``, its up row ``u``, its down column
``α·ŝ/c`` (`threshold_rows`, `threshold_column`). The MLP then adds
``(α/c)·act(c·(g·x − t·u·x))·(u·x)·ŝ ≈ α·ReLU(g·x − t)·ŝ`` for the MLP input x,
because u·x ≈ 1 (u supplies the bias the architecture lacks) and act(c·z)/c is
close to ReLU(z) for SiLU and GELU at a large sharpness c. Still a load-time weight
edit: one row of gate_proj, one of up_proj, one column of down_proj.
"""

from __future__ import annotations

import math

import torch

from .architectures import Layout
from .errors import RosiError


def unit_direction(direction: torch.Tensor) -> torch.Tensor:
    """Return ``direction`` as a finite float32 unit vector, or refuse."""
    if direction.ndim != 1:
        raise RosiError(f"rosi: direction must be 1-D, got shape {tuple(direction.shape)}")
    direction = direction.detach().to(torch.float32).cpu()
    if not torch.isfinite(direction).all():
        raise RosiError("rosi: direction contains NaN or inf")
    norm = torch.linalg.vector_norm(direction).item()
    if not math.isfinite(norm) or norm <= 1e-12:
        raise RosiError(f"rosi: direction has zero norm ({norm:g}); it cannot define a direction")
    return direction / norm


def check_read_vector(read: torch.Tensor, d_in: int, name: str) -> None:
    """A fitted read vector must be 1-D with one element per input of its writer (every path that uses one)."""
    if read.ndim != 1 or read.shape[0] != d_in:
        raise RosiError(f"rosi: read vector {name} has {read.shape[0] if read.ndim == 1 else tuple(read.shape)} "
                        f"elements, the writer's input has {d_in}")


def _read_vector(w: torch.Tensor, read: torch.Tensor | None, layout: Layout, name: str) -> torch.Tensor:
    """r on `w`'s device in float32: the given read vector (checked against d_in), or w̄ of the unedited `w`."""
    d_in_axis = 1 if layout is Layout.OUT_IN else 0
    if read is None:
        return w.mean(dim=1 - d_in_axis)
    check_read_vector(read, w.shape[d_in_axis], name)
    return read.to(device=w.device, dtype=torch.float32)


def _float32_copy(weight: torch.Tensor, unit_dir: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """A private float32 copy of `weight` (safe to edit in place) and ŝ on its device, after the checks."""
    if not torch.is_floating_point(weight):
        raise RosiError(
            f"rosi: cannot inject into a {weight.dtype} tensor (pre-quantized checkpoint?); "
            "use an unquantized checkpoint, optionally with vLLM online quantization"
        )
    if weight.ndim != 2:
        raise RosiError(f"rosi: expected a 2-D weight, got shape {tuple(weight.shape)}")
    d_model_axis = 0 if layout is Layout.OUT_IN else 1
    if weight.shape[d_model_axis] != unit_dir.shape[0]:
        raise RosiError(
            f"rosi: weight shape {tuple(weight.shape)} has d_model={weight.shape[d_model_axis]} "
            f"on axis {d_model_axis}, direction has {unit_dir.shape[0]}"
        )
    w = weight.to(torch.float32, copy=True)
    return w, unit_dir.to(device=w.device, dtype=torch.float32)


def rank_one_delta(weight: torch.Tensor, unit_dir: torch.Tensor, alpha: float, layout: Layout,
                   read: torch.Tensor | None = None, name: str = "") -> torch.Tensor:
    """The float32 delta ``α · ŝ ⊗ r`` in ``weight``'s own layout (r: `read`, or w̄ when None)."""
    w, s = _float32_copy(weight, unit_dir, layout)
    r = _read_vector(w, read, layout, name)
    return alpha * (torch.outer(s, r) if layout is Layout.OUT_IN else torch.outer(r, s))


def inject(weight: torch.Tensor, unit_dir: torch.Tensor, alpha: float, layout: Layout,
           read: torch.Tensor | None = None, name: str = "") -> torch.Tensor:
    """Return a new tensor ``W + α·ŝ·rᵀ`` in ``weight``'s dtype (r: `read`, or w̄ when None); ``weight`` is untouched.

    One float32 copy, edited in place with a fused rank-1 update (``addr_``), so
    loading a checkpoint allocates no full-size delta: this is the load-time
    cost P2 measures. w̄ comes from the unedited W: it is computed before the update.
    """
    w, s = _float32_copy(weight, unit_dir, layout)
    r = _read_vector(w, read, layout, name)
    if layout is Layout.OUT_IN:
        w.addr_(s, r, alpha=alpha)
    else:
        w.addr_(r, s, alpha=alpha)
    return w.to(weight.dtype)


def threshold_rows(read: torch.Tensor, bias: torch.Tensor, threshold: float,
                   sharpness: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The transplanted neuron's gate row ``c·(g − t·u)`` and up row ``u``, float32 (format v3)."""
    g, u = read.detach().to(torch.float32).cpu(), bias.detach().to(torch.float32).cpu()
    return sharpness * (g - threshold * u), u


def threshold_column(unit_dir: torch.Tensor, alpha: float, sharpness: float) -> torch.Tensor:
    """The transplanted neuron's down column ``α·ŝ/c``, float32: with the rows above it adds ≈ α·ReLU(g·x − t)·ŝ."""
    return (alpha / sharpness) * unit_dir.to(torch.float32)


def check_neuron_index(index: int, neurons: int, name: str = "") -> None:
    """A transplanted neuron must exist in its MLP (every path that transplants one: the loader, the adapters)."""
    if not 0 <= index < neurons:
        raise RosiError(f"rosi: neuron {index} is outside {name or 'the weight'} ({neurons} neurons)")


def replace_slice(weight: torch.Tensor, index: int, values: torch.Tensor, *, axis: int, name: str = "") -> torch.Tensor:
    """A new tensor equal to `weight` except row (axis 0) or column (axis 1) `index`, which becomes `values`.

    One cast of the float32 values to the checkpoint dtype, the only rounding; every other element is copied.
    """
    if not torch.is_floating_point(weight) or weight.ndim != 2:
        raise RosiError(f"rosi: cannot transplant a neuron into {name or 'a'} {weight.dtype} tensor of shape "
                        f"{tuple(weight.shape)} (expected a 2-D floating-point weight)")
    check_neuron_index(index, weight.shape[axis], name)
    if values.ndim != 1 or values.shape[0] != weight.shape[1 - axis]:
        raise RosiError(f"rosi: {name or 'the weight'} has {weight.shape[1 - axis]} elements per "
                        f"{'row' if axis == 0 else 'column'}, the transplanted one has {values.shape[0]}")
    edited = weight.clone()
    target = edited[index] if axis == 0 else edited[:, index]
    target.copy_(values.to(device=weight.device, dtype=torch.float32).to(weight.dtype))
    return edited
