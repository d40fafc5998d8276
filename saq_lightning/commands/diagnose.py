"""``python -m saq_lightning diagnose``: trajectory diagnostics of a quantized student against the
FP teacher (per-step distances at solver orders 1/2/3, straightness of the flow), as JSON, a PNG
plot and TensorBoard scalars.

    python -m saq_lightning diagnose --student naive:w4a4 --out runs/diagnose/naive_w4a4
    python -m saq_lightning diagnose --student runs/w4a4/last.ckpt --aligned_solver dpm2 --steps 10
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from jsonargparse import auto_cli

from saq_lightning.devices import choose_device
from saq_lightning.metrics.sample_generation import (
    condition_classes,
    guided_predictor,
    model_dtype,
)
from saq_lightning.metrics.trajectory_diagnostics import (
    log_to_tensorboard,
    save_diagnostics_plot,
    trajectory_diagnostics,
)
from saq_lightning.models import ModelSpec
from saq_lightning.outputs import clear_outputs, recorded_settings, refuse_existing
from saq_lightning.sampling import time_grid
from saq_lightning.seeding import evaluation_labels, evaluation_noise
from saq_lightning.students import StudentRef


def diagnose(
    out: str,
    student: str = "naive:w4a4",
    model: ModelSpec | None = None,
    num_samples: int = 64,
    steps: int | None = None,
    spacing: str = "time_uniform",
    guidance_scale: float | None = None,
    solver: str = "dpm3",
    orders: list[int] = [1, 2, 3],  # noqa: B006 - jsonargparse reads the default, never mutated
    aligned_solver: str = "dpm2",
    aligned_order: int | None = None,
    seed: int = 0,
    device: str = "auto",
    tensorboard: bool = True,
    overwrite: bool = False,
) -> dict:
    """Compare a student's sampling trajectories with the FP teacher's from the same x_T.

    Args:
        out: output folder (diagnostics.json, trajectory_diagnostics.png, tensorboard/).
        student: training checkpoint (.ckpt), integer export folder, or naive:<policy>.
        model: the teacher's model spec (configs/models/*.yaml); default: the digits teacher.
        num_samples: trajectories (class-balanced labels for class-conditional models).
        steps: solver steps (default: the spec's sampling steps, else 10).
        spacing: time-grid spacing.
        guidance_scale: CFG scale (default: the spec's, else 1).
        solver: solver family run at every order of ``orders`` (dpm3: DPM-Solver-1/2/3).
        orders: student (and FP) solver orders.
        aligned_solver: the teacher solver the student was aligned to (MOTA: dpm2).
        aligned_order: its order, if not the solver's default.
        seed: seed of x_T.
        device: auto, cpu, cuda, ...
        tensorboard: also write TensorBoard scalars under out/tensorboard.
        overwrite: replace an earlier run's outputs in ``out`` (otherwise they are refused: two
            runs would share one TensorBoard folder).
    """
    run_settings = json.loads(json.dumps(
        {k: v for k, v in locals().items() if k not in ("out", "overwrite")},
        default=lambda o: vars(o) if hasattr(o, "__dict__") else str(o)))
    folder = Path(out)
    outputs = [folder / "diagnostics.json", folder / "trajectory_diagnostics.png", folder / "tensorboard"]
    refuse_existing("diagnose", outputs, run_settings, recorded_settings(outputs[0]), overwrite)
    model = model if model is not None else ModelSpec(kind="digits")
    ref = StudentRef.parse(student)
    dev = choose_device(device)
    teacher = StudentRef.parse(None).load(model, dev)
    student_model = ref.load(model, dev, teacher=teacher)
    defaults = teacher.sampling_defaults
    steps = int(steps if steps is not None else defaults.get("steps", 10))
    scale = float(guidance_scale if guidance_scale is not None else defaults.get("guidance_scale", 1.0))
    if teacher.conditioner is not None and condition_classes(teacher) is None:
        raise ValueError("diagnose supports unconditional and class-conditional models (text needs prompts)")
    schedule = teacher.noise_schedule()
    idx = range(num_samples)
    classes = condition_classes(teacher)
    cond = teacher.prepare_cond(evaluation_labels(idx, classes).to(dev)) if classes is not None else None
    x_T = evaluation_noise(seed, idx, teacher.sample_shape).to(dev, model_dtype(teacher))
    diag = trajectory_diagnostics(
        guided_predictor(teacher, scale, schedule), guided_predictor(student_model, scale, schedule), x_T,
        time_grid(schedule, steps, spacing), schedule, cond=cond, solver=solver, orders=orders,
        aligned_solver=aligned_solver, aligned_order=aligned_order,
    )
    folder.mkdir(parents=True, exist_ok=True)
    clear_outputs(outputs)
    result = {"student": student, "model": model.name or model.kind, "steps": steps, "spacing": spacing,
              "guidance_scale": scale, "seed": seed, **diag.as_dict(), "settings": run_settings}
    (folder / "diagnostics.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"{student} vs FP: {num_samples} samples, {steps} steps ({spacing}), cfg {scale:g}"
    save_diagnostics_plot(diag, folder / "trajectory_diagnostics.png", title)
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(folder / "tensorboard")) as writer:
            log_to_tensorboard(diag, writer)
    for name, value in diag.summary().items():
        print(f"{name:40s} {value:.4f}")
    print(f"wrote {folder / 'diagnostics.json'} and {folder / 'trajectory_diagnostics.png'}")
    return result


def main(args: list[str]) -> None:
    torch.set_grad_enabled(False)
    auto_cli(diagnose, args=args, as_positional=False, exit_on_error=False)
