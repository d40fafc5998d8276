"""Sampler library: noise schedules, time grids, DDIM / PLMS / DPM-Solver(++) and ``eps_eff``.

Contract: a noise predictor is ``model(x, t, cond) -> eps`` with ``t`` a continuous-time tensor
``[B]`` in ``[0, 1]``; discrete DDPM schedules put training index ``n`` at ``t = (n + 1) / N``
(``discrete_model`` adapts a diffusers-style ``eps_fn(x, timestep, cond)``). No Lightning and no
quantization here. See ``docs/sampling.md``.
"""

from .analytic import GaussianData
from .ddim import DDIM
from .direction import step_with_direction
from .dpm_solver import DPMSolver, DPMSolverMultistep
from .errors import (
    GridError,
    ModelOutputError,
    ModelOutputTypeError,
    SamplingError,
    ScheduleError,
    SolverConfigError,
)
from .exponential import eps_eff_from_states, step_coefficients
from .grids import (
    SPACINGS,
    Grid,
    grid_from_timesteps,
    intermediate_times,
    singlestep_grid_from_timesteps,
    solver_grid,
    time_grid,
    validate_grid,
)
from .guidance import GuidedModel, classifier_free_guidance, guided_model
from .plms import PLMS
from .predictor import DiscreteModel, Evaluation, NoisePredictor, discrete_model
from .registry import SOLVER_NAMES, make_solver
from .sample import SampleResult, StepPoints, Trajectory, sample
from .schedules import BETA_SCHEDULES, DiscreteSchedule, NoiseSchedule, betas_from_config
from .solver import Solver, StepOutput, StepState

__all__ = [
    "BETA_SCHEDULES",
    "DDIM",
    "PLMS",
    "SOLVER_NAMES",
    "SPACINGS",
    "DPMSolver",
    "DPMSolverMultistep",
    "DiscreteModel",
    "DiscreteSchedule",
    "Evaluation",
    "GaussianData",
    "Grid",
    "GridError",
    "GuidedModel",
    "ModelOutputError",
    "ModelOutputTypeError",
    "NoisePredictor",
    "NoiseSchedule",
    "SampleResult",
    "SamplingError",
    "ScheduleError",
    "Solver",
    "SolverConfigError",
    "StepOutput",
    "StepPoints",
    "StepState",
    "Trajectory",
    "betas_from_config",
    "classifier_free_guidance",
    "discrete_model",
    "eps_eff_from_states",
    "grid_from_timesteps",
    "guided_model",
    "intermediate_times",
    "make_solver",
    "sample",
    "singlestep_grid_from_timesteps",
    "solver_grid",
    "step_coefficients",
    "step_with_direction",
    "time_grid",
    "validate_grid",
]
