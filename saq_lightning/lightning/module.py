"""``SAQLightningModule``: SA-QLoRA training of a quantized student against a frozen FP teacher.

Per training step, for points ``x_s`` on the teacher's order-k trajectories:

    pred   = student eps(x_s, s, c)                    (one first-order direction, CFG if set)
    target = eps_eff of the teacher's order-k step s -> t    (alignment: mixed_order)
           | teacher eps(x_s, s, c)                          (alignment: same_input, EfficientDM)
    loss   = w_mse * MSE(pred, target) + w_cos * (1 - cos(pred, target))

Targets come from the shards (``eps_eff`` written by ``generate``) or are computed online by the
same solver code; in the on-the-fly mode the teacher rolls trajectories out inside the step.

What is where:

The method itself lives in :class:`~saq_lightning.alignment.setup.SAQSetup` (``self.saq``); this
class is the Lightning glue around it: hooks, logging, the optimizer, checkpoints, the checks
against the trainer's data module.

* the teacher (``self.teacher``, a :class:`~saq_lightning.models.DiffusionModel`) is built from its
  spec on every start, frozen and in eval mode; it has no optimizer state and is not in
  checkpoints;
* the student (``self.student``, a :class:`~saq_lightning.quant.QuantizedUNet`) shares the
  teacher's frozen weights; only LoRA and quantizer parameters train;
* the quantizers are calibrated once, on teacher-trajectory states of every timestep bucket,
  before the optimizer is built (never on resume: the state comes from the checkpoint);
* checkpoints hold the student's trainable state plus ``checkpoint["saq"]`` (teacher spec and
  policy), checked on load.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from saq_lightning.alignment.checkpointing import student_state_dict
from saq_lightning.alignment.mota import group_means, reduce_mota
from saq_lightning.alignment.optim import build_optimizer, grad_total_norm, learning_rates
from saq_lightning.alignment.settings import (
    CalibrationSettings,
    GenerationSettings,
    LossSettings,
    OptimizerSettings,
    init_hyperparameters,
)
from saq_lightning.alignment.setup import (
    Alignment,
    GuidanceAlignment,
    MixedOrderTarget,
    SAQSetup,
    Spacing,
    TargetSource,
    TeacherSolver,
    check_intermediate_target_phases,
)
from saq_lightning.alignment.student_step import check_phase_solvers
from saq_lightning.alignment.trajectory_meta import check_trajectory_folder, manifest_phases
from saq_lightning.data.mixstep import MixStepPhase, MixStepSchedule
from saq_lightning.models import ModelSpec
from saq_lightning.quant.report import kernels_summary

from .resume import check_resume_settings, rebuild_lr_schedule

log = logging.getLogger(__name__)

#: init arguments that say how to load a run, not what it is: not saved, not compared on resume
NOT_SAVED = ("allow_teacher_transfer",)


class _Held:
    """Holds the setup without registering it: its teacher and student are registered on the
    module itself, so that parameter names and checkpoint keys stay ``teacher.*``/``student.*``."""

    def __init__(self, setup: SAQSetup) -> None:
        self.setup = setup


def _delegated(name: str, settable: bool = False) -> property:
    """A member of the setup, read (and for ``phases``/``active_phase`` set) through the module."""

    def get(self: SAQLightningModule) -> Any:
        return getattr(self.saq, name)

    def set_(self: SAQLightningModule, value: Any) -> None:
        setattr(self.saq, name, value)

    return property(get, set_ if settable else None, doc=f"``self.saq.{name}``")


class SAQLightningModule(L.LightningModule):
    """SA-QLoRA: a LoRA + fake-quantized student aligned to a frozen FP teacher.

    Args:
        teacher: the FP model's spec (``configs/models/*.yaml``); default the digits teacher.
        policy: quantization policy: a preset (``w8a8``, ``w4a8``, ``w4a4``), a dict of
            ``QuantPolicy`` fields, or ``{preset: ..., <field overrides>}``.
        alignment: ``mixed_order`` (target ``eps_eff`` of the teacher's order-k step; SA-QLoRA) or
            ``same_input`` (the teacher's ``eps`` at ``x_s``; the EfficientDM baseline).
        targets: where ``mixed_order`` targets come from: ``shard`` (``eps_eff`` in the shards;
            an error if absent), ``online`` (computed by the teacher every step), ``auto``
            (shards when they have them).
        teacher_solver: solver family of the teacher (``dpm``, ``dpm++``: singlestep;
            ``dpm_multistep``, ``dpm++_multistep``, ``plms``: with history). The student's own
            solver and order are per phase (``MixStepPhase.student_solver/student_order``; see
            :mod:`.student_step`).
        spacing: time grid of every phase (``time_uniform``, ``logSNR``, ...).
        guidance_scale: classifier-free guidance of the teacher rollouts and of both sides of the
            loss (1 = none; the paper trains ImageNet at 2.0).
        guidance_alignment: ``combined`` (the loss compares the guided directions
            ``eps_u + g (eps_c - eps_u)``: one combination of the two branches, right at scale
            ``g`` only) or ``branches`` (the conditional and the unconditional outputs are aligned
            separately, each with its own teacher target at the guided trajectory's points:
            exact at every scale for first-order steps; targets online).
        mixed_order_target: ``eps_eff`` (the exact effective direction of the teacher's order-k
            step) or ``intermediate_eps`` (the authors' code: the teacher's ``eps(u, s1)`` at
            DPM-Solver-2's intermediate point, equal to ``eps_eff`` only where ``s1`` is the
            ``lambda``-midpoint; targets online; teacher ``dpm``, orders 1-2).
        loss, optimizer, calibration, generation: see :mod:`saq_lightning.alignment.settings`.
        online_points_per_batch: on-the-fly mode: trajectory points trained on per batch
            (default: as many as initial noises in the batch), drawn from the rollouts.
        max_nonfinite_steps: a NaN/Inf loss or gradient skips the step; after this many skipped
            steps training stops with an error (the last checkpoint stays the last good one).
        seed: seeds the LoRA initialisation (independent of the global RNG: a run is a function
            of its config) and the on-the-fly choice of trajectory points.
        allow_teacher_transfer: resume/load a checkpoint whose student was trained against other
            teacher weights (a different fingerprint) deliberately; not saved with the run.
        init_from: a student checkpoint of the same teacher and policy to start from instead of
            calibrating (e.g. ``ptq``'s ``student.ckpt``: SA-QLoRA from SA-PTQ).
        compile: run the student's training/sampling calls through ``torch.compile`` (the
            student module itself, its state and checkpoints stay the eager ones); a string
            names the backend (default ``inductor``; e.g. ``aot_eager``).
        quant_kernels: how the quantizer pieces run: ``auto`` (fused Triton kernels on CUDA, eager
            elsewhere), ``triton`` (an error where it cannot run) or ``eager``; printed at fit start.
        mixstep: the run's mixstep schedule. Not written under ``model:``: the CLI links it from
            the top-level ``mixstep:`` block (the ``MixStepCallback`` it forces into the trainer),
            which it also links into the data module; in Python, the ``MixStepCallback`` hands
            it over at set-up (:meth:`set_mixstep`). Saved with the hyperparameters.
    """

    def __init__(
        self,
        teacher: ModelSpec | None = None,
        policy: str | dict[str, Any] = "w4a4",
        alignment: Alignment = "mixed_order",
        targets: TargetSource = "auto",
        teacher_solver: TeacherSolver = "dpm",
        spacing: Spacing = "time_uniform",
        guidance_scale: float = 1.0,
        guidance_alignment: GuidanceAlignment = "combined",
        mixed_order_target: MixedOrderTarget = "eps_eff",
        loss: LossSettings | None = None,
        optimizer: OptimizerSettings | None = None,
        calibration: CalibrationSettings | None = None,
        generation: GenerationSettings | None = None,
        online_points_per_batch: int | None = None,
        max_nonfinite_steps: int = 10,
        seed: int = 0,
        allow_teacher_transfer: bool = False,
        init_from: str | None = None,
        compile: bool | str = False,
        quant_kernels: Literal["auto", "triton", "eager"] = "auto",
        mixstep: MixStepSchedule | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be >= 0, got {max_nonfinite_steps}")
        if isinstance(mixstep, Mapping):  # as saved in a checkpoint's hyperparameters
            mixstep = MixStepSchedule.from_dict(mixstep)
        setup = SAQSetup(teacher, policy, alignment, targets, teacher_solver, spacing, guidance_scale,
                         guidance_alignment, mixed_order_target, loss, optimizer, calibration, generation,
                         online_points_per_batch, seed, allow_teacher_transfer, init_from, compile,
                         quant_kernels)
        # every init argument as normalised by the setup, in plain types (what resume compares)
        normalised = {**locals(), "teacher": setup.teacher_spec, "policy": setup.policy,
                      "loss": setup.loss_settings, "optimizer": setup.optimizer_settings,
                      "calibration": setup.calibration_settings, "generation": setup.generation,
                      "guidance_scale": setup.teacher_settings.guidance_scale}
        self.save_hyperparameters(init_hyperparameters(type(self).__init__, normalised, NOT_SAVED))
        self._held = _Held(setup)
        self.teacher = setup.teacher  # frozen, eval mode
        self.student = setup.student
        self.max_nonfinite_steps = max_nonfinite_steps
        self.mixstep: MixStepSchedule | None = None
        self.set_mixstep(mixstep)
        self.strict_loading = False  # checkpoints hold the student's trainable state only
        self.skipped_nonfinite_batch = False
        self.restored_from_checkpoint = False
        self._resumed_hparams: dict[str, Any] | None = None

    @property
    def saq(self) -> SAQSetup:
        """The run itself (teacher, student, flow, conditions, policy, settings)."""
        return self._held.setup

    teacher_spec = _delegated("teacher_spec")
    policy = _delegated("policy")
    teacher_settings = _delegated("teacher_settings")
    loss_settings = _delegated("loss_settings")
    optimizer_settings = _delegated("optimizer_settings")
    calibration_settings = _delegated("calibration_settings")
    generation = _delegated("generation")
    alignment = _delegated("alignment")
    guidance_alignment = _delegated("guidance_alignment")
    mixed_order_target = _delegated("mixed_order_target")
    target_source = _delegated("target_source")
    online_points_per_batch = _delegated("online_points_per_batch")
    seed = _delegated("seed")
    quant_report = _delegated("quant_report")
    flow = _delegated("flow")
    branch_flow = _delegated("branch_flow")
    allow_teacher_transfer = _delegated("allow_teacher_transfer")
    teacher_fingerprint = _delegated("teacher_fingerprint")
    init_from = _delegated("init_from")
    student_model = _delegated("student_model")
    conditions = _delegated("conditions")
    phases = _delegated("phases", settable=True)
    active_phase = _delegated("active_phase", settable=True)
    expected_trajectory_meta = _delegated("expected_trajectory_meta")
    guidance_line = _delegated("guidance_line")
    bind_bucket_map = _delegated("bind_bucket_map")
    training_points = _delegated("training_points")
    alignment_targets = _delegated("alignment_targets")
    student_direction = _delegated("student_direction")
    branch_points = _delegated("branch_points")
    alignment_terms = _delegated("alignment_terms")
    sample_comparison = _delegated("sample_comparison")
    checkpoint_identity = _delegated("checkpoint_identity")

    def calibrate_student(self) -> dict[str, Any]:
        """The setup's calibration (a method of the module so that a fit can observe its calls)."""
        return self.saq.calibrate_student()

    def train(self, mode: bool = True) -> SAQLightningModule:
        super().train(mode)
        self.teacher.eval()  # the frozen teacher never leaves eval mode
        return self

    # ------------------------------------------------------------------ set-up
    def configure_callbacks(self):
        from saq_lightning.callbacks.graceful_stop import GracefulStop
        from saq_lightning.callbacks.nonfinite import NonFiniteGuard
        from saq_lightning.callbacks.step_progress import step_progress_bar_for

        bar = step_progress_bar_for(self.trainer)
        return [NonFiniteGuard(self.max_nonfinite_steps), GracefulStop(), *([bar] if bar else [])]

    def set_mixstep(self, schedule: MixStepSchedule | None) -> None:
        """The run's mixstep schedule (``MixStepCallback.setup`` hands its own over); its phases
        are the setup's, and the hyperparameters record it. A second, different one is refused."""
        if schedule is None or schedule == self.mixstep:
            return
        if self.mixstep is not None:
            raise ValueError(f"two mixstep schedules: the module's {self.mixstep} and a "
                             f"MixStepCallback's {schedule}; give the schedule once (`mixstep:`)")
        self.mixstep = schedule
        self.phases = list(schedule.phases)
        self.hparams["mixstep"] = schedule.to_dict()

    def setup(self, stage: str) -> None:
        schedule = self.mixstep  # linked by the CLI, or handed over by MixStepCallback.setup
        if schedule is not None and (stage == "fit" or self.phases is None):
            self.phases = list(schedule.phases)  # validation scores each phase's own step
        if stage != "fit":
            return
        dm = self.trainer.datamodule
        manifest = getattr(dm, "manifest", None)
        if manifest is not None:
            check_trajectory_folder(manifest, self, f"{getattr(dm, 'shards', '?')}/manifest.json")
            if self.phases is None:
                self.phases = manifest_phases(manifest)
            if self.target_source == "shard" and "eps_eff" not in manifest.fields:
                raise ValueError(f"targets='shard' but the shards in {dm.shards} hold no eps_eff "
                                 f"(generated with generation.store_targets=false); use "
                                 f"targets='online' or regenerate them")
        if getattr(dm, "on_the_fly", False):
            shape = list(getattr(dm, "image_shape", None) or [])
            if shape != list(self.teacher.sample_shape):
                raise ValueError(f"on-the-fly data streams noise of shape {shape}, the teacher "
                                 f"takes {list(self.teacher.sample_shape)} (data.image_shape)")
            if schedule is None:
                raise ValueError("the on-the-fly mode rolls out the phases of a mixstep schedule: "
                                 "give one (the top-level `mixstep:` block of the config)")
            if self.target_source == "shard":
                raise ValueError("targets='shard' needs trajectory shards (data.shards)")
        line = self.loss_settings.balance_line(int(np.prod(self.teacher.sample_shape)),
                                               int(getattr(dm, "batch_size", None) or 1))
        if line is not None:
            rank_zero_info(line)
        line = self.guidance_line()
        if line is not None:
            rank_zero_info(line)
        if self.phases is not None and self.mixed_order_target == "intermediate_eps":
            check_intermediate_target_phases(self.phases)
        if self.phases is not None:
            MixStepSchedule(tuple(self.phases)).check_buckets(self.policy.n_buckets)
            check_phase_solvers(self.flow, self.phases,
                                None if manifest is None else manifest.fields,
                                f"{getattr(dm, 'shards', '?')}/manifest.json")
        if manifest is not None and schedule is not None and hasattr(dm, "check_schedule"):
            dm.check_schedule(schedule)  # before calibration: shards of other phases fail now
        if self.phases is not None:
            self.bind_bucket_map(self.phases)

    def configure_optimizers(self) -> dict[str, Any]:
        if not self.restored_from_checkpoint and self.init_from is None:
            self.calibrate_student()
        optimizer, scheduler = build_optimizer(self.student, self.optimizer_settings,
                                               self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        # Lightning keeps module modes as they are; the student was copied from the (eval) teacher
        self.train()
        log.info(kernels_summary(self.student, self.device))

    def on_train_start(self) -> None:
        if self.restored_from_checkpoint:  # optimizer and scheduler are restored by now
            rebuild_lr_schedule(self.trainer, self.optimizer_settings,
                                (self._resumed_hparams or {}).get("optimizer"))

    # ------------------------------------------------------------------ mixstep
    def on_mixstep_phase(self, index: int, phase: MixStepPhase) -> None:
        """Called by ``MixStepCallback`` when the phase changes."""
        self.active_phase = (index, phase)

    def _finite_everywhere(self, loss: Tensor) -> bool:
        finite = bool(torch.isfinite(loss.detach()).all())
        return bool(self.trainer.strategy.reduce_boolean_decision(finite, all=True))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        with torch.no_grad():
            points = self.training_points(batch)
        terms, points, elements = self.alignment_terms(points)
        w = self.loss_settings
        loss, per_sample = reduce_mota(terms, elements, w.w_mse, w.w_cos, w.mse_reduction,
                                       w.cos_reduction)
        bs = int(points.x_s.shape[0])
        self.skipped_nonfinite_batch = not self._finite_everywhere(loss)
        if self.skipped_nonfinite_batch:
            log.warning("step %d: non-finite loss %s, skipping the optimizer step", self.global_step,
                        loss.detach().item())
            return self._null_loss()
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/mse", terms.mse.mean(), batch_size=bs)
        self.log("train/cos_loss", (1.0 - terms.cos).mean(), batch_size=bs)
        per_sample = per_sample.detach()
        for k, v in group_means(per_sample, points.order).items():
            self.log(f"train/loss_order{k}", v, batch_size=bs)
        for p, v in group_means(per_sample, points.phase).items():
            self.log(f"train/loss_phase{p}", v, batch_size=bs)
        if self.trainer.optimizers:
            for kind, lr in learning_rates(self.trainer.optimizers[0]).items():
                self.log(f"lr/{kind}", lr, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Alignment loss on held-out trajectory points (``generate`` writes them, seeded with
        ``validation.VALIDATION_SEED_OFFSET``), overall, per teacher order and per phase: the
        training objective per point (the student's own k-step direction in solver-aware phases,
        both branches under ``guidance_alignment='branches'``)."""
        terms, points, _ = self.alignment_terms(self.training_points(batch))
        per_sample = terms.loss.detach().float()
        loss = per_sample.mean()
        bs = int(per_sample.shape[0])
        # every rank logs these two: averaged over all ranks' points (a collective at epoch end)
        self.log("val/alignment_loss", loss, batch_size=bs, sync_dist=True)
        self.log("hp_metric", loss, batch_size=bs, sync_dist=True)
        for name, groups in (("order", points.order), ("phase", points.phase)):
            for g in groups.unique().tolist():
                picked = per_sample[groups == g]
                # weighted by the group's own count, so the epoch value is the mean over its points
                self.log(f"val/alignment_loss_{name}{int(g)}", picked.mean(), batch_size=int(picked.numel()))
        return loss

    def _null_loss(self) -> Tensor:
        """A zero loss that reaches every trainable parameter but not the non-finite graph.

        Returning ``None`` is not allowed under DDP; this keeps every rank's backward (and its
        all-reduce) in step, and :class:`~saq_lightning.callbacks.nonfinite.NonFiniteGuard` drops
        the (zero) gradients so that the optimizer does not move the weights at all.
        """
        return sum(p.sum() * 0.0 for p in self.student.parameters() if p.requires_grad)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        norm = grad_total_norm(p for p in self.student.parameters() if p.requires_grad)
        if norm is not None:
            self.log("train/grad_norm", norm)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = student_state_dict(self.student)
        checkpoint["saq"] = self.checkpoint_identity()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        source = str(getattr(self._trainer, "ckpt_path", None) or "checkpoint")
        self.saq.check_checkpoint(checkpoint.get("saq"), source)
        self._resumed_hparams = checkpoint.get("hyper_parameters")
        check_resume_settings(self._resumed_hparams, dict(self.hparams), source)
        self.saq.load_student_state(checkpoint["state_dict"])
        self.restored_from_checkpoint = True
