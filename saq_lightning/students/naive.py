"""``naive:<policy>`` (e.g. ``naive:w4a4``): plain post-training quantization of the spec's UNet
with that policy preset, calibrated on FP sampling trajectories: the baseline every trained
student is compared with (:func:`naive_student`)."""

from __future__ import annotations

import torch

from saq_lightning.metrics.sample_generation import condition_classes, guided_predictor
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.sampling import make_solver, sample, time_grid
from saq_lightning.seeding import evaluation_labels, evaluation_noise


@torch.no_grad()
def naive_student(
    teacher: DiffusionModel, policy: str = "w4a4", calibration_samples: int = 64, seed: int = 12345,
    method: str | None = None,
) -> DiffusionModel:
    """``teacher`` with its UNet quantized by ``policy`` and calibrated (weight ranges and
    activation ranges per timestep bucket, by ``method`` or the policy's) on the states of FP
    trajectories under the model's default sampler."""
    from saq_lightning.quant import calibrate, quantize_model

    student, _ = quantize_model(teacher.unet, policy, warn=False)
    calibrate(student, naive_calibration_batches(teacher, calibration_samples, seed), act_method=method,
              weight_method=method)
    return teacher.with_unet(student.eval())


@torch.no_grad()
def naive_calibration_batches(teacher: DiffusionModel, n: int = 64, seed: int = 12345) -> list[dict[str, torch.Tensor]]:
    """UNet call arguments at every state of ``n`` FP trajectories (DDIM, the model's default
    steps and guidance), one batch per state; conditional models get the conditional and the null
    condition. (A trained student calibrates on ``alignment.calibration.calibration_batches``:
    the run's solver and grid, shuffled rows, null rows only under guidance.)"""
    defaults = teacher.sampling_defaults
    steps, scale = int(defaults.get("steps", 20)), float(defaults.get("guidance_scale", 1.0))
    schedule = teacher.noise_schedule()
    device = next(teacher.parameters()).device
    classes = condition_classes(teacher)
    idx = range(n)
    cond = evaluation_labels(idx, classes).to(device) if classes is not None else None
    if teacher.conditioner is not None and cond is None:
        raise ValueError("naive students of text models need prompts for calibration: calibrate them yourself")
    encoded = teacher.prepare_cond(cond) if cond is not None else None
    grid = time_grid(schedule, steps, "time_uniform")
    points = sample(guided_predictor(teacher, scale, schedule), evaluation_noise(seed, idx, teacher.sample_shape).to(device),
                    grid, make_solver("ddim", schedule), cond=encoded, return_trajectory=True).trajectory.points()
    batches = []
    for state, timestep in zip(points.x_s.split(n), schedule.model_timestep(points.s).to(device).split(n)):
        batch: dict[str, torch.Tensor] = {"sample": state, "timestep": timestep}
        if teacher.conditioner is not None:
            null = teacher.prepare_cond(teacher.null_cond(n, device=device))
            batch["sample"] = torch.cat([state, state])
            batch["timestep"] = torch.cat([timestep, timestep])
            batch[teacher.conditioner.unet_argument] = teacher.conditioner(torch.cat([encoded, null]))
        batches.append(batch)
    return batches
