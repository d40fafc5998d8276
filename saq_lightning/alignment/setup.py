"""``SAQSetup``: one SA-QLoRA / SA-PTQ run as an ``nn.Module``, without Lightning.

It holds what the ``model:`` block of a run config describes: the frozen FP teacher (a
:class:`~saq_lightning.models.DiffusionModel` built from its spec, eval mode, not in checkpoints),
the quantized student (a :class:`~saq_lightning.quant.QuantizedUNet` sharing the teacher's frozen
weights; only LoRA and quantizer parameters train), the teacher flow (solver family, spacing,
guidance), the conditions by trajectory index, the policy and the settings blocks. Its methods are
the method itself: bucket binding, calibration, the training points and their targets, the MOTA
terms of the student's own step, and the checkpoint identity (``checkpoint["saq"]``).

``fit`` wraps one in :class:`~saq_lightning.lightning.module.SAQLightningModule` (the Lightning
glue: hooks, logging, optimizer, checkpoints); ``generate`` and ``ptq`` build one directly
(:meth:`SAQSetup.from_model_args`) and never a LightningModule.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.models import DiffusionModel, ModelSpec, build_model
from saq_lightning.quant import (
    as_policy,
    calibrate,
    load_trainable_state_dict,
    quantize_model,
    trainable_state_dict,
)
from saq_lightning.sampling import sample
from saq_lightning.sampling.predictor import select_batch

from .buckets import bucket_map_with_intermediates, solver_aware_orders
from .calibration import calibration_batches
from .checkpointing import (
    check_identity,
    check_teacher_fingerprint,
    identity,
    restore_bucket_map,
    split_student_state,
    teacher_fingerprint,
)
from .conditions import ConditionSource, noise_for
from .init_from import check_init_bucket_map, load_init_from
from .mota import MotaTerms, add_terms, mota_terms
from .settings import (
    CalibrationSettings,
    GenerationSettings,
    LossSettings,
    OptimizerSettings,
    TeacherSettings,
)
from .student_step import student_step
from .teacher_flow import PointHistory, TeacherFlow, TrainingPoints, history_points
from .trajectory_meta import GENERATOR, solver_step_meta

log = logging.getLogger(__name__)

Alignment = Literal["mixed_order", "same_input"]
GuidanceAlignment = Literal["combined", "branches"]
MixedOrderTarget = Literal["eps_eff", "intermediate_eps"]
TargetSource = Literal["auto", "shard", "online"]
Spacing = Literal["time_uniform", "logSNR", "time_quadratic", "leading"]
TeacherSolver = Literal["dpm", "dpm++", "dpm_multistep", "dpm++_multistep", "plms"]
T = TypeVar("T")

#: the seed stream of the on-the-fly choice of trajectory points (data/noise_dataset.py draws
#: the initial noises from stream 1 and the labels from stream 2)
POINT_CHOICE_STREAM = 3


def check_intermediate_target_phases(phases: list[MixStepPhase]) -> None:
    """``intermediate_eps`` is the point of one DPM-Solver-2 step: refuse phases where it is not."""
    for i, p in enumerate(phases):
        if int(p.teacher_order) > 2 or int(p.teacher_steps) != int(p.student_steps):
            raise ValueError(f"phase {i} ({p}): mixed_order_target='intermediate_eps' needs teacher "
                             f"order <= 2 and teacher_steps == student_steps (one DPM-Solver-2 "
                             f"step per point); use mixed_order_target='eps_eff'")


@dataclass
class _Views:
    """Objects that must not be registered as submodules (views of registered ones)."""

    student_model: DiffusionModel
    conditions: ConditionSource | None = None


class SAQSetup(nn.Module):
    """Teacher, student, flow, conditions, policy and settings of one run.

    The arguments are those of the ``model:`` block (``SAQLightningModule`` passes its own through;
    see its docstring for each). ``phases`` (the mixstep schedule's, or the trajectory folder's)
    are set by whoever knows them: ``fit``'s set-up, ``generate``, ``ptq``.
    """

    def __init__(
        self,
        teacher: ModelSpec | Mapping[str, Any] | None = None,
        policy: str | dict[str, Any] = "w4a4",
        alignment: Alignment = "mixed_order",
        targets: TargetSource = "auto",
        teacher_solver: TeacherSolver = "dpm",
        spacing: Spacing = "time_uniform",
        guidance_scale: float = 1.0,
        guidance_alignment: GuidanceAlignment = "combined",
        mixed_order_target: MixedOrderTarget = "eps_eff",
        loss: LossSettings | Mapping[str, Any] | None = None,
        optimizer: OptimizerSettings | Mapping[str, Any] | None = None,
        calibration: CalibrationSettings | Mapping[str, Any] | None = None,
        generation: GenerationSettings | Mapping[str, Any] | None = None,
        online_points_per_batch: int | None = None,
        seed: int = 0,
        allow_teacher_transfer: bool = False,
        init_from: str | None = None,
        compile: bool | str = False,
        quant_kernels: Literal["auto", "triton", "eager"] = "auto",
    ) -> None:
        super().__init__()
        if alignment not in ("mixed_order", "same_input"):
            raise ValueError(f"alignment must be 'mixed_order' or 'same_input', got {alignment!r}")
        if targets not in ("auto", "shard", "online"):
            raise ValueError(f"targets must be 'auto', 'shard' or 'online', got {targets!r}")
        if targets == "shard" and alignment != "mixed_order":
            raise ValueError("targets='shard' reads eps_eff, the mixed_order target; same_input "
                             "targets are the teacher's eps at x_s, computed online")
        if guidance_alignment not in ("combined", "branches"):
            raise ValueError(f"guidance_alignment must be 'combined' or 'branches', got {guidance_alignment!r}")
        if mixed_order_target not in ("eps_eff", "intermediate_eps"):
            raise ValueError(f"mixed_order_target must be 'eps_eff' or 'intermediate_eps', got "
                             f"{mixed_order_target!r}")
        if mixed_order_target == "intermediate_eps" and alignment != "mixed_order":
            raise ValueError("mixed_order_target='intermediate_eps' is a mixed_order target; "
                             "alignment='same_input' aligns to the teacher's eps at x_s")
        if mixed_order_target == "intermediate_eps" and teacher_solver != "dpm":
            raise ValueError(f"mixed_order_target='intermediate_eps' is DPM-Solver-2's eps(u, s1): "
                             f"teacher_solver must be 'dpm', got {teacher_solver!r}")
        if targets == "shard" and (guidance_alignment == "branches" or mixed_order_target != "eps_eff"):
            raise ValueError("targets='shard' reads the shards' eps_eff (guided, exact); "
                             "guidance_alignment='branches' and mixed_order_target='intermediate_eps' "
                             "compute their targets online: use targets='auto' or 'online'")
        if online_points_per_batch is not None and online_points_per_batch < 1:
            raise ValueError(f"online_points_per_batch must be >= 1, got {online_points_per_batch}")
        teacher, policy = _as_spec(teacher), as_policy(policy)
        self.teacher_settings = TeacherSettings(teacher_solver, spacing, float(guidance_scale))
        self.teacher_spec = teacher
        self.policy = policy
        self.loss_settings = _as(loss, LossSettings)
        self.optimizer_settings = _as(optimizer, OptimizerSettings)
        self.calibration_settings = _as(calibration, CalibrationSettings)
        self.generation = _as(generation, GenerationSettings)
        self.alignment = alignment
        self.guidance_alignment = guidance_alignment
        self.mixed_order_target = mixed_order_target
        self.target_source = targets
        self.online_points_per_batch = online_points_per_batch
        self.teacher: DiffusionModel = build_model(teacher)  # frozen, eval mode
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.student, self.quant_report = quantize_model(self.teacher.unet, self.policy, kernels=quant_kernels)
        net = self.student
        if compile:
            net = torch.compile(net, **({"backend": compile} if isinstance(compile, str) else {}))
        self._views = _Views(self.teacher.with_unet(net))
        self.flow = TeacherFlow(self.teacher, self.teacher_settings)
        # branches: each branch is an unguided predictor with its own condition
        self.branch_flow = None
        if guidance_alignment == "branches":
            if self.teacher.conditioner is None:
                raise ValueError("guidance_alignment='branches' aligns the conditional and the "
                                 "unconditional outputs: the teacher has no condition")
            self.branch_flow = TeacherFlow(self.teacher, replace(self.teacher_settings, guidance_scale=1.0))
        self.phases: list[MixStepPhase] | None = None
        self.active_phase: tuple[int, MixStepPhase] | None = None
        self.allow_teacher_transfer = bool(allow_teacher_transfer)
        # of the weights as loaded from their file (before any precision plugin casts them)
        self.teacher_fingerprint = teacher_fingerprint(self.teacher)
        self.init_from = init_from
        if init_from is not None:  # e.g. an SA-PTQ student: its state replaces the calibration
            load_init_from(self.student, init_from, self.checkpoint_identity(), self.allow_teacher_transfer)

    @classmethod
    def from_model_args(cls, args: Mapping[str, Any]) -> SAQSetup:
        """The setup of a config's ``model.init_args`` (plain data as parsed, or objects); the
        arguments that are not the method's (the training loop's, e.g. ``max_nonfinite_steps``)
        are left to the LightningModule."""
        own = set(inspect.signature(cls.__init__).parameters) - {"self"}
        return cls(**{k: v for k, v in args.items() if k in own})

    @property
    def device(self) -> torch.device:
        return next(self.teacher.unet.parameters()).device

    # ------------------------------------------------------------------ views
    @property
    def student_model(self) -> DiffusionModel:
        """The teacher's DiffusionModel around the quantized student (sampling, evaluation)."""
        return self._views.student_model

    @property
    def conditions(self) -> ConditionSource:
        """Conditions by trajectory index (reads ``generation.prompts`` on first use)."""
        if self._views.conditions is None:
            g = self.generation
            self._views.conditions = ConditionSource(self.teacher, g.seed, g.num_classes, g.prompts)
        return self._views.conditions

    def train(self, mode: bool = True) -> SAQSetup:
        super().train(mode)
        self.teacher.eval()  # the frozen teacher never leaves eval mode
        return self

    def expected_trajectory_meta(self) -> dict[str, Any]:
        """Manifest facts that trajectories for this run must have (see ``generate``)."""
        spec = self.teacher_spec
        return {
            "generator": GENERATOR,
            "model_id": spec.name or spec.kind,
            "teacher": {"kind": spec.kind, "name": spec.name},
            "teacher_fingerprint": self.teacher_fingerprint,
            "schedule": dict(self.teacher.schedule_config),
            "image_shape": list(self.teacher.sample_shape),
            "teacher_solver": self.teacher_settings.solver,
            "teacher_step": solver_step_meta(self.flow.solver),
            "spacing": self.teacher_settings.spacing,
            "guidance_scale": self.teacher_settings.guidance_scale,
            "conditions": self.conditions.describe(),
        }

    # ------------------------------------------------------------------ buckets, calibration
    def guidance_line(self) -> str | None:
        """One line when a combined-guidance student is trained at another CFG scale than its
        model spec samples at (it is aligned at its training scale only)."""
        evaluated = self.teacher.sampling_defaults.get("guidance_scale")
        trained = self.teacher_settings.guidance_scale
        if (self.guidance_alignment != "combined" or self.teacher.conditioner is None
                or evaluated is None or float(evaluated) == trained):
            return None
        return (f"note: the student is aligned at CFG {trained:g} only (guidance_alignment: "
                f"combined), its model spec samples at {float(evaluated):g}: evaluate it at "
                f"{trained:g}, train at guidance_scale: {float(evaluated):g}, or use "
                f"guidance_alignment: branches")

    def bind_bucket_map(self, phases: list[MixStepPhase] | tuple[MixStepPhase, ...]) -> None:
        """Give the student the step-to-bucket tables of ``phases``' grids (raises on collisions,
        and when an ``init_from`` student was calibrated on other grids)."""
        # a singlestep student of order >= 2 evaluates its own intermediate points: buckets of their own
        orders = solver_aware_orders(phases, [self.flow.student_solver(p) for p in phases])
        bucket_map, note = bucket_map_with_intermediates(self.flow.schedule, self.teacher_settings.spacing,
                                                         phases, self.policy.n_buckets, orders)
        if note is not None:
            log.warning(note)
        if self.init_from is not None:
            check_init_bucket_map(self.student.bucket_map, bucket_map, self.init_from)
        self.student.set_bucket_map(bucket_map)

    @torch.no_grad()
    def calibrate_student(self) -> dict[str, Any]:
        """Initialise every quantizer from teacher-trajectory states of every timestep bucket."""
        bmap = self.student.bucket_map
        batches = calibration_batches(self.flow, self.calibration_settings, self.conditions,
                                      self.policy.n_buckets, self.device,
                                      next(self.teacher.unet.parameters()).dtype,
                                      spacing=self.teacher_settings.spacing if bmap.trained else None,
                                      steps=max((g.steps for g in bmap.grids), default=None),
                                      intermediate=bmap.own_intermediate_points())
        info = calibrate(self.student, batches, seed=self.calibration_settings.seed,
                         max_values_per_bucket=self.calibration_settings.max_values_per_bucket)
        self._broadcast_student_state()
        log.info("calibrated the student on %d batches (%d buckets)", info["n_batches"],
                 len(info["buckets"]))
        return info

    def _broadcast_student_state(self) -> None:
        """Make every rank hold rank 0's calibration (it is deterministic; this makes it certain)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for tensor in trainable_state_dict(self.student).values():
            if tensor.is_floating_point():
                torch.distributed.broadcast(tensor, src=0)

    # ------------------------------------------------------------------ the step
    def training_points(self, batch: dict[str, Any]) -> TrainingPoints:
        """The points of a batch, with their targets when the data holds them.

        Records mode: the batch itself. On-the-fly mode (``x_T`` in the batch): the teacher rolls
        the batch's noises out over its phase and ``online_points_per_batch`` of the trajectory
        points are drawn (seeded by the batch index).
        """
        if "x_T" not in batch:
            history = None
            if batch.get("x_hist") is not None and self.phases is not None:
                history = self.flow.record_history(batch["x_hist"], batch["step"], batch["phase"],
                                                   self.phases, batch["s"].dtype)
            return TrainingPoints(batch["x_s"], batch["s"], batch["t"], batch["order"], batch["phase"],
                                  batch.get("cond"), batch.get("eps_eff"), batch.get("step"), history)
        if "phase" not in batch or self.phases is None:
            raise ValueError("an on-the-fly batch without phase fields: the data module needs the "
                             "mixstep schedule (the config's `mixstep:` block)")
        phase_index = int(batch["phase"][0])
        phase = self.phases[phase_index]
        x_T = batch["x_T"]
        cond = batch.get("cond")
        if cond is None:
            cond = self.conditions(batch["index"].tolist(), device=x_T.device)
        traj = self.flow.rollout(x_T, cond, phase)
        rows = traj.points()
        n_rows, b = rows.x_s.shape[0], x_T.shape[0]
        k = min(self.online_points_per_batch or b, n_rows)
        seed = np.random.SeedSequence([self.seed, POINT_CHOICE_STREAM, int(batch["batch_index"])])
        gen = torch.Generator().manual_seed(int(seed.generate_state(1)[0]))
        pick = torch.randperm(n_rows, generator=gen)[:k].to(x_T.device)
        steps = torch.arange(traj.steps, device=x_T.device).repeat_interleave(b)
        size = self.flow.history_size([phase])
        history = None
        if size:
            hx, ht, avail = history_points(traj.states, traj.times, size)
            history = PointHistory(hx.reshape(n_rows, *hx.shape[2:])[pick],
                                   ht.reshape(n_rows, size)[pick], avail.reshape(n_rows)[pick])
        return TrainingPoints(
            rows.x_s[pick], rows.s[pick], rows.t[pick], rows.order[pick],
            torch.full((k,), phase_index, dtype=torch.long, device=x_T.device),
            select_batch(cond, pick % b, b) if cond is not None else None,
            rows.eps_eff[pick], steps[pick], history)

    def alignment_targets(self, points: TrainingPoints, flow: TeacherFlow | None = None) -> Tensor:
        """The loss target of every point (no gradient); ``flow``: the teacher flow (default the
        run's; the unguided one for the branches of ``guidance_alignment='branches'``)."""
        flow = flow or self.flow
        if self.alignment == "same_input":
            return flow.step_targets(points.x_s, points.s, points.t, 1, points.cond)
        if self.mixed_order_target == "intermediate_eps":
            return flow.intermediate_targets(points.x_s, points.s, points.t, points.order, points.cond)
        if points.eps_eff is not None and self.target_source != "online":
            return points.eps_eff
        if self.target_source == "shard":
            raise ValueError("targets='shard' but the batch holds no eps_eff")
        return flow.targets(points.x_s, points.s, points.t, points.order, points.cond,
                            points.phase, self.phases, points.history)

    def student_direction(self, x_s: Tensor, s: Tensor, cond: Any) -> Tensor:
        """The student's first-order direction at ``(x_s, s)``, guided like the teacher."""
        return self.flow.predictor(self.student_model)(x_s, s, cond)

    def branch_points(self, points: TrainingPoints) -> TrainingPoints:
        """``guidance_alignment='branches'``: every point twice, with its condition (rows ``:B``)
        and with the null condition (rows ``B:``); no cached target (the shards' is the guided one)."""
        if points.cond is None or not isinstance(points.cond, Tensor):
            raise ValueError("guidance_alignment='branches' needs the points' conditions (tensors); "
                             "the batch holds none")
        b = points.x_s.shape[0]
        null = self.teacher.null_cond(b, device=points.cond.device).to(points.cond.dtype)

        def twice(v: Any) -> Any:
            return None if v is None else torch.cat([v, v])

        history = None if points.history is None else PointHistory(*(twice(v) for v in points.history))
        return TrainingPoints(twice(points.x_s), twice(points.s), twice(points.t), twice(points.order),
                              twice(points.phase), torch.cat([points.cond, null]), None,
                              twice(points.step), history)

    def alignment_terms(self, points: TrainingPoints) -> tuple[MotaTerms, TrainingPoints, int]:
        """Per-row MOTA terms of the student's own step (its phase's solver and order; order 1: its
        direction at ``x_s``) against the targets, the rows they belong to (branches: each point
        twice) and the elements per row. Training and validation score the same thing."""
        flow = self.flow
        first_order = self.student_direction
        if self.branch_flow is not None:
            points, flow = self.branch_points(points), self.branch_flow
            first_order = flow.predictor(self.student_model)
        with torch.no_grad():
            target = self.alignment_targets(points, flow)
        w = self.loss_settings
        relative = w.mse_normalization == "target_energy"
        if self.phases is None:
            pred = first_order(points.x_s, points.s, points.cond)
            return mota_terms(pred, target, w.w_mse, w.w_cos, relative), points, int(pred[0].numel())
        # the student's own step of its phase's solver and order (order 1: its eps at x_s)
        step = student_step(flow, flow.predictor(self.student_model), self.phases, points, first_order)
        terms = mota_terms(step.eps_eff, target, w.w_mse, w.w_cos, relative)
        if w.grid_anchor > 0 and bool(step.higher.any()):
            with torch.no_grad():  # the teacher's first evaluation of its own step
                first = flow.predictor()(points.x_s, points.s, points.cond)
            anchor = mota_terms(step.eps_grid, first, w.w_mse, w.w_cos, relative)
            terms = add_terms(terms, anchor, w.grid_anchor * step.higher.to(anchor.loss.dtype))
        return terms, points, int(step.eps_eff[0].numel())

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_comparison(
        self, num_samples: int, seed: int = 0, phase: MixStepPhase | None = None
    ) -> tuple[Tensor, Tensor]:
        """Teacher (order-k, teacher grid) and student (student order and grid) samples from the
        same noises, decoded to images in ``[-1, 1]``: what the sample-grid callback shows."""
        if phase is None:
            phase = self.active_phase[1] if self.active_phase else (self.phases or [None])[0]
        if phase is None:
            steps = int(self.teacher.sampling_defaults.get("steps", 10))
            phase = MixStepPhase(steps, 1, 2)
        idx = range(num_samples)
        dtype = next(self.teacher.unet.parameters()).dtype
        x_T = noise_for(seed, idx, self.teacher.sample_shape, self.device, dtype)
        cond = self.conditions(idx, device=self.device)
        was_training = self.student.training
        self.student.eval()
        try:
            teacher = sample(self.flow.predictor(), x_T, self.flow.grid(int(phase.teacher_steps)),
                             self.flow.solver, cond=cond, order=int(phase.teacher_order))
            student = sample(self.flow.predictor(self.student_model), x_T,
                             self.flow.grid(int(phase.student_steps)),
                             self.flow.student_solver(phase), cond=cond,
                             order=int(phase.student_order))
        finally:
            self.student.train(was_training)
        return self.teacher.decode(teacher).float(), self.teacher.decode(student).float()

    def _identity(self) -> dict[str, Any]:
        return identity(asdict(self.teacher_spec), self.policy.to_dict())

    def checkpoint_identity(self) -> dict[str, Any]:
        """``checkpoint["saq"]``: teacher spec and policy, the student's bucket map and the
        fingerprint of the teacher's weights (every student checkpoint: fit's and ptq's)."""
        return {**self._identity(), "bucket_map": self.student.bucket_map.to_dict(),
                "teacher_fingerprint": self.teacher_fingerprint}

    # ------------------------------------------------------------------ checkpoints
    def check_checkpoint(self, saved: Mapping[str, Any] | None, source: str) -> None:
        """A checkpoint's ``saq`` block is this run's (teacher, policy, teacher weights unless
        ``allow_teacher_transfer``); its bucket map becomes the student's."""
        check_identity(saved, self._identity(), source)
        check_teacher_fingerprint(saved, self.teacher_fingerprint, source, self.allow_teacher_transfer)
        restore_bucket_map(self.student, saved, source)

    def load_student_state(self, state_dict: Mapping[str, Tensor]) -> None:
        """The student's trainable state from a checkpoint's ``state_dict`` (keys ``student.*``)."""
        load_trainable_state_dict(self.student, split_student_state(state_dict))


def _as_spec(teacher: ModelSpec | dict[str, Any] | None) -> ModelSpec:
    if teacher is None:
        return ModelSpec(kind="digits", name="digits")
    if isinstance(teacher, ModelSpec):
        return teacher
    # jsonargparse marks fields read from a nested file with ``__path__``
    return ModelSpec(**{k: v for k, v in dict(teacher).items() if not k.startswith("__")})


def _as(value: T | Mapping[str, Any] | None, cls: type[T]) -> T:
    """A settings block from its YAML mapping (``None``: the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    return cls(**dict(value))
