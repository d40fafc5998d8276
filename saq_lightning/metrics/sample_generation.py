"""Generating evaluation samples: the sampler setting, seeded per-sample noise, class-balanced
labels / prompts, and one batch from noise to decoded images.

Sample ``i`` depends only on ``(seed, i)``: its initial noise comes from its own generator, its
label is ``classes[i % K]`` (the evaluation stream of ``saq_lightning/seeding.py``) (class-balanced: 50 000 samples of a 1000-class model give 50 per
class) and its prompt is ``prompts[i % P]``. So the result does not depend on the batch size, the
number of ranks, or on being resumed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.sampling import discrete_model, guided_model, make_solver, sample, time_grid
from saq_lightning.sampling.predictor import NoisePredictor


@dataclass(frozen=True)
class SamplerSetting:
    """How a model is sampled.

    Attributes:
        solver: a name from ``saq_lightning.sampling.SOLVER_NAMES`` (ddim, plms, dpm1-3, dpm2m,
            dpm3m, dpm++2s, dpm++2m, ...).
        steps: solver steps (a singlestep order-k step costs k model calls).
        spacing: time-grid spacing (``time_uniform``, ``logSNR``, ``time_quadratic``, ``leading``).
        guidance_scale: classifier-free guidance scale (1: none).
        order: overrides the solver's default order (e.g. ``dpm3`` with ``order=1`` is DPM-Solver-1).
        eta: DDIM stochasticity (``ddim`` only).
    """

    solver: str = "ddim"
    steps: int = 50
    spacing: str = "time_uniform"
    guidance_scale: float = 2.0
    order: int | None = None
    eta: float = 0.0

    def label(self) -> str:
        order = f", order {self.order}" if self.order is not None else ""
        eta = f", eta {self.eta:g}" if self.eta else ""
        return f"{self.solver}@{self.steps} ({self.spacing}, cfg {self.guidance_scale:g}{order}{eta})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def solver_options(self) -> dict[str, Any]:
        if self.eta and self.solver != "ddim":
            raise ValueError(f"eta is a DDIM option; solver {self.solver!r} is deterministic")
        return {"eta": self.eta} if self.solver == "ddim" and self.eta else {}


def guided_predictor(model: DiffusionModel, guidance_scale: float, schedule=None) -> NoisePredictor:
    """``model`` as the samplers' noise predictor for *encoded* conditions (``model.prepare_cond``):
    the null condition is encoded once, not at every step (text encoders are not cheap)."""
    base = discrete_model(model.conditional_eps, schedule or model.noise_schedule())
    if guidance_scale == 1.0 or model.conditioner is None:
        return base
    null = model.prepare_cond(model.null_cond(1, device=_device(model)))
    return guided_model(base, guidance_scale, null)


def _device(model: DiffusionModel) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(model: DiffusionModel) -> torch.dtype:
    """The dtype the noise network computes in (of its first floating parameter)."""
    for p in model.unet.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def condition_classes(model: DiffusionModel) -> list[int] | None:
    """The real class labels of a class-conditional model (the null class excluded), else ``None``."""
    cond = model.conditioner
    if cond is None or not hasattr(cond, "null_class"):
        return None
    if hasattr(cond, "embedding"):
        total = cond.embedding.num_embeddings
    else:
        total = cond.num_classes
    return [c for c in range(total) if c != cond.null_class]


def is_text_model(model: DiffusionModel) -> bool:
    return model.conditioner is not None and hasattr(model.conditioner, "tokenize")


@torch.no_grad()
def generate_images(
    model: DiffusionModel,
    x_T: Tensor,
    cond: Tensor | None,
    setting: SamplerSetting,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample from ``x_T`` (on the model's device) with raw conditions ``cond`` and decode:
    images ``[B, C, H, W]`` float32 in ``[-1, 1]`` on the CPU."""
    schedule = model.noise_schedule()
    solver = make_solver(setting.solver, schedule, **setting.solver_options())
    grid = time_grid(schedule, setting.steps, setting.spacing)
    device = _device(model)
    encoded = model.prepare_cond(cond.to(device)) if cond is not None else None
    predictor = guided_predictor(model, setting.guidance_scale, schedule)
    x0 = sample(predictor, x_T.to(device, model_dtype(model)), grid, solver, cond=encoded,
                order=setting.order, generator=generator)
    return model.decode(x0).float().clamp(-1.0, 1.0).cpu()
