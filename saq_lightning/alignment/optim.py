"""Optimizer, learning-rate schedule and gradient statistics of the student."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saq_lightning.quant import param_groups

from .settings import OptimizerSettings


@dataclass
class LinearDecay:
    """LR factor at optimizer step ``n``: linear warm-up over ``warmup`` steps from ``1/warmup``
    to 1, then linear decay reaching ``final`` at step ``total`` (``decay="constant"``: 1).

    A callable object (not a lambda) so that ``LambdaLR.state_dict`` records its settings.
    """

    total: int
    warmup: int = 0
    final: float = 0.0
    decay: str = "linear"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.decay == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return 1.0 - (1.0 - self.final) * progress


def build_optimizer(
    student: nn.Module, settings: OptimizerSettings, total_steps: float
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the quant core's parameter groups and its per-step LR schedule."""
    groups = param_groups(student, lr=settings.lr, weight_step_lr=settings.weight_step_lr,
                          act_lr=settings.act_lr, lora_lr_mode=settings.lora_lr_mode,
                          weight_decay=settings.weight_decay,
                          lora_lr_divisor=settings.lora_lr_divisor)
    for group in groups:  # param_groups never decays the activation tables; the author's code does
        if group["name"] == "act_tables":
            group["weight_decay"] = settings.act_weight_decay
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, betas=settings.betas, eps=settings.eps,
                                  weight_decay=settings.weight_decay)
    total = int(total_steps) if math.isfinite(total_steps) else 10**9
    factor = LinearDecay(total, settings.warmup_steps, settings.final_lr_factor, settings.decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def group_kind(name: str) -> str:
    """``lora/unet.down_blocks.0...`` -> ``lora``; ``act_tables`` -> ``act_tables``."""
    return name.split("/", 1)[0] if name else "default"


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Mean learning rate per kind of parameter group (``lora``, ``weight_steps``, ``act_tables``)."""
    sums: dict[str, list[float]] = {}
    for group in optimizer.param_groups:
        sums.setdefault(group_kind(str(group.get("name", ""))), []).append(float(group["lr"]))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def grad_total_norm(params: Iterable[nn.Parameter]) -> Tensor | None:
    """2-norm of all gradients together (``None`` when no parameter has one)."""
    norms = [p.grad.detach().float().norm(2) for p in params if p.grad is not None]
    if not norms:
        return None
    return torch.linalg.vector_norm(torch.stack(norms), 2)
