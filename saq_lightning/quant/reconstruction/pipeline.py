"""Reconstruct a whole student block by block, resumably (the library behind ``ptq``).

Folder layout (``state_dir``)::

    meta.json              what the run is (settings, teacher and policy identity): a rerun with
                           another configuration is refused instead of mixing two students
    calibration.pt         the student's trainable state after the initial (L_p) calibration
    blocks/NNN.pt          per finished block: its layers' trainable state (hard rounding
                           decisions, activation tables) and its losses

A rerun loads ``calibration.pt`` and every finished block's state in order and continues with the
first unfinished block; each block's minibatches are drawn from a generator seeded by the block
index, so a resumed run ends with the same student as an uninterrupted one. Files are written to a
temporary name and renamed (a kill leaves either the whole file or none).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saq_lightning.errors import UserError
from saq_lightning.files import atomic_path, load_tensors, write_text_atomic

from ..model import QuantizedUNet
from ..state import load_trainable_state_dict, trainable_state_dict
from .blocks import Block, execution_order, find_blocks
from .comm import Comm
from .reconstruct import BlockResult, block_state, reconstruct_block
from .recording import BlockCache, capture_call
from .settings import ReconstructionSettings

#: one calibration batch: (run the FP teacher on it, run the student on it, number of samples)
CalibrationBatch = tuple[Callable[[], Any], Callable[[], Any], int]


class ReconstructionStateError(UserError, ValueError):
    """The state folder belongs to another reconstruction run."""


@dataclass
class ReconstructionReport:
    blocks: list[BlockResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    complete: bool = False


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def check_state_meta(state_dir: Path, meta: Mapping[str, Any], comm: Comm) -> None:
    """Record ``meta`` in a new state folder; refuse a folder recorded with another one."""
    path = state_dir / "meta.json"
    plain = json.loads(json.dumps(meta))
    if path.exists():
        found = json.loads(path.read_text())
        if found != plain:
            diff = sorted(k for k in set(found) | set(plain) if found.get(k) != plain.get(k))
            raise ReconstructionStateError(
                f"{path}: the reconstruction state there was made with another configuration "
                f"(fields {diff} differ); use another output folder or remove it to start over")
        return
    comm.barrier()
    if comm.rank == 0:
        state_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(plain, indent=1, sort_keys=True))
    comm.barrier()


def student_blocks(student: QuantizedUNet, settings: ReconstructionSettings,
                   first_call: Callable[[], Any]) -> list[Block]:
    types, patterns, strict = settings.block_definition()
    blocks = find_blocks(student.unet, types, patterns, strict)
    return execution_order(blocks, first_call)


def record_block(block: Block, teacher_unet: nn.Module, student: QuantizedUNet,
                 batches: Iterable[CalibrationBatch], settings: ReconstructionSettings,
                 spill_to: Path) -> BlockCache:
    """Quantized-prefix inputs of ``block`` and the FP block's outputs on every local sample."""
    fp_module = teacher_unet.get_submodule(block.name)
    cache = BlockCache()
    for run_fp, run_quant, n in batches:
        fp = capture_call(run_fp, fp_module, want_output=True)
        quant = capture_call(run_quant, block.module, want_output=False, context=student.context)
        cache.add(quant, fp, n)
    limit = {"memory": float("inf"), "disk": -1.0}.get(settings.cache, settings.cache_limit_gb * 2**30)
    cache.finish(spill_to, limit)
    return cache


def reconstruct_student(
    student: QuantizedUNet,
    teacher_unet: nn.Module,
    batches: Callable[[], Iterable[CalibrationBatch]],
    n_samples: int,
    calibrate: Callable[[], Any],
    settings: ReconstructionSettings,
    state_dir: str | os.PathLike,
    meta: Mapping[str, Any],
    *,
    comm: Comm | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_block_end: Callable[[int, Block, BlockResult], None] | None = None,
    max_blocks: int | None = None,
) -> ReconstructionReport:
    """Calibrate (or reload the calibration), then reconstruct every unfinished block.

    ``batches()`` yields this rank's calibration batches (samples ``i`` with ``comm.owns(i)``, in
    increasing order); ``n_samples`` is the global count. ``max_blocks``: stop after that many
    newly reconstructed blocks (a time-limited job; rerun to continue).
    """
    comm = comm or Comm()
    state_dir = Path(state_dir)
    check_state_meta(state_dir, meta, comm)
    calib_path = state_dir / "calibration.pt"
    if calib_path.exists():
        load_trainable_state_dict(student, load_tensors(calib_path))
    else:
        calibrate()
        comm.barrier()
        if comm.rank == 0:
            _save_atomic({k: v.cpu() for k, v in trainable_state_dict(student).items()}, calib_path)
        comm.barrier()
    first = next(iter(batches()))
    blocks = student_blocks(student, settings, first[1])
    report = ReconstructionReport()
    done_now = 0
    for i, block in enumerate(blocks):
        path = state_dir / "blocks" / f"{i:03d}.pt"
        if path.exists():
            saved = load_tensors(path)
            if saved["name"] != block.name:
                raise ReconstructionStateError(f"{path} holds block {saved['name']!r}, expected {block.name!r}")
            load_trainable_state_dict(student, {**_current(student), **saved["state"]})
            report.skipped.append(block.name)
            report.blocks.append(BlockResult(**saved["result"]))
            continue
        if max_blocks is not None and done_now >= max_blocks:
            return report
        t0 = time.perf_counter()
        cache = record_block(block, teacher_unet, student, batches(), settings,
                             state_dir / "cache" / f"rank{comm.rank}-{i:03d}.pt")
        t1 = time.perf_counter()
        bar = _bar(progress and comm.rank == 0, f"[{i + 1}/{len(blocks)}] {block.name}",
                   settings.iters + (settings.act_iters if settings.learn_act_steps else 0))
        result = reconstruct_block(block, cache, n_samples, student.context, settings, comm, device, i,
                                   progress=bar.update if bar is not None else None)
        if bar is not None:
            bar.close()
        result.record_seconds = t1 - t0
        del cache
        _drop_spill(state_dir / "cache" / f"rank{comm.rank}-{i:03d}.pt")
        comm.barrier()
        if comm.rank == 0:
            _save_atomic({"name": block.name, "state": block_state(student, block), "result": asdict(result)}, path)
        comm.barrier()
        report.blocks.append(result)
        if on_block_end is not None:
            on_block_end(i, block, result)
        done_now += 1
    report.complete = True
    return report


def _current(student: QuantizedUNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in trainable_state_dict(student).items()}


def _drop_spill(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


class _Bar:
    def __init__(self, desc: str, total: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, leave=True, mininterval=1.0)
        self.last = -1

    def update(self, it: int, stats: dict[str, float]) -> None:
        self.bar.update(it - self.last)
        self.last = it
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items()}, refresh=False)

    def close(self) -> None:
        self.bar.update(self.bar.total - self.last - 1)
        self.bar.close()


def _bar(enabled: bool, desc: str, total: int) -> _Bar | None:
    return _Bar(desc, total) if enabled and total > 0 else None
