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

    python benchmarks/student_eps_error.py --run runs/quality_digits [more folders] [--solver dpm2 --steps 10]

Writes ``student_eps_error.json`` to ``benchmarks/results/``; the last line is
``eps_error grid: naive=... | mid: naive=... | mid_to_step_start: naive=...``. ``mid_to_step_start``
is the error at each intermediate point against FP's eps at the grid point its step started from:
what an ``fp_first_order`` PTQ student is reconstructed towards there (``--student NAME=CKPT`` adds
any saved student, PTQ ones included).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml
from quality_digits import source_commit

from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.metrics.digits_eval import class_balanced_inputs
from saq_lightning.metrics.sample_generation import guided_predictor
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.sampling import Trajectory, make_solver, sample, time_grid
from saq_lightning.sampling.predictor import select_batch
from saq_lightning.students import load_student

#: student name -> row folder (row key) of ``quality_digits.py``; both the row names of commit 14b2612
#: and today's are looked up
TRAINED = {"same_input": ("w4a4_same_input", "w4a4_same_input_cos_2nd_order_points"),
           "mixed_order": ("w4a4_mixed_order",), "mixstep": ("w4a4_mixed_order_mixstep",),
           "solver_aware_dpm2": ("w4a4_solver_aware_dpm_2",)}


def load_students(runs: list[Path], config: Path | None = None
                  ) -> tuple[DiffusionModel, dict[str, DiffusionModel], float]:
    """The FP teacher, the naive (calibrated) W4A4 student and the trained W4A4 students (training
    seed 0) found in ``runs`` (output folders of ``quality_digits.py``; the first with each row);
    a row none of them trained is left out with one printed line. ``config``: the training config
    of the teacher and the naive student (default: the first run's ``w4a4_naive`` config)."""
    config = config or next((r / "w4a4_naive" / "digits_w4a4.yaml" for r in runs
                             if (r / "w4a4_naive" / "digits_w4a4.yaml").is_file()), None)
    if config is None:
        raise FileNotFoundError(f"no w4a4_naive/digits_w4a4.yaml under {[str(r) for r in runs]}: point --run at "
                                "finished benchmarks/quality_digits.py outputs, or pass --config")
    guidance = float(yaml.safe_load(config.read_text())["model"]["init_args"].get("guidance_scale", 1.0))
    module = load_run_parts(["--config", str(config)]).setup
    module.calibrate_student()
    students = {"naive": module.student_model.eval()}
    for name, folders in TRAINED.items():
        found = [r / f / "run" / "checkpoints" / "last.ckpt" for r in runs for f in folders]
        checkpoint = next((c for c in found if c.is_file()), None)
        if checkpoint is None:
            print(f"note: no trained row {folders[0]!r} in {[str(r) for r in runs]}: left out")
            continue
        students[name] = load_student(checkpoint).eval()
    return module.teacher.eval(), students, guidance


def extra_students(specs: list[str]) -> dict[str, DiffusionModel]:
    """``NAME=CKPT`` pairs as loaded students (any policy: the error is of the guided prediction)."""
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            raise ValueError(f"--student {spec!r}: expected NAME=CKPT with an existing checkpoint file")
        out[name] = load_student(Path(path)).eval()
    return out


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
    parser.add_argument("--run", nargs="+", type=Path, default=[Path("runs/quality_digits")],
                        help="quality_digits.py output folder(s) (rows run by separate processes)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the training config of the teacher and the naive student (default: the runs' "
                             "w4a4_naive/digits_w4a4.yaml, whose teacher path must still exist)")
    parser.add_argument("--solver", default="dpm2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--name", default="student_eps_error", help="results file stem")
    parser.add_argument("--student", nargs="+", default=[], metavar="NAME=CKPT",
                        help="more students to measure, each a saved student checkpoint (e.g. a PTQ row's "
                             "<out>/ptq_<policy>_<tag>/student.ckpt)")
    args = parser.parse_args()
    teacher, students, scale = load_students(args.run, args.config)
    students.update(extra_students(args.student))
    students["FP"] = teacher  # 0 everywhere but mid_to_step_start: how far eps moves within a step
    trajectory, cond = fp_evaluations(teacher, args.solver, args.steps, scale, args.samples)
    predictors = {n: guided_predictor(m, scale) for n, m in students.items()}
    rows = []
    print(f"{'t':>8s} {'point':>6s} " + " ".join(f"{n:>12s}" for n in students)
          + "   (mid: error / error against FP's eps at the step's grid point)")
    start_eps = {}  # step -> FP's eps at the step's grid point (fp_first_order's target at its midpoint)
    for ev in trajectory.evaluations:
        # a step evaluates at its grid time; a higher-order solver adds points between grid times
        on_grid = bool(ev.t[0] == trajectory.times[ev.step].to(ev.t))
        c = select_batch(cond, ev.index, args.samples)
        eps = {n: p(ev.x, ev.t, c) for n, p in predictors.items()}
        errors = {n: float((e - ev.eps).norm() / ev.eps.norm()) for n, e in eps.items()}
        row = {"t": float(ev.t[0]), "step": ev.step, "point": "grid" if on_grid else "mid", "relative_error": errors}
        if on_grid:
            start_eps[ev.step] = ev.eps
        elif ev.step in start_eps:
            ref = start_eps[ev.step]
            row["relative_error_to_step_start"] = {n: float((e - ref).norm() / ref.norm()) for n, e in eps.items()}
        rows.append(row)
        cells = [f"{v:.4f}" + (f"/{row['relative_error_to_step_start'][n]:.4f}" if "relative_error_to_step_start" in row
                               else "") for n, v in errors.items()]
        print(f"{row['t']:8.4f} {row['point']:>6s} " + " ".join(f"{c:>12s}" for c in cells))
    means = {kind: {n: statistics.mean(r["relative_error"][n] for r in rows if r["point"] == kind) for n in students}
             for kind in ("grid", "mid") if any(r["point"] == kind for r in rows)}
    to_start = [r["relative_error_to_step_start"] for r in rows if "relative_error_to_step_start" in r]
    if to_start:
        means["mid_to_step_start"] = {n: statistics.mean(r[n] for r in to_start) for n in students}
    payload = {"run": [str(r) for r in args.run], "commit": source_commit(), "solver": args.solver, "steps": args.steps, "samples": args.samples,
               "guidance_scale": scale, "rows": rows, "mean_relative_error": means}
    out = Path(__file__).resolve().parent / "results" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    print("eps_error " + " | ".join(f"{kind}: " + " ".join(f"{n}={v:.3f}" for n, v in m.items())
                                    for kind, m in means.items()))


if __name__ == "__main__":
    main()
