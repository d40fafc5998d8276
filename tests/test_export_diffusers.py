"""An export folder runs in diffusers: the runtime UNet (``quant.runtime.load_runtime``) is swapped
into a ``DiffusionPipeline`` with a diffusers scheduler configured from the model's schedule, and
samples what our own sampler samples with the same runtime at the same timesteps.

No adapter is needed: the runtime UNet takes diffusers' call (``sample, timestep, class_labels=``
or ``encoder_hidden_states=``, a scalar or per-sample ``timestep``) and returns the wrapped UNet's
output (``.sample``), and it has the ``config``/``dtype``/``device`` a pipeline reads.

Tolerances. Both loops call the same integer UNet and differ only in the scheduler arithmetic
(diffusers keeps its tables in float32, ours are float64). One step from the same state agrees to
1e-5 relative (measured at most 1.0e-6; calling the UNet one timestep late gives 3.5e-2 over the
run). Over a whole run a quantized flow is chaotic: a 1e-7 difference can move an activation that
lies at a rounding boundary to the neighbouring code, and the flip spreads. Measured over 10 steps
(W4A4 digits export, 8 samples): DDIM 5 samples agree to 2e-5, two to 2e-3 and, with fake-quant
arithmetic, one to 4e-2; DPM-Solver++(2M) 7 to 8e-6 and, with int8, one to 3e-2; diffusers' own
DDIMPipeline (W8A8, 4 samples) all to 2e-5. So a whole run is checked per sample: at least half
agree to 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import DIGITS_SCHEDULE_CONFIG

from saq_lightning.commands.export import export
from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant.runtime import load_runtime
from saq_lightning.sampling import (
    DDIM,
    DiscreteSchedule,
    DPMSolverMultistep,
    discrete_model,
    grid_from_timesteps,
    sample,
)

STEPS = 10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """``export --student naive:w4a4`` of the embedded class-conditional digits UNet."""
    return export("naive:w4a4", str(tmp_path_factory.mktemp("digits") / "export"), calibration_samples=8,
                  calibration_method="minmax", device="cpu")


def unconditional_digits_unet(folder):
    """The digits teacher's unconditional model (its null class 10) as an unconditional UNet2DModel:
    the null class's embedding is added to the time embedding's last bias, which is exactly what
    conditioning on it does (``emb = time_emb + class_emb``). A trained model, so that its samples
    lie mostly inside [-1, 1] and the postprocessed images (clipped to [0, 1]) can be compared."""
    from diffusers import UNet2DModel

    teacher = build_model(ModelSpec(kind="digits")).unet
    config = {k: v for k, v in teacher.config.items() if not k.startswith("_")}
    unet = UNet2DModel(**{**config, "num_class_embeds": None})
    state = {k: v for k, v in teacher.state_dict().items() if not k.startswith("class_embedding.")}
    state["time_embedding.linear_2.bias"] = state["time_embedding.linear_2.bias"] + teacher.class_embedding.weight[10]
    unet.load_state_dict(state)
    unet.save_pretrained(str(folder))


@pytest.fixture(scope="module")
def unconditional_export(tmp_path_factory):
    """``export --student naive:w8a8`` of an unconditional UNet, for diffusers' own DDIMPipeline."""
    root = tmp_path_factory.mktemp("uncond")
    unconditional_digits_unet(root / "unet")
    spec = ModelSpec(kind="diffusers_folder", name="digits_null_class", weights=str(root / "unet"),
                     schedule=dict(DIGITS_SCHEDULE_CONFIG))
    folder = export("naive:w8a8", str(root / "export"), model=spec, calibration_samples=8,
                    calibration_method="minmax", device="cpu")
    return folder, spec


def class_conditional_pipeline(unet, scheduler):
    """A ``DiffusionPipeline`` whose loop is diffusers' standard one, with class labels."""
    from diffusers import DiffusionPipeline

    class Pipeline(DiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        @torch.no_grad()
        def __call__(self, x_T: torch.Tensor, class_labels: torch.Tensor, num_inference_steps: int
                     ) -> list[torch.Tensor]:
            """The states of the run, ``x_T`` first."""
            self.scheduler.set_timesteps(num_inference_steps)
            states = [x_T * self.scheduler.init_noise_sigma]
            for t in self.progress_bar(self.scheduler.timesteps):
                model_input = self.scheduler.scale_model_input(states[-1], t)
                eps = self.unet(model_input, t, class_labels=class_labels).sample
                states.append(self.scheduler.step(eps, t, states[-1]).prev_sample)
            return states

    pipeline = Pipeline(unet, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def ours(unet, schedule_config, x_T, timesteps, solver_name, cond=None, return_trajectory=False):
    """Our sampler with the same runtime UNet over diffusers' timesteps (final point t = 0)."""
    schedule = DiscreteSchedule.from_config(**schedule_config)

    def eps_fn(x, timestep, c):
        with torch.no_grad():
            return unet(x, timestep, class_labels=c).sample

    solver = DDIM(schedule) if solver_name == "ddim" else DPMSolverMultistep(schedule, order=2, algorithm="dpmsolver++")
    return sample(discrete_model(eps_fn, schedule), x_T, grid_from_timesteps(timesteps, 1000, "zero"), solver,
                  cond=cond, return_trajectory=return_trajectory)


def per_sample_rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)


@pytest.mark.parametrize("arithmetic", ["int8", "fake"])
@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_a_class_conditional_export_samples_in_a_diffusers_pipeline_as_with_our_sampler(
        digits_export, arithmetic, solver):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    schedule_config = build_model(ModelSpec(kind="digits"), load_weights=False).schedule_config
    unet = load_runtime(digits_export, arithmetic=arithmetic, device="cpu")
    if solver == "ddim":
        scheduler = DDIMScheduler(clip_sample=False, **schedule_config)
    else:
        scheduler = DPMSolverMultistepScheduler(solver_order=2, algorithm_type="dpmsolver++",
                                                final_sigmas_type="zero", **schedule_config)
    labels = torch.arange(8) % 10
    x_T = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    pipeline = class_conditional_pipeline(unet, scheduler)
    theirs = pipeline(x_T, labels, STEPS)
    family = "ddim" if solver == "ddim" else "dpm"
    mine = ours(unet, schedule_config, x_T, pipeline.scheduler.timesteps, family, labels, return_trajectory=True)
    states = mine.trajectory.states  # x_T, then the state after each step
    assert len(theirs) == len(states) == STEPS + 1
    if family == "ddim":  # a first-order step has no history: each step checked from diffusers' own state
        timesteps = pipeline.scheduler.timesteps
        one_step = [rel_err(_one_ddim_step(unet, schedule_config, theirs[i], timesteps, i, labels), theirs[i + 1])
                    for i in range(STEPS)]
        print(f"{arithmetic} {solver}: one-step relative errors max {max(one_step):.1e}")
        assert max(one_step) < 1e-5
    per_sample = per_sample_rel_err(states[-1], theirs[-1])
    print(f"{arithmetic} {solver}: whole-run relative error per sample {[f'{e:.0e}' for e in per_sample.tolist()]}")
    assert torch.isfinite(theirs[-1]).all()
    assert (per_sample < 1e-4).sum() >= len(per_sample) / 2


def _one_ddim_step(unet, schedule_config, x, timesteps, i, labels):
    """Our DDIM step ``i`` of diffusers' grid, from ``x``."""
    schedule = DiscreteSchedule.from_config(**schedule_config)
    grid = grid_from_timesteps(timesteps, 1000, "zero")[i:i + 2]

    def eps_fn(x, timestep, c):
        with torch.no_grad():
            return unet(x, timestep, class_labels=c).sample

    return sample(discrete_model(eps_fn, schedule), x, grid, DDIM(schedule), cond=labels)


def test_an_unconditional_export_runs_in_diffusers_ddim_pipeline(unconditional_export):
    """diffusers' own ``DDIMPipeline`` (noise, loop, postprocessing all diffusers') with the runtime
    UNet, against our DDIM from the same noise, postprocessed the same way (``x / 2 + 0.5`` clipped)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    folder, spec = unconditional_export
    unet = load_runtime(folder, arithmetic="int8", device="cpu")
    schedule_config = dict(spec.schedule)
    pipeline = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False, **schedule_config))
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=4, generator=torch.Generator().manual_seed(3), num_inference_steps=STEPS,
                      output_type="np").images
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    mine = (ours(unet, schedule_config, x_T, pipeline.scheduler.timesteps, "ddim") / 2 + 0.5).clamp(0, 1)
    theirs = torch.from_numpy(images).permute(0, 3, 1, 2)
    per_sample = per_sample_rel_err(theirs, mine)
    print(f"DDIMPipeline vs ours: relative error per sample {[f'{e:.0e}' for e in per_sample.tolist()]}")
    assert images.shape == (4, 8, 8, 1)
    inside = ((mine > 0) & (mine < 1)).float().mean().item()
    print(f"pixels strictly inside (0, 1): {inside:.2f}")
    assert inside > 0.5  # not a comparison of clipped values
    assert (per_sample < 1e-4).sum() >= len(per_sample) / 2
