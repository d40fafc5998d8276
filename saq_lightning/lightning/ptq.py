"""SA-PTQ / BRECQ for a run's student (the library behind ``python -m saq_lightning ptq``).

The PTQ config is a training config (teacher, policy, guidance, solver family, shards) plus a
``ptq:`` block (:class:`PTQSettings`). Calibration points come from the shards that ``generate``
wrote (with ``generation.store_pairs: true`` for ``mixed_order``); the FP side of every block is the
frozen teacher, the quantized side the student with its already-reconstructed prefix; both are
called through the run's noise predictor, so classifier-free guidance batches (conditional and
unconditional rows) are reconstructed as the sampler will use them.

Output folder (``ptq.output``)::

    student.ckpt           SA-QLoRA-format student checkpoint (``checkpoint["saq"]`` + trainable
                           state incl. AdaRound decisions): ``sample``/``evaluate``/``diagnose``,
                           ``load_student``, the export, and ``fit`` via ``model.init_from``
    ptq_results.json       per block: losses before/after, rounding regulariser, hard fraction
    tb/                    TensorBoard scalars per block
    ptq_state/             resumable per-block state (see quant.reconstruction.pipeline)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from saq_lightning.data.calibration_points import CalibrationPoints, load_calibration_points
from saq_lightning.data.manifest import load_manifest
from saq_lightning.files import atomic_path, load_tensors
from saq_lightning.outputs import refuse_existing
from saq_lightning.quant.reconstruction import (
    Block,
    BlockResult,
    Comm,
    ReconstructionReport,
    ReconstructionSettings,
    reconstruct_student,
)
from saq_lightning.sampling.predictor import select_batch

from .checkpointing import PORTABLE_SPEC_FIELDS, add_tensor_digest, student_state_dict
from .trajectory_meta import check_trajectory_meta, manifest_phases

CHECKPOINT = "student.ckpt"
RESULTS = "ptq_results.json"


@dataclass
class PTQSettings(ReconstructionSettings):
    """The ``ptq:`` block: reconstruction settings plus where the result goes."""

    output: str = "runs/ptq"

    def reconstruction(self) -> ReconstructionSettings:
        d = asdict(self)
        d.pop("output")
        return ReconstructionSettings(**d)


def _sides(points: CalibrationPoints, settings: ReconstructionSettings):
    """(FP input, FP time, quantized input, quantized time) of every calibration point."""
    if settings.objective == "same_input":
        return points.x_s, points.s, points.x_s, points.s
    if settings.pair_roles == "fp_first_order":
        return points.x_s, points.s, points.x_mid, points.s_mid
    return points.x_mid, points.s_mid, points.x_s, points.s


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder))

    def __call__(self, index: int, block: Block, result: BlockResult) -> None:
        for key, value in result.scalars().items():
            self.writer.add_scalar(f"ptq/{key}", value, index)
        for it, rec, reg in result.curve:
            self.writer.add_scalar(f"ptq_blocks/{index:03d}_{block.name}/rec_loss", rec, it)
            self.writer.add_scalar(f"ptq_blocks/{index:03d}_{block.name}/round_reg", reg, it)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def run_ptq(
    module: Any,
    shards: str | os.PathLike,
    settings: PTQSettings,
    *,
    comm: Comm | None = None,
    progress: bool = True,
    max_blocks: int | None = None,
) -> ReconstructionReport:
    """Reconstruct ``module.student`` (an :class:`SAQLightningModule`'s) block by block.

    Resumes from ``settings.output``/ptq_state; writes ``student.ckpt`` when every block is done.
    """
    comm = comm or Comm()
    rec = settings.reconstruction()
    out = Path(settings.output)
    shards = Path(shards)
    manifest = load_manifest(shards)
    check_trajectory_meta(manifest.meta, module.expected_trajectory_meta(), f"{shards}/manifest.json")
    phases = manifest_phases(manifest)
    if phases:  # the shards' grids give the activation buckets, as in fit
        module.bind_bucket_map(phases)
    points = load_calibration_points(shards, rec.num_samples, rec.seed, pairs=rec.objective == "mixed_order")
    fp_x, fp_t, q_x, q_t = _sides(points, rec)
    device = next(module.teacher.unet.parameters()).device
    dtype = next(module.teacher.unet.parameters()).dtype
    teacher_eps = module.flow.predictor()
    student_eps = module.flow.predictor(module.student_model)
    n = len(points)
    local = torch.tensor([i for i in range(n) if comm.owns(i)], dtype=torch.long)

    def batches():
        for chunk in local.split(rec.record_batch_size):
            cond = None if points.cond is None else select_batch(points.cond, chunk, n)
            cond = None if cond is None else cond.to(device)

            def fp(c=chunk, cond=cond):
                return teacher_eps(fp_x[c].to(device, dtype), fp_t[c].to(device), cond)

            def quant(c=chunk, cond=cond):
                return student_eps(q_x[c].to(device, dtype), q_t[c].to(device), cond)

            yield fp, quant, int(chunk.numel())

    meta = {"reconstruction": asdict(rec), "saq": module.checkpoint_identity(), "shards": str(shards),
            "manifest_layout": manifest.layout.digest()}
    tb = _TensorBoard(out / "tb") if comm.rank == 0 else None
    module.student.eval()  # no dropout during recording or reconstruction; gradients still flow
    try:
        report = reconstruct_student(
            module.student, module.teacher.unet, batches, n, module.calibrate_student, rec,
            out / "ptq_state", meta, comm=comm, device=device, progress=progress,
            on_block_end=tb, max_blocks=max_blocks)
    finally:
        if tb is not None:
            tb.close()
    if report.complete and comm.rank == 0:
        _write_outputs(module, out, report, settings)
    comm.barrier()
    return report


def _write_outputs(module: Any, out: Path, report: ReconstructionReport, settings: PTQSettings) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ckpt = {"saq": module.checkpoint_identity(), "state_dict": {k: v.cpu() for k, v in student_state_dict(module.student).items()},
            "ptq": {"settings": asdict(settings), "blocks": [asdict(b) for b in report.blocks]}}
    with atomic_path(out / CHECKPOINT) as tmp:
        torch.save(add_tensor_digest(ckpt), tmp)
    results = [{k: v for k, v in asdict(b).items() if k != "curve"} for b in report.blocks]
    (out / RESULTS).write_text(json.dumps({"settings": asdict(settings), "blocks": results}, indent=1))


def _student_settings(identity: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What makes one ptq student another: teacher (architecture and weights), policy, ptq settings."""
    teacher = {k: v for k, v in (identity.get("teacher") or {}).items() if k not in PORTABLE_SPEC_FIELDS}
    return {"teacher": teacher, "teacher_fingerprint": identity.get("teacher_fingerprint"),
            "policy": identity.get("policy"), "ptq": {k: v for k, v in settings.items() if k != "output"}}


def check_existing_student(module: Any, settings: PTQSettings, overwrite: bool) -> None:
    """Refuse to replace ``<output>/student.ckpt`` of other settings (teacher, policy, ptq) unless
    ``overwrite``: removing ``ptq_state/`` must not make an earlier student disappear silently."""
    path = Path(settings.output) / CHECKPOINT
    if not path.is_file() or overwrite:
        return
    saved = load_tensors(path)
    now = _student_settings(module.checkpoint_identity(), asdict(settings))
    recorded = _student_settings(saved.get("saq") or {}, (saved.get("ptq") or {}).get("settings") or {})
    if recorded != now:
        refuse_existing("ptq", [path], now, recorded, overwrite, alternative="use another ptq.output")
