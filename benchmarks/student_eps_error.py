"""Where the quality benchmark's students are accurate: guided-eps error on the FP sampler's queries.

Replays every network call the FP digits teacher makes while sampling with ``--solver`` at
``--steps`` (CFG from the training config) through each W4A4 student of a finished
``benchmarks/quality_digits.py`` run, and reports the relative error of the guided prediction
``||eps_student - eps_FP|| / ||eps_FP||`` per queried timestep, split into the points of the
first-order grid (the only timesteps a fixed-grid student is trained at) and the intermediate
points a higher-order solver adds. The same-input student's training target *is* the FP guided
eps at the grid points, so its column reads directly as "how well it learned, where"; the
mixed-order students are trained towards ``eps_eff`` (the teacher's higher-order step direction),
which differs from eps by design, most at small t. This is the diagnostic behind the README's
reading of the quality table: a student trained on a fixed grid gains on it and loses between its
points, where a 2nd/3rd-order solver evaluates it.

    python benchmarks/student_eps_error.py --run runs/quality_digits [--solver dpm2 --steps 10]

Writes ``student_eps_error.json`` to ``benchmarks/results/``; the last line is
``eps_error grid: naive=... | mid: naive=...``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from saq_lightning.commands.generate import load_run
from saq_lightning.lightning.student_loading import load_student
from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.models.diffusion_model import DiffusionModel

TRAINED = {"same_input": "w4a4_same_input", "mixed_order": "w4a4_mixed_order",
           "mixstep": "w4a4_mixed_order_mixstep"}


def load_students(run: Path) -> tuple[DiffusionModel, dict[str, DiffusionModel], float]:
    """The FP teacher, the naive (calibrated) W4A4 student and the trained W4A4 students of ``run``."""
    config = run / "w4a4_naive" / "digits_w4a4.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: point --run at a finished benchmarks/quality_digits.py output")
    guidance = float(yaml.safe_load(config.read_text())["model"]["init_args"].get("guidance_scale", 1.0))
    module = load_run(["--config", str(config)]).model
    module.calibrate_student()
    students = {"naive": module.student_model.eval()}
    for name, folder in TRAINED.items():
        checkpoint = run / folder / "run" / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found: the quality run did not train row {folder!r}")
        students[name] = load_student(checkpoint).eval()
    return module.teacher.eval(), students, guidance


def recorded_calls(teacher: DiffusionModel, setting: SamplerSetting, n: int) -> list[tuple[Tensor, ...]]:
    """Every ``conditional_eps(x, timestep, cond)`` call (with its output) of sampling ``n`` images."""
    calls: list[tuple[Tensor, ...]] = []
    network = teacher.conditional_eps

    def recording(x: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        eps = network(x, timestep, cond)
        calls.append((x, timestep, cond, eps))
        return eps

    teacher.conditional_eps = recording  # an instance attribute: the predictor is built per call
    try:
        sample_class_balanced(teacher, n, setting)
    finally:
        del teacher.conditional_eps
    return calls


def guided(eps: Tensor, scale: float) -> Tensor:
    """The CFG combination of a batched ``[conditional; unconditional]`` call (scale 1: as is)."""
    if scale == 1.0:
        return eps
    eps_c, eps_u = eps.chunk(2)
    return eps_u + scale * (eps_c - eps_u)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/quality_digits")
    parser.add_argument("--solver", default="dpm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    teacher, students, scale = load_students(Path(args.run))
    grid_calls = recorded_calls(teacher, SamplerSetting("dpm1", args.steps, "time_uniform", scale), 10)
    grid = {round(float(t.flatten()[0])) for _, t, _, _ in grid_calls}
    calls = recorded_calls(teacher, SamplerSetting(args.solver, args.steps, "time_uniform", scale), args.samples)
    rows = []
    print(f"{'timestep':>8s} {'point':>6s} " + " ".join(f"{n:>12s}" for n in students))
    for x, timestep, cond, eps in calls:
        target = guided(eps, scale)
        t = round(float(timestep.flatten()[0]))
        errors = {n: float((guided(m.conditional_eps(x, timestep, cond), scale) - target).norm() / target.norm())
                  for n, m in students.items()}
        rows.append({"timestep": t, "point": "grid" if t in grid else "mid", "relative_error": errors})
        print(f"{t:8d} {rows[-1]['point']:>6s} " + " ".join(f"{v:12.4f}" for v in errors.values()))
    means = {kind: {n: statistics.mean(r["relative_error"][n] for r in rows if r["point"] == kind) for n in students}
             for kind in ("grid", "mid") if any(r["point"] == kind for r in rows)}
    payload = {"run": args.run, "solver": args.solver, "steps": args.steps, "samples": args.samples,
               "guidance_scale": scale, "rows": rows, "mean_relative_error": means}
    out = Path(__file__).resolve().parent / "results" / "student_eps_error.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    print("eps_error " + " | ".join(f"{kind}: " + " ".join(f"{n}={v:.3f}" for n, v in m.items())
                                    for kind, m in means.items()))


if __name__ == "__main__":
    main()
