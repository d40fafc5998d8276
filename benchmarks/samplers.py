"""Sampler benchmark on an analytic problem: error and wall time per sample for every solver.

Gaussian data (exact noise predictor, exact probability-flow solution; see
``saq_lightning.sampling.analytic``), linear-beta DDPM schedule, float64. For every solver at
5/10/20/50 steps on a ``time_quadratic`` grid (t from 1 to 1/1000): RMS error of the final
sample against the exact solution, model evaluations per sample and wall time per sample (the
analytic model is nearly free, so the time is the solver's own overhead). Convergence orders are
least-squares slopes of log(error) against log(steps) at 40/80/160 steps on uniform-logSNR grids.

    .venv/bin/python benchmarks/samplers.py [--out benchmarks/results/samplers.json]

Prints a table, writes JSON, and ends with one line ``orders name=slope ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from saq_lightning.sampling import (
    SOLVER_NAMES,
    DiscreteSchedule,
    GaussianData,
    make_solver,
    sample,
    time_grid,
)

TABLE_STEPS = (5, 10, 20, 50)
FIT_STEPS = (40, 80, 160)
VARIANTS = {name: (name, {}) for name in SOLVER_NAMES}
VARIANTS["dpm3m-exact"] = ("dpm3m", {"exact_third_order": True})
VARIANTS["dpm++3m-exact"] = ("dpm++3m", {"exact_third_order": True})


class CountingModel:
    def __init__(self, inner):
        self.inner, self.rows = inner, 0

    def __call__(self, x, t, cond=None):
        self.rows += x.shape[0]
        return self.inner(x, t, cond)


def problem(batch: int, dim: int):
    sch = DiscreteSchedule.from_config("linear", 1e-4, 2e-2, 1000)
    data = GaussianData(sch, torch.linspace(-1, 1, dim, dtype=torch.float64),
                        torch.linspace(0.3, 2.0, dim, dtype=torch.float64))
    x_T = torch.randn(batch, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return sch, data, x_T


def run(solver, data, x_T, grid, repeats: int = 1):
    model = CountingModel(data)
    best = math.inf
    for _ in range(repeats):
        model.rows = 0
        start = time.perf_counter()
        out = sample(model, x_T, grid, solver)
        best = min(best, time.perf_counter() - start)
    b = x_T.shape[0]
    exact = data.flow(x_T, grid[0].expand(b), grid[-1].expand(b))
    return (out - exact).pow(2).mean().sqrt().item(), model.rows / b, best / b


def fit_order(steps, errors) -> float:
    xs, ys = [math.log(n) for n in steps], [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "samplers.json"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sch, data, x_T = problem(args.batch, args.dim)

    rows, orders = [], {}
    print(f"{'solver':14s} {'steps':>5s} {'NFE':>5s} {'rms error':>10s} {'us/sample':>10s}")
    for label, (name, options) in VARIANTS.items():
        solver = make_solver(name, sch, **options)
        for steps in TABLE_STEPS:
            err, nfe, sec = run(solver, data, x_T, time_grid(sch, steps, "time_quadratic"), repeats=5)
            rows.append({"solver": label, "steps": steps, "nfe": nfe, "rms_error": err, "seconds_per_sample": sec})
            print(f"{label:14s} {steps:5d} {nfe:5.0f} {err:10.2e} {sec * 1e6:10.1f}")
        fit_errors = [run(solver, data, x_T, time_grid(sch, n, "logSNR"))[0] for n in FIT_STEPS]
        orders[label] = fit_order(FIT_STEPS, fit_errors)

    result = {
        "problem": {"data": "Gaussian, mean linspace(-1, 1), std linspace(0.3, 2)", "dim": args.dim,
                    "batch": args.batch, "schedule": "linear betas 1e-4..2e-2, N=1000", "dtype": "float64"},
        "table_grid": "time_quadratic, t 1 -> 1/1000",
        "fit_grid": "logSNR, t 1 -> 1/1000",
        "fit_steps": list(FIT_STEPS),
        "rows": rows,
        "orders": orders,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    print("orders " + " ".join(f"{k}={v:.1f}" for k, v in orders.items()))


if __name__ == "__main__":
    main()
