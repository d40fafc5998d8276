"""Optimizer parameter groups for a student: LoRA, weight steps, activation tables.

The lineage (EfficientDM / SA-QLoRA) trains three kinds of tensors at very different rates:

* LoRA ``A``/``B``: learning rate proportional to the layer's mean weight step (a layer whose
  weights sit on a coarse grid may move further). Here ``lr`` is the rate of a layer whose mean
  step equals the mean over all layers: ``lr_l = lr * mean_step_l / mean_l(mean_step_l)``.
  ``lora_lr_mode="constant"`` gives every LoRA tensor ``lr``; ``"scale_aware"`` gives layer
  ``l`` the absolute rate ``mean_step_l / lora_lr_divisor`` (the author's development code:
  ``/ 2500``), whatever ``lr``.
* weight step sizes and zero points: ``weight_step_lr`` (~1e-6);
* activation (step, zero-point) tables: ``act_lr`` (~5e-4).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .attention import QuantAttnProcessor
from .layers import QuantLayer


def param_groups(
    student: nn.Module,
    lr: float = 5e-4,
    *,
    weight_step_lr: float = 1e-6,
    act_lr: float = 5e-4,
    lora_lr_mode: str = "weight_step",
    weight_decay: float = 0.0,
    lora_lr_divisor: float = 2500.0,
) -> list[dict[str, Any]]:
    """Groups (each with ``name``, ``params``, ``lr``, ``weight_decay``) for a torch optimizer.

    Every trainable parameter appears in exactly one group; a trainable parameter that is none
    of the three kinds raises ``ValueError`` (the teacher must stay frozen).
    """
    if lora_lr_mode not in ("weight_step", "constant", "scale_aware"):
        raise ValueError(f"lora_lr_mode must be 'weight_step', 'constant' or 'scale_aware', got "
                         f"{lora_lr_mode!r}")
    layers = [(n, m) for n, m in student.named_modules() if isinstance(m, QuantLayer)]
    seen: set[int] = set()

    def take(params) -> list[nn.Parameter]:
        out = [p for p in params if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in out)
        return out

    groups: list[dict[str, Any]] = []
    lora_layers = [(n, m) for n, m in layers if m.lora is not None]
    if lora_lr_mode in ("weight_step", "scale_aware") and lora_layers:
        if not all(m.w_quant.is_initialised for _, m in lora_layers):
            raise RuntimeError(f"lora_lr_mode={lora_lr_mode!r} needs initialised weight quantizers: "
                               f"run calibrate first")
        with torch.no_grad():
            steps = {n: float(m.w_quant.effective()[0].mean()) for n, m in lora_layers}
        ref = sum(steps.values()) / len(steps)
        for n, m in lora_layers:
            rate = steps[n] / lora_lr_divisor if lora_lr_mode == "scale_aware" else lr * steps[n] / ref
            groups.append({"name": f"lora/{n}", "params": take(m.lora.parameters()),
                           "lr": rate, "weight_decay": weight_decay})
    elif lora_layers:
        groups.append({"name": "lora", "params": take(p for _, m in lora_layers for p in m.lora.parameters()),
                       "lr": lr, "weight_decay": weight_decay})
    groups.append({"name": "weight_steps", "params": take(p for _, m in layers for p in m.w_quant.parameters()),
                   "lr": weight_step_lr, "weight_decay": 0.0})
    act = [p for _, m in layers for p in m.a_quant.parameters()]
    act += [p for m in student.modules() if isinstance(m, QuantAttnProcessor) for p in m.parameters()]
    groups.append({"name": "act_tables", "params": take(act), "lr": act_lr, "weight_decay": 0.0})

    stray = [n for n, p in student.named_parameters() if p.requires_grad and id(p) not in seen]
    if stray:
        raise ValueError(f"trainable parameters outside LoRA/quantizers (teacher not frozen?): {stray[:5]}")
    return [g for g in groups if g["params"]]
