"""Fit a read vector that fires on harm from a writer's harmful and benign inputs, and score how well it
separates them (held-out AUROC and quantiles): the math both the gated and the threshold fits use.

Fits (`fit_read_vector`):
- ``nullspace``: AlphaSteer's null-space regression (arXiv 2506.07022). P spans the
  bottom-ρ eigenvectors of the *uncentred* benign second moment, and
  ``h = P (P A_hᵀA_h P + λP)⁺ P A_hᵀ 1``: rank one by construction and no bias,
  because benign inputs (their mean included) fall outside P. λ is relative to
  the mean eigenvalue of ``P A_hᵀA_h P`` so one value serves every writer.
- ``meandiff``: the cheap baseline ``h ∝ (I − m̂m̂ᵀ)(μ_harm − μ_benign)``, m̂ the unit benign mean.
Either way h is then scaled so the median harmful ``h·a`` on the fit data is 1
(the regression undershoots it), which makes α comparable across writers.
"""

from __future__ import annotations

import math

import torch

FITS = ("nullspace", "meandiff")


#: writers this wide or narrower get the benign spectrum from a float64 eigen-decomposition; wider ones
#: (Qwen's 4864-wide down_proj input) from a float32 one (`python -m research.gate_fit_time` times it
#: beside a full float64 decomposition and the randomized range finder it replaced)
FLOAT64_BASIS_MAX_DIM = 2048


def benign_top_space(benign: torch.Tensor, k: int, *, float64_max_dim: int = FLOAT64_BASIS_MAX_DIM) -> torch.Tensor:
    """Orthonormal ``[d_in, k]`` (float64): the `k` directions of the uncentred benign second moment
    ``A_bᵀA_b / n`` with the largest eigenvalues, descending. The null-space fit's P is their complement.

    The moment is formed once per writer and shared by every ρ and λ tried. Only its top `k`
    eigenvectors are computed (LAPACK's MRRR driver), in float64 up to `float64_max_dim` and in
    float32 above: activation spectra fall steeply, so float32 rounding moves only the split near
    the ρ boundary, where the eigenvalues are already tiny beside the top ones.
    """
    import scipy.linalg

    d = benign.shape[1]
    k = max(0, min(k, d - 1))
    if k == 0:
        return torch.zeros(d, 0, dtype=torch.float64)
    moment = benign.float().T @ benign.float() / benign.shape[0]
    if d <= float64_max_dim:
        moment = moment.double()
    _, vectors = scipy.linalg.eigh(moment.numpy(), subset_by_index=[d - k, d - 1], driver="evr",
                                   check_finite=False)
    return torch.from_numpy(vectors[:, ::-1].copy()).double()


def fit_read_vector(harmful: torch.Tensor, benign: torch.Tensor, *, method: str = "nullspace", rho: float = 0.7,
                    lam: float = 0.1, top_space: torch.Tensor | None = None) -> torch.Tensor:
    """h for one writer from its harmful and benign inputs ``[n, d_in]``; scaled so the harmful median of h·a is 1.

    ``top_space``: `benign_top_space(benign, k)` with ``k ≥ d_in − ⌊ρ·d_in⌋`` when the caller already has it.
    The null-space regression ``h = P (P A_hᵀA_h P + rP)⁺ P A_hᵀ 1``, with P the complement of the
    benign top space and the ridge r = λ × the mean eigenvalue of ``P A_hᵀA_h P`` over P's dimensions,
    is solved with ``B = A_h P`` in whichever form is smaller: ``Bᵀ (BBᵀ + rI)⁻¹ 1`` (n_h × n_h) or
    ``(BᵀB + rI)⁻¹ Bᵀ1`` (d × d); both equal the expression above.
    """
    if method not in FITS:
        raise ValueError(f"unknown fit {method!r}; known: {FITS}")
    if method == "meandiff":
        a_h, a_b = harmful.double(), benign.double()
        m_hat = a_b.mean(0) / a_b.mean(0).norm()
        diff = a_h.mean(0) - a_b.mean(0)
        h = diff - (diff @ m_hat) * m_hat
    else:
        d = harmful.shape[1]
        kept = max(1, int(rho * d))  # bottom-ρ: the directions benign inputs hardly use
        if top_space is not None and top_space.shape[1] < d - kept:
            raise ValueError(f"top_space has {top_space.shape[1]} columns, ρ={rho} needs {d - kept}")
        top = benign_top_space(benign, d - kept) if top_space is None else top_space[:, : d - kept]
        a_h = harmful.double()
        b = a_h - (a_h @ top) @ top.T
        trace = float((b * b).sum())
        if trace / kept <= 1e-12:  # harmful inputs have no component outside the benign span
            return torch.zeros(d)
        ridge = lam * trace / kept
        ones = torch.ones(b.shape[0], dtype=b.dtype)
        if b.shape[0] <= d:
            gram = b @ b.T
            h = b.T @ torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=b.dtype), ones)
        else:
            gram = b.T @ b
            h = torch.linalg.solve(gram + ridge * torch.eye(d, dtype=b.dtype), b.T @ ones)
    scores = harmful.double() @ h
    median = scores.median()
    if not torch.isfinite(median) or median <= 0:
        return torch.zeros(harmful.shape[1])  # this writer cannot gate: it reads no harmful signal
    return (h / median).float()


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(score of a positive > score of a negative), ties counted half: the Mann-Whitney AUROC."""
    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    scores = torch.cat([positive, negative]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # average ranks over ties
    unique, inverse = torch.unique(scores, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    ranks = (sums / counts)[inverse]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def gate_statistics(h: torch.Tensor, harmful: torch.Tensor, benign: torch.Tensor,
                    benign_generated: torch.Tensor) -> dict:
    """How well ``h·a`` separates held-out harmful inputs from benign prompt and generated-answer inputs."""
    s_h, s_b, s_g = harmful.float() @ h, benign.float() @ h, benign_generated.float() @ h
    q = torch.tensor([0.5, 0.95, 0.999])

    def quantiles(x):
        return x.float().quantile(q).tolist() if len(x) else [math.nan] * 3

    h_q, b_q, g_q = quantiles(s_h), quantiles(s_b), quantiles(s_g)
    return {
        "auroc": auroc(s_h, torch.cat([s_b, s_g])),
        "auroc_prompt": auroc(s_h, s_b),
        "auroc_generated": auroc(s_h, s_g),
        "harmful_median": h_q[0],
        "benign_p95": b_q[1],
        "benign_p999": b_q[2],
        "generated_p95": g_q[1],
        "generated_p999": g_q[2],
        "benign_max_abs": float(torch.cat([s_b, s_g]).abs().max()) if len(s_b) + len(s_g) else math.nan,
    }
