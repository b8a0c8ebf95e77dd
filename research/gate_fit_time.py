"""Gated fit: the benign top space of one wide writer, three ways, side by side in one process.

    python -m research.gate_fit_time            # Qwen2.5-0.5B's down_proj input: d = 4864, 12 000 benign rows
    python -m research.gate_fit_time --smoke    # d = 512 (seconds)

The null-space fit removes the top (1-ρ) of the uncentred benign second moment's
eigen-space from every wide writer, and on Qwen that decomposition was most of
the fit's time. Timed here on the same synthetic activations (a steeply falling
spectrum, as real ones have, and a harmful signal in its tail):

- ``float64_full``: torch's full float64 eigen-decomposition (the first fit);
- ``randomized``: torch.svd_lowrank on the moment (the second);
- ``benign_top_space``: what the fit uses now, LAPACK's MRRR driver for the top
  k eigenvectors only, in float32 for writers this wide.

Each also gives the principal-angle agreement of its space with the float64 one
and the held-out AUROC of the read vector it yields.
"""

from __future__ import annotations

import time

from ._common import study_parser, write_result


def main(argv=None) -> int:
    import torch

    from rosi_vllm.extraction.read_fit import auroc, benign_top_space, fit_read_vector

    args = study_parser(__doc__, __spec__.name).parse_args(argv)
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
    def float64_full():  # each way forms the moment itself, as benign_top_space does
        moment = benign.T @ benign / n
        return torch.linalg.eigh(moment.double()).eigenvectors.flip(1)[:, :k]

    def randomized():
        moment = benign.T @ benign / n
        torch.manual_seed(0)
        return torch.svd_lowrank(moment, q=min(d, k + 32), niter=4)[2][:, :k].double()

    rows, spaces = {}, {}
    for name, method in (("float64_full", float64_full), ("randomized", randomized),
                         ("benign_top_space", lambda: benign_top_space(benign, k))):
        started = time.perf_counter()
        spaces[name] = method()
        basis_seconds = time.perf_counter() - started
        started = time.perf_counter()
        h = fit_read_vector(harmful, benign, rho=rho, lam=1.0, top_space=spaces[name])
        rows[name] = {"top_space_seconds": round(basis_seconds, 2), "solve_seconds": round(time.perf_counter() - started, 2),
                      "held_out_auroc": auroc(held_harmful @ h, held_benign @ h)}
        cosines = torch.linalg.svdvals(spaces["float64_full"].T @ spaces[name])
        rows[name]["principal_cosines_vs_float64"] = {"min": float(cosines.min()), "p05": float(cosines.quantile(0.05))}
        print(f"{name}: top space {basis_seconds:.1f} s, solve {rows[name]['solve_seconds']:.1f} s, "
              f"held-out AUROC {rows[name]['held_out_auroc']:.4f}", flush=True)
    payload = {"torch_threads": torch.get_num_threads(), "d": d, "benign_rows": n, "harmful_rows": n_harm, "rho": rho,
               "k": k, **rows,
               "speedup_vs_float64_full": round(rows["float64_full"]["top_space_seconds"]
                                                / rows["benign_top_space"]["top_space_seconds"], 2),
               "speedup_vs_randomized": round(rows["randomized"]["top_space_seconds"]
                                              / rows["benign_top_space"]["top_space_seconds"], 2)}
    path = write_result("gate_fit_time" + ("_smoke" if args.smoke else ""), payload, args.out_dir, args.command)
    print(f"benign_top_space: {payload['speedup_vs_float64_full']}x float64_full, "
          f"{payload['speedup_vs_randomized']}x randomized; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
