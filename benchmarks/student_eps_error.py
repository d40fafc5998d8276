"""Where the quality benchmark's students are accurate: guided-eps error on the FP sampler's queries.

Replays every guided evaluation the FP digits teacher makes while sampling with ``--solver`` at
``--steps`` (CFG from the training config; the sampler's own record, ``return_trajectory``) through
each W4A4 student of a finished
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

from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.metrics.digits_eval import class_balanced_inputs
from saq_lightning.metrics.sample_generation import guided_predictor
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.sampling import Trajectory, make_solver, sample, time_grid
from saq_lightning.sampling.predictor import select_batch
from saq_lightning.students import load_student

TRAINED = {"same_input": "w4a4_same_input", "mixed_order": "w4a4_mixed_order",
           "mixstep": "w4a4_mixed_order_mixstep"}


def load_students(run: Path) -> tuple[DiffusionModel, dict[str, DiffusionModel], float]:
    """The FP teacher, the naive (calibrated) W4A4 student and the trained W4A4 students of ``run``."""
    config = run / "w4a4_naive" / "digits_w4a4.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: point --run at a finished benchmarks/quality_digits.py output")
    guidance = float(yaml.safe_load(config.read_text())["model"]["init_args"].get("guidance_scale", 1.0))
    module = load_run_parts(["--config", str(config)]).setup
    module.calibrate_student()
    students = {"naive": module.student_model.eval()}
    for name, folder in TRAINED.items():
        checkpoint = run / folder / "run" / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{checkpoint} not found: the quality run did not train row {folder!r}")
        students[name] = load_student(checkpoint).eval()
    return module.teacher.eval(), students, guidance


def fp_evaluations(teacher: DiffusionModel, solver: str, steps: int, scale: float, n: int,
                   seed: int = 0) -> tuple[Trajectory, Any]:
    """The FP model's trajectory (with every guided evaluation) from the quality benchmark's x_T
    and labels, and the encoded conditions."""
    schedule = teacher.noise_schedule()
    x_T, labels = class_balanced_inputs(teacher, n, seed)
    cond = teacher.prepare_cond(labels)
    result = sample(guided_predictor(teacher, scale, schedule), x_T, time_grid(schedule, steps, "time_uniform"),
                    make_solver(solver, schedule), cond=cond, return_trajectory=True)
    return result.trajectory, cond


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/quality_digits")
    parser.add_argument("--solver", default="dpm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    teacher, students, scale = load_students(Path(args.run))
    trajectory, cond = fp_evaluations(teacher, args.solver, args.steps, scale, args.samples)
    predictors = {n: guided_predictor(m, scale) for n, m in students.items()}
    rows = []
    print(f"{'t':>8s} {'point':>6s} " + " ".join(f"{n:>12s}" for n in students))
    for ev in trajectory.evaluations:
        # a step evaluates at its grid time; a higher-order solver adds points between grid times
        on_grid = bool(ev.t[0] == trajectory.times[ev.step].to(ev.t))
        c = select_batch(cond, ev.index, args.samples)
        errors = {n: float((p(ev.x, ev.t, c) - ev.eps).norm() / ev.eps.norm()) for n, p in predictors.items()}
        rows.append({"t": float(ev.t[0]), "step": ev.step, "point": "grid" if on_grid else "mid",
                     "relative_error": errors})
        print(f"{rows[-1]['t']:8.4f} {rows[-1]['point']:>6s} " + " ".join(f"{v:12.4f}" for v in errors.values()))
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
