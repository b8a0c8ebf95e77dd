"""Gated fit: the benign top space of one wide writer, exact eigen-decomposition vs randomized, side by side.

    python -m benchmarks.gate_fit_time            # Qwen2.5-0.5B's down_proj input: d = 4864, 12 000 benign rows
    python -m benchmarks.gate_fit_time --smoke    # d = 512 (seconds)

The null-space fit removes the top (1-ρ) of the uncentred benign second moment's
eigen-space from every wide writer. A full eigen-decomposition of the d×d moment
was what made Qwen's gated fit slow; `benign_top_space` finds the same space by a
randomized subspace iteration. Both run here on the same synthetic activations
(a steeply falling spectrum, as real ones have, and a harmful signal in its
tail), timed in one process; the result also gives the principal-angle agreement
of the two spaces and the held-out AUROC of the read vector each one yields.
"""

from __future__ import annotations

import time

from ._common import benchmark_parser, write_result


def main(argv=None) -> int:
    import torch

    from rosi_vllm.extraction.gated import auroc, benign_top_space, fit_read_vector

    args = benchmark_parser(__doc__).parse_args(argv)
    d, n, n_harm, rho = (512, 3000, 300, 0.7) if args.smoke else (4864, 12000, 1500, 0.7)
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(d, d, generator=gen)).Q
    scales = torch.logspace(1, -3, d)

    def sample(rows):
        return (torch.randn(rows, d, generator=gen) * scales) @ basis.T

    benign, held_benign = sample(n), sample(n // 4)
    signal = 0.5 * basis[:, -1]  # a harmful feature in the benign tail
    harmful, held_harmful = sample(n_harm) + signal, sample(n_harm // 4) + signal
    k = d - int(rho * d)
    rows = {}
    for name, max_dim in (("exact", d), ("randomized", 0)):
        started = time.perf_counter()
        top = benign_top_space(benign, k, exact_max_dim=max_dim)
        basis_seconds = time.perf_counter() - started
        started = time.perf_counter()
        h = fit_read_vector(harmful, benign, rho=rho, lam=1.0, top_space=top)
        rows[name] = {"top_space_seconds": round(basis_seconds, 2), "solve_seconds": round(time.perf_counter() - started, 2),
                      "held_out_auroc": auroc(held_harmful @ h, held_benign @ h), "top": top}
        print(f"{name}: top space {basis_seconds:.1f} s, solve {rows[name]['solve_seconds']:.1f} s, "
              f"held-out AUROC {rows[name]['held_out_auroc']:.4f}", flush=True)
    cosines = torch.linalg.svdvals(rows["exact"].pop("top").T @ rows["randomized"].pop("top"))
    payload = {"torch_threads": torch.get_num_threads(), "d": d, "benign_rows": n, "harmful_rows": n_harm, "rho": rho, "k": k, **rows,
               "speedup": round(rows["exact"]["top_space_seconds"] / rows["randomized"]["top_space_seconds"], 2),
               "principal_cosines": {"min": float(cosines.min()), "p05": float(cosines.quantile(0.05))}}
    path = write_result("gate_fit_time" + ("_smoke" if args.smoke else ""), payload, args.out_dir)
    print(f"speedup {payload['speedup']}x; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
