"""Reconstruct one block: AdaRound rounding, then (optionally) LSQ activation step sizes.

Data-parallel: every iteration draws the same global minibatch of calibration samples on every
rank (one seeded generator per block); each rank computes the loss *sum* over the samples it owns,
divided by the global minibatch size, and the gradients are summed over ranks before the step.
The rounding regulariser is added on rank 0 only. One rank and N ranks therefore take the same
optimizer steps (up to the order of floating-point summation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..rounding import AdaRound
from ..state import set_quant_state
from ..timestep_quantizer import TimestepContext
from .blocks import Block
from .comm import Comm
from .objective import per_row_loss
from .recording import BlockCache
from .settings import ReconstructionSettings

Progress = Callable[[int, dict[str, float]], None]


@dataclass
class BlockResult:
    name: str
    loss_before: float
    loss_after: float
    loss_after_weights: float
    round_reg: float
    hard_fraction: float
    iters: int
    act_iters: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (iter, rec, reg)
    record_seconds: float = 0.0  # recording the block's inputs and FP outputs (set by the caller)
    optimize_seconds: float = 0.0  # rounding + activation-step iterations and the evaluations
    iterate_seconds: float = 0.0  # the iterations alone (what scales with ``iters``/``act_iters``)
    cache_bytes: int = 0  # this rank's recorded rows (inputs, targets)

    def scalars(self) -> dict[str, float]:
        return {"loss_before": self.loss_before, "loss_after": self.loss_after,
                "loss_after_weights": self.loss_after_weights, "round_reg": self.round_reg,
                "hard_fraction": self.hard_fraction}


def _local_positions(global_ids: Tensor, comm: Comm) -> Tensor:
    mine = global_ids[global_ids % comm.world_size == comm.rank]
    return torch.div(mine, comm.world_size, rounding_mode="floor")


def _block_loss(block: Block, cache: BlockCache, positions: Tensor, context: TimestepContext,
                settings: ReconstructionSettings, device: torch.device) -> Tensor:
    """Sum over the rows of ``positions`` of the per-row loss."""
    if positions.numel() == 0:
        return torch.zeros((), device=device)
    args, kwargs, target, bucket = cache.rows(positions, device)
    ctx = context.active(bucket) if bucket is not None else nullcontext()
    with ctx:
        out = block.module(*args, **kwargs)
    flat = [x for x in torch.utils._pytree.tree_flatten(out)[0] if isinstance(x, Tensor)]
    return per_row_loss(flat, target, settings.w_mse, settings.w_cos).sum()


@torch.no_grad()
def evaluate_block(block: Block, cache: BlockCache, n_global: int, context: TimestepContext,
                   settings: ReconstructionSettings, comm: Comm, device: torch.device) -> float:
    """Mean per-sample loss of the block over all calibration samples (every rank's share)."""
    ids = torch.arange(n_global)
    local = _local_positions(ids, comm)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for chunk in local.split(settings.record_batch_size):
        total += _block_loss(block, cache, chunk, context, settings, device).double()
    total = comm.all_reduce_sum(total)
    return float(total) / n_global


def _sync_grads(params: list[Tensor], comm: Comm) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if comm.distributed:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        comm.all_reduce_sum(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def _minibatch(gen: torch.Generator, n_global: int, batch: int) -> Tensor:
    return torch.randperm(n_global, generator=gen)[: min(batch, n_global)]


def reconstruct_block(
    block: Block,
    cache: BlockCache,
    n_global: int,
    context: TimestepContext,
    settings: ReconstructionSettings,
    comm: Comm | None = None,
    device: torch.device | str = "cpu",
    block_index: int = 0,
    progress: Progress | None = None,
) -> BlockResult:
    """Learn the rounding of every quantized layer of ``block`` (then its activation steps).

    Expects the layers' quantizers initialised (``quant.calibrate``). Leaves the block with hard
    rounding (``layer.rounding`` holds the decisions), weights and activations quantized.
    """
    started = time.perf_counter()
    comm = comm or Comm()
    device = torch.device(device)
    layers = [layer for _, layer in block.layers]
    with set_quant_state(block.module, weight=True, act=True):
        loss_before = evaluate_block(block, cache, n_global, context, settings, comm, device)

    # -- weights: AdaRound --------------------------------------------------------------------
    for layer in layers:
        if not layer.integer:
            layer.rounding = AdaRound.from_weight(layer.merged_weight(), layer.w_quant)
    roundings = [layer.rounding for layer in layers if layer.rounding is not None]
    params = [r.V for r in roundings]
    curve: list[tuple[int, float, float]] = []
    round_reg = 0.0
    gen = torch.Generator().manual_seed(settings.seed * 100003 + block_index)
    iterate_seconds = 0.0
    if settings.iters and params:
        t0 = time.perf_counter()
        opt = torch.optim.Adam(params, lr=settings.lr)
        denom = float(min(settings.batch_size, n_global) * cache.rows_per_sample)
        with set_quant_state(block.module, weight=True, act=False):
            for it in range(settings.iters):
                ids = _minibatch(gen, n_global, settings.batch_size)
                rec = _block_loss(block, cache, _local_positions(ids, comm), context, settings, device) / denom
                beta = settings.beta(it)
                reg = torch.zeros((), device=device)
                if beta is not None and comm.rank == 0:
                    reg = settings.rounding_weight * sum(r.regulariser(beta) for r in roundings)
                block.module.zero_grad(set_to_none=True)
                for p in params:
                    p.grad = None
                total = rec + reg
                if total.requires_grad:  # a rank without rows in this minibatch contributes zeros
                    total.backward()
                _sync_grads(params, comm)
                opt.step()
                if it % settings.log_every == 0 or it == settings.iters - 1:
                    stats = torch.stack([rec.detach().double(), reg.detach().double()])
                    comm.all_reduce_sum(stats)
                    round_reg = float(stats[1])
                    curve.append((it, float(stats[0]), round_reg))
                    if progress is not None:
                        progress(it, {"rec": float(stats[0]), "reg": round_reg})
        iterate_seconds += time.perf_counter() - t0
    hard = [r.hard_fraction() for r in roundings]
    numel = [r.V.numel() for r in roundings]
    hard_fraction = sum(h * n for h, n in zip(hard, numel, strict=True)) / max(1, sum(numel))
    for r in roundings:
        r.harden()
    block.module.zero_grad(set_to_none=True)
    with set_quant_state(block.module, weight=True, act=True):
        loss_after_weights = evaluate_block(block, cache, n_global, context, settings, comm, device)

    # -- activations: LSQ step sizes in the per-timestep tables ------------------------------------
    act_iters = settings.act_iters if settings.learn_act_steps else 0
    act_params = [p for layer in layers if layer.a_quant.bits < 16 for p in (layer.a_quant.step,)]
    if act_iters and act_params:
        t0 = time.perf_counter()
        opt = torch.optim.Adam(act_params, lr=settings.act_lr)
        denom = float(min(settings.batch_size, n_global) * cache.rows_per_sample)
        with set_quant_state(block.module, weight=True, act=True):
            for it in range(act_iters):
                ids = _minibatch(gen, n_global, settings.batch_size)
                rec = _block_loss(block, cache, _local_positions(ids, comm), context, settings, device) / denom
                block.module.zero_grad(set_to_none=True)
                if rec.requires_grad:
                    rec.backward()
                _sync_grads(act_params, comm)
                opt.step()
                with torch.no_grad():
                    for p in act_params:
                        p.clamp_(min=1e-8)
                if progress is not None and (it % settings.log_every == 0 or it == act_iters - 1):
                    progress(settings.iters + it, {"act_rec": float(rec.detach())})
        iterate_seconds += time.perf_counter() - t0
        block.module.zero_grad(set_to_none=True)
    with set_quant_state(block.module, weight=True, act=True):
        loss_after = evaluate_block(block, cache, n_global, context, settings, comm, device)
    return BlockResult(block.name, loss_before, loss_after, loss_after_weights, round_reg,
                       hard_fraction, settings.iters, act_iters, curve,
                       optimize_seconds=time.perf_counter() - started, iterate_seconds=iterate_seconds,
                       cache_bytes=cache.nbytes())


def block_state(student: Any, block: Block) -> dict[str, Tensor]:
    """The trainable state of ``block``'s layers (rounding decisions, quantizer tables)."""
    from ..state import trainable_state_dict

    prefixes = tuple(f"unet.{name}." for name, _ in block.layers)
    return {k: v.detach().cpu().clone() for k, v in trainable_state_dict(student).items() if k.startswith(prefixes)}
