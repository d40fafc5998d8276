"""SA-PTQ / BRECQ for a run's student (the library behind ``python -m saq_lightning ptq``).

The PTQ config is a training config (teacher, policy, guidance, solver family, shards) plus a
``ptq:`` block (:class:`PTQSettings`). Calibration points come from the shards that ``generate``
wrote (with ``generation.store_pairs: true`` for ``mixed_order``); the FP side of every block is the
frozen teacher, the quantized side the student with its already-reconstructed prefix; both are
called through the run's noise predictor, so classifier-free guidance batches (conditional and
unconditional rows) are reconstructed as the sampler will use them.

Output folder (``ptq.output``)::

    student.ckpt           SA-QLoRA-format student checkpoint (``checkpoint["saq"]`` + trainable
                           state incl. AdaRound decisions; ``checkpoint["ptq"]["sampler"]``: the
                           sampler it is for, ``sample``'s default): ``sample``/``evaluate``/``diagnose``,
                           ``load_student``, the export, and ``fit`` via ``model.init_from``
    ptq_results.json       per block: losses before/after, rounding regulariser, hard fraction
    tb/                    TensorBoard scalars per block
    ptq_state/             resumable per-block state (see quant.reconstruction.pipeline)
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
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

from .buckets import bucket_map_with_intermediates
from .checkpointing import PORTABLE_SPEC_FIELDS, add_tensor_digest, student_state_dict
from .ptq_sampler import PTQSampler, default_role, resolve_sampler, role_note
from .setup import SAQSetup
from .trajectory_meta import check_trajectory_folder, manifest_phases

CHECKPOINT = "student.ckpt"
RESULTS = "ptq_results.json"


@dataclass
class PTQSettings(ReconstructionSettings):
    """The ``ptq:`` block: reconstruction settings, the sampler the student is for, and where the
    result goes.

    ``solver`` / ``order`` / ``steps`` / ``spacing``: the sampler (a ``sample --solver`` name, its
    order when not the name's, its steps; default the fewest student steps of the shards' phases,
    and the run's spacing, the only one the pairs come from). It picks the default
    ``pair_roles`` (``ptq_sampler.py``) and is recorded in ``student.ckpt`` for ``sample``.
    """

    output: str = "runs/ptq"
    solver: str = "dpm1"
    order: int | None = None
    steps: int | None = None
    spacing: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        from saq_lightning.sampling.registry import SOLVER_NAMES

        if self.solver not in SOLVER_NAMES:
            raise ValueError(f"ptq.solver must be one of {SOLVER_NAMES} (the sampler the student is for), "
                             f"got {self.solver!r}")
        if self.order is not None and self.order not in (1, 2, 3, 4):
            raise ValueError(f"ptq.order must be 1, 2, 3 (4 for plms) or null, got {self.order!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"ptq.steps must be >= 1, got {self.steps}")

    def reconstruction(self) -> ReconstructionSettings:
        d = asdict(self)
        for name in ("output", "solver", "order", "steps", "spacing"):
            d.pop(name)
        return ReconstructionSettings(**d)


def _sides(points: CalibrationPoints, settings: ReconstructionSettings):
    """(FP input, FP time, quantized input, quantized time) of every calibration point."""
    if settings.objective == "same_input":
        if settings.same_input_points == "grid":
            return points.x_s, points.s, points.x_s, points.s
        # every other drawn record by its intermediate point: half grid, half intermediate points,
        # each with its own FP output
        mid = torch.arange(len(points)) % 2 == 1
        x = torch.where(mid.view(-1, *([1] * (points.x_s.dim() - 1))), points.x_mid, points.x_s)
        t = torch.where(mid, points.s_mid, points.s)
        return x, t, x, t
    if settings.pair_roles == "fp_first_order":
        return points.x_s, points.s, points.x_mid, points.s_mid
    if settings.pair_roles == "fp_second_order":
        return points.x_mid, points.s_mid, points.x_s, points.s
    raise ValueError(f"pair_roles {settings.pair_roles!r} is not resolved")


def quantized_at_intermediate_points(rec: ReconstructionSettings) -> bool:
    """Whether the quantized side of the reconstruction sees the pairs' intermediate points (then
    they get activation buckets of their own instead of their nearest grid point's)."""
    if rec.objective == "same_input":
        return rec.same_input_points == "grid_and_intermediate"
    return rec.pair_roles == "fp_first_order"


def _bind_intermediate_buckets(setup: SAQSetup, phases: Any) -> str | None:
    """Give the pairs' intermediate points activation buckets of their own; when the policy's
    ``n_buckets`` leave too few, they keep their nearest grid point's and the line saying so is
    returned."""
    bucket_map, note = bucket_map_with_intermediates(
        setup.flow.schedule, setup.teacher_settings.spacing, phases, setup.policy.n_buckets,
        [2 if p.teacher_order >= 2 else 0 for p in phases])
    setup.student.set_bucket_map(bucket_map)
    return None if note is None else f"ptq: {note}"


def ptq_sampler(setup: SAQSetup, settings: PTQSettings, phases: Any) -> PTQSampler:
    """The sampler ``settings`` names, in ``setup``'s run."""
    run = setup.teacher_settings
    return resolve_sampler(settings.solver, settings.order, settings.steps, settings.spacing,
                           run.spacing, run.guidance_scale, phases)


def resolve_roles(rec: ReconstructionSettings, sampler: PTQSampler) -> tuple[ReconstructionSettings, str | None]:
    """``rec`` with its pair role decided (by the sampler when unset) and the one line to print when
    the reconstruction does not suit the sampler."""
    if rec.objective == "mixed_order" and rec.pair_roles is None:
        rec = replace(rec, pair_roles=default_role(sampler))
    return rec, role_note(rec.objective, rec.pair_roles or "", rec.same_input_points, sampler)


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
    setup: SAQSetup,
    shards: str | os.PathLike,
    settings: PTQSettings,
    *,
    comm: Comm | None = None,
    progress: bool = True,
    max_blocks: int | None = None,
) -> ReconstructionReport:
    """Reconstruct ``setup.student`` block by block.

    Resumes from ``settings.output``/ptq_state; writes ``student.ckpt`` when every block is done.
    """
    comm = comm or Comm()
    rec = settings.reconstruction()
    out = Path(settings.output)
    shards = Path(shards)
    manifest = load_manifest(shards)
    check_trajectory_folder(manifest, setup, f"{shards}/manifest.json")
    phases = manifest_phases(manifest)
    sampler = ptq_sampler(setup, settings, phases)
    rec, note = resolve_roles(rec, sampler)
    shared = None
    if phases:  # the shards' grids give the activation buckets, as in fit
        setup.bind_bucket_map(phases)
        if quantized_at_intermediate_points(rec):  # and the pairs' intermediate points their own
            shared = _bind_intermediate_buckets(setup, phases)
    if comm.rank == 0:
        roles = f", pair_roles {rec.pair_roles}" if rec.objective == "mixed_order" else \
            f", same_input_points {rec.same_input_points}"
        print(note or f"ptq: the student is for {sampler.label()} ({rec.objective}{roles})")
        if shared:
            print(shared)
    pairs = rec.objective == "mixed_order" or rec.same_input_points == "grid_and_intermediate"
    points = load_calibration_points(shards, rec.num_samples, rec.seed, pairs=pairs)
    fp_x, fp_t, q_x, q_t = _sides(points, rec)
    device = next(setup.teacher.unet.parameters()).device
    dtype = next(setup.teacher.unet.parameters()).dtype
    teacher_eps = setup.flow.predictor()
    student_eps = setup.flow.predictor(setup.student_model)
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

    meta = {"reconstruction": asdict(rec), "saq": setup.checkpoint_identity(), "shards": str(shards),
            "manifest_layout": manifest.layout.digest()}
    if setup.student.bucket_map.own_intermediate_points():
        # a state calibrated before intermediate points had calibration data must not be resumed
        meta["calibration"] = "grid and intermediate points"
    tb = _TensorBoard(out / "tb") if comm.rank == 0 else None
    setup.student.eval()  # no dropout during recording or reconstruction; gradients still flow
    try:
        report = reconstruct_student(
            setup.student, setup.teacher.unet, batches, n, setup.calibrate_student, rec,
            out / "ptq_state", meta, comm=comm, device=device, progress=progress,
            on_block_end=tb, max_blocks=max_blocks)
    finally:
        if tb is not None:
            tb.close()
    if report.complete and comm.rank == 0:
        _write_outputs(setup, out, report, settings, rec, sampler)
    comm.barrier()
    return report


def _write_outputs(setup: SAQSetup, out: Path, report: ReconstructionReport, settings: PTQSettings,
                   rec: ReconstructionSettings, sampler: PTQSampler) -> None:
    out.mkdir(parents=True, exist_ok=True)
    settings = replace(settings, pair_roles=rec.pair_roles)  # as resolved
    ckpt = {"saq": setup.checkpoint_identity(), "state_dict": {k: v.cpu() for k, v in student_state_dict(setup.student).items()},
            "ptq": {"settings": asdict(settings), "sampler": sampler.record(),
                    "blocks": [asdict(b) for b in report.blocks]}}
    with atomic_path(out / CHECKPOINT) as tmp:
        torch.save(add_tensor_digest(ckpt), tmp)
    results = [{k: v for k, v in asdict(b).items() if k != "curve"} for b in report.blocks]
    (out / RESULTS).write_text(json.dumps({"settings": asdict(settings), "sampler": sampler.record(),
                                           "blocks": results}, indent=1))


def _student_settings(identity: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """What makes one ptq student another: teacher (architecture and weights), policy, ptq settings."""
    teacher = {k: v for k, v in (identity.get("teacher") or {}).items() if k not in PORTABLE_SPEC_FIELDS}
    return {"teacher": teacher, "teacher_fingerprint": identity.get("teacher_fingerprint"),
            "policy": identity.get("policy"), "ptq": {k: v for k, v in settings.items() if k != "output"}}


def check_existing_student(setup: SAQSetup, settings: PTQSettings, shards: str | os.PathLike, overwrite: bool) -> None:
    """Refuse to replace ``<output>/student.ckpt`` of other settings (teacher, policy, ptq) unless
    ``overwrite``: removing ``ptq_state/`` must not make an earlier student disappear silently.
    The checkpoint records the pair role as resolved, so an unset role is resolved the same way here."""
    path = Path(settings.output) / CHECKPOINT
    if not path.is_file() or overwrite:
        return
    saved = load_tensors(path)
    sampler = ptq_sampler(setup, settings, manifest_phases(load_manifest(Path(shards))))
    settings = replace(settings, pair_roles=resolve_roles(settings.reconstruction(), sampler)[0].pair_roles)
    now = _student_settings(setup.checkpoint_identity(), asdict(settings))
    recorded = _student_settings(saved.get("saq") or {}, (saved.get("ptq") or {}).get("settings") or {})
    if recorded != now:
        refuse_existing("ptq", [path], now, recorded, overwrite, alternative="use another ptq.output")
