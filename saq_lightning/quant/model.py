"""The quantized student: ``quantize_model(unet, policy) -> (student, report)``.

The student is a *new* module tree (a deep copy of the UNet's structure whose memo maps every
parameter and buffer to itself), so the teacher is left untouched and shares its frozen tensors
with the student: no second FP copy of any weight. Conv2d/Linear modules chosen by the policy
are replaced by :class:`~saq_lightning.quant.layers.QuantConv2d` /
:class:`~saq_lightning.quant.layers.QuantLinear` around the original module.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .attention import QuantAttnProcessor, is_diffusers_attention
from .bucket_map import BucketMap
from .kernels import check_kernels
from .layers import QuantLayer, wrapper_for
from .policy import LayerPlan, QuantPolicy, as_policy, resolve_policy
from .report import QuantReport, build_report
from .timestep_quantizer import TimestepActQuantizer, TimestepContext


class QuantizedUNet(nn.Module):
    """Wraps a (module-swapped) diffusers UNet; same ``forward`` signature as the UNet.

    ``forward(sample, timestep, *args, **kwargs)`` maps ``timestep`` (model-timestep scale,
    ``0..N-1``, per sample or scalar) to per-sample activation buckets for this call only, through
    the student's :class:`~saq_lightning.quant.bucket_map.BucketMap` (``bucket_map``; set by
    :meth:`set_bucket_map` from the trained grids, part of ``state_dict`` as extra state, of
    checkpoints and of exports; default: the grid-free value rule).
    Unknown attributes (``config``, ``dtype``, ...) are looked up on the wrapped UNet.
    """

    def __init__(self, unet: nn.Module, policy: QuantPolicy, context: TimestepContext) -> None:
        super().__init__()
        self.unet = unet
        self.policy = policy
        self.context = context
        self.bucket_map = BucketMap.uniform(policy.n_buckets, policy.num_train_timesteps)

    def set_bucket_map(self, bucket_map: BucketMap) -> None:
        """Bind the student to the step-to-bucket tables of its trained grids."""
        if (bucket_map.n_buckets, bucket_map.num_train_timesteps) != (
                self.n_buckets, self.num_train_timesteps):
            raise ValueError(
                f"bucket map for n_buckets={bucket_map.n_buckets}, num_train_timesteps="
                f"{bucket_map.num_train_timesteps}; the student has n_buckets={self.n_buckets}, "
                f"num_train_timesteps={self.num_train_timesteps}")
        self.bucket_map = bucket_map

    def get_extra_state(self) -> dict:
        return {"bucket_map": self.bucket_map.to_dict()}

    def set_extra_state(self, state: dict) -> None:
        d = state.get("bucket_map") if isinstance(state, dict) else None
        if d is not None and d.get("grids"):
            self.set_bucket_map(BucketMap.from_dict(d))
        else:
            self.bucket_map = BucketMap.uniform(self.n_buckets, self.num_train_timesteps)

    # -- time -----------------------------------------------------------------------------------
    @property
    def n_buckets(self) -> int:
        return self.policy.n_buckets

    @property
    def num_train_timesteps(self) -> int:
        return self.policy.num_train_timesteps

    def bucket_index(self, timestep: Tensor | float, batch_size: int, device: torch.device | None = None) -> Tensor:
        """Per-sample buckets ``[batch_size]`` of model timesteps (scalar or ``[batch_size]``)."""
        t = torch.as_tensor(timestep, device=device).reshape(-1)
        if t.numel() != batch_size:
            if t.numel() != 1:
                raise ValueError(f"got {t.numel()} timesteps for a batch of {batch_size}")
            t = t.expand(batch_size)
        return self.bucket_map.lookup(t)

    @contextmanager
    def timestep_context(self, timestep: Tensor | float, batch_size: int | None = None) -> Iterator[Tensor]:
        """Select activation buckets for code that calls submodules directly (e.g. block-wise
        reconstruction). ``forward`` uses it around the UNet call."""
        t = torch.as_tensor(timestep)
        bs = batch_size if batch_size is not None else max(1, t.numel())
        device = t.device if isinstance(timestep, Tensor) else self._device()
        idx = self.bucket_index(timestep, bs, device)
        with self.context.active(idx):
            yield idx

    def _device(self) -> torch.device:
        for t in itertools.chain(self.parameters(), self.buffers()):
            return t.device
        return torch.device("cpu")

    def forward(self, sample: Tensor, timestep: Tensor | float, *args: Any, **kwargs: Any) -> Any:
        idx = self.bucket_index(timestep, sample.shape[0], sample.device)
        with self.context.active(idx):
            return self.unet(sample, timestep, *args, **kwargs)

    # -- introspection ----------------------------------------------------------------------------
    def quant_layers(self) -> Iterator[tuple[str, QuantLayer]]:
        for name, m in self.unet.named_modules():
            if isinstance(m, QuantLayer):
                yield name, m

    def set_quant_kernels(self, choice: str) -> None:
        """How every quantized layer runs its quantizer pieces: ``auto`` (fused Triton kernels on
        CUDA, eager elsewhere), ``triton`` or ``eager`` (:mod:`~saq_lightning.quant.kernels`)."""
        check_kernels(choice)
        for _, layer in self.quant_layers():
            layer.set_kernels(choice)

    def act_quantizers(self) -> Iterator[tuple[str, TimestepActQuantizer]]:
        for name, m in self.unet.named_modules():
            if isinstance(m, TimestepActQuantizer):
                yield name, m

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            unet = self.__dict__.get("_modules", {}).get("unet")
            if unet is None or name.startswith("_"):
                raise
            return getattr(unet, name)


def quantize_model(
    unet: nn.Module, policy: QuantPolicy | str | Mapping[str, Any] = "w4a4", *, warn: bool = True,
    kernels: str = "auto",
) -> tuple[QuantizedUNet, QuantReport]:
    """Build the quantized student of ``unet`` according to ``policy``.

    ``kernels`` (``quant_kernels``): ``auto`` runs the quantizer pieces in fused Triton kernels on
    CUDA and eagerly elsewhere; ``triton`` / ``eager`` force one (``triton`` where Triton cannot
    run raises :class:`~saq_lightning.quant.kernels.QuantKernelsError`). Not part of the policy:
    both give the same student (same values, gradients to summation order).

    The teacher ``unet`` is frozen in place (``requires_grad=False``; its tensors are shared with
    the student) and otherwise left untouched. Trainable: LoRA and quantizer parameters only.
    Quantizers are not initialised yet: run :func:`~saq_lightning.quant.calibrate` next.
    """
    if isinstance(unet, QuantizedUNet) or any(isinstance(m, QuantLayer) for m in unet.modules()):
        raise TypeError("quantize_model expects a full-precision UNet, got an already quantized model")
    policy = as_policy(policy)
    check_kernels(kernels)
    resolution = resolve_policy(unet, policy, warn=warn)
    unet.requires_grad_(False)
    student = build_student(unet, policy, resolution.layers)
    student.set_quant_kernels(kernels)
    report = build_report(student.unet, policy, resolution)
    return student, report


def _shared_deepcopy(module: nn.Module) -> nn.Module:
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def build_student(unet: nn.Module, policy: QuantPolicy, layers: list[LayerPlan]) -> QuantizedUNet:
    """Deep-copy ``unet``'s structure (sharing tensors) and swap in the planned quantized layers."""
    tree = _shared_deepcopy(unet)
    context = TimestepContext()
    for plan in layers:
        parent_name, _, child = plan.name.rpartition(".")
        parent = tree.get_submodule(parent_name) if parent_name else tree
        base = getattr(parent, child)
        layer = wrapper_for(base)(base, context, plan)
        for sub in (layer.w_quant, layer.a_quant, layer.lora):  # new tensors only; base stays shared
            if sub is not None:
                sub.to(device=base.weight.device)
        setattr(parent, child, layer)
    if policy.quantize_attention_matmuls:
        for name, m in list(tree.named_modules()):
            if is_diffusers_attention(m):
                proc = QuantAttnProcessor(context, policy, name)
                m.set_processor(proc.to(next(m.parameters()).device))
    return QuantizedUNet(tree, policy, context)
