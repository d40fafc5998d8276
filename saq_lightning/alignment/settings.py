"""Plain-data settings of an SA-QLoRA run (YAML blocks under ``model.init_args``).

Dataclasses so that LightningCLI/jsonargparse type-check them and ``dataclasses.asdict`` turns them
into the plain dicts that ``save_hyperparameters`` stores (:func:`init_hyperparameters`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, Literal

STORAGE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class LossSettings:
    """MOTA loss weights and reductions: ``w_mse * MSE + w_cos * (1 - cos)``.

    ``mse_reduction``/``cos_reduction``: ``mean`` (default: per-element mean MSE, batch means) or
    ``sum`` (MSE summed over elements and batch; ``sum_batch (1 - cos)``). The author's
    development code: ``sum``/``sum`` with ``w_mse = 1``, ``w_cos = 100``.

    The balance is resolution-independent only with ``mse_reduction: mean``: a per-sample cosine
    against a per-element mean MSE keeps its ratio at every D, a summed MSE multiplies the MSE
    weight by D (the author's ``w_cos: 100`` is ``w_cos = 100 / D`` of the mean form: 1.56 on
    digits, 0.008 on LDM-4). :meth:`per_element_cos_weight` gives that figure; ``fit`` prints it
    for a ``sum`` reduction. ``mse_normalization: target_energy`` divides each sample's MSE by its
    target's mean energy (relative MSE), so that the balance also ignores the target's scale.

    ``grid_anchor``: in solver-aware phases (student order >= 2), also this weight times the same
    loss between the student's and the teacher's directions at the grid point, ``eps(x_s, s)``:
    the first evaluation of both steps. A singlestep DPM-Solver-2 step uses it only to place its
    intermediate point, so the step's loss alone leaves it nearly free, and with intermediate
    points in activation buckets of their own such a student fails under DPM-Solver-1 and 3
    (README, "Solver-aware students"). Anchored, it keeps the same-input direction there (its
    intermediate point then sits where the teacher's does). The MOTA target there instead would
    contradict the step's own loss (measured on the Gaussian problem: DPM-Solver-2 error 0.12 ->
    0.51). Costs one teacher evaluation per batch. ``0``: the step alone.
    """

    w_mse: float = 1.0
    w_cos: float = 1.0
    mse_reduction: Literal["mean", "sum"] = "mean"
    cos_reduction: Literal["mean", "sum"] = "mean"
    mse_normalization: Literal["none", "target_energy"] = "none"
    grid_anchor: float = 0.0

    def __post_init__(self) -> None:
        if self.w_mse < 0 or self.w_cos < 0 or self.w_mse + self.w_cos == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got w_mse={self.w_mse}, "
                             f"w_cos={self.w_cos}")
        for name in ("mse_reduction", "cos_reduction"):
            if getattr(self, name) not in ("mean", "sum"):
                raise ValueError(f"loss.{name} must be 'mean' or 'sum', got {getattr(self, name)!r}")
        if not self.grid_anchor >= 0:
            raise ValueError(f"loss.grid_anchor must be >= 0, got {self.grid_anchor}")
        if self.mse_normalization not in ("none", "target_energy"):
            raise ValueError(f"loss.mse_normalization must be 'none' or 'target_energy', got "
                             f"{self.mse_normalization!r}")

    def per_element_cos_weight(self, elements: int, batch_size: int = 1) -> float:
        """The cosine's weight relative to a weight-1 per-element mean MSE (per sample), for
        samples of ``elements`` values in batches of ``batch_size``: ``w_cos / w_mse`` in the
        mean form, ``w_cos / (w_mse * D)`` with a summed MSE (a summed cosine and a summed MSE
        scale alike with the batch; a summed cosine against a mean MSE by ``batch_size``)."""
        if self.w_mse == 0:
            return float("inf")
        mse_scale = (elements * batch_size) if self.mse_reduction == "sum" else 1.0
        cos_scale = batch_size if self.cos_reduction == "sum" else 1.0
        return self.w_cos * cos_scale / (self.w_mse * mse_scale)

    def balance_line(self, elements: int, batch_size: int = 1) -> str | None:
        """One line saying what a resolution-dependent balance means at ``elements`` per sample
        (``None`` for the resolution-independent mean form)."""
        if self.mse_reduction == "mean" and self.cos_reduction == "mean":
            return None
        weight = self.per_element_cos_weight(elements, batch_size)
        return (f"note: loss.mse_reduction={self.mse_reduction}, cos_reduction={self.cos_reduction} "
                f"over D = {elements} elements per sample: the cosine weighs {weight:.4g} against "
                f"a per-element mean MSE (the resolution-independent form is mse_reduction: mean "
                f"with w_cos: {weight:.4g}); this balance changes with the resolution")


@dataclass
class OptimizerSettings:
    """AdamW over the quant core's parameter groups, with warm-up and linear decay.

    ``lr`` is the LoRA rate (of the layer with the mean weight step when ``lora_lr_mode`` is
    ``weight_step``; unused by ``scale_aware``, where layer ``l`` trains at
    ``mean(weight step of l) / lora_lr_divisor``, the author's ``/2500``); ``weight_step_lr`` and ``act_lr`` are the weight-quantizer and
    activation-table rates. Every rate follows the same schedule: linear warm-up over
    ``warmup_steps``, then (``decay: linear``) a linear decay to ``final_lr_factor`` times the
    initial rate at the last optimizer step (``trainer.max_steps``).
    ``weight_decay``: AdamW's decoupled decay of the LoRA groups; ``act_weight_decay``: of the
    activation tables (step sizes and zero points; the author's code decays both at AdamW's
    default 0.01). Weight-quantizer steps never decay.
    """

    lr: float = 5e-4
    weight_step_lr: float = 1e-6
    act_lr: float = 5e-4
    lora_lr_mode: Literal["weight_step", "constant", "scale_aware"] = "weight_step"
    lora_lr_divisor: float = 2500.0
    weight_decay: float = 0.0
    act_weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    decay: Literal["linear", "constant"] = "linear"
    final_lr_factor: float = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for name in ("lr", "weight_step_lr", "act_lr", "weight_decay", "act_weight_decay", "eps"):
            if getattr(self, name) < 0:
                raise ValueError(f"optimizer.{name} must be >= 0, got {getattr(self, name)}")
        if self.lora_lr_divisor <= 0:
            raise ValueError(f"optimizer.lora_lr_divisor must be > 0, got {self.lora_lr_divisor}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.final_lr_factor <= 1.0:
            raise ValueError(f"optimizer.final_lr_factor must be in [0, 1], got {self.final_lr_factor}")
        if self.decay not in ("linear", "constant"):
            raise ValueError(f"optimizer.decay must be 'linear' or 'constant', got {self.decay!r}")


@dataclass
class CalibrationSettings:
    """How the student's quantizers are initialised before the first training step.

    The FP teacher is rolled out with ``solver`` over ``steps`` steps (default: one per
    activation timestep bucket, so every bucket sees real trajectory states) from
    ``num_samples`` seeded initial noises; the student is run over those states (and their
    null-condition copies when training uses CFG) and each bucket's activation range is set from
    its own data. Done once at the start of a run, never on resume.
    """

    num_samples: int = 64
    steps: int | None = None
    solver: str = "ddim"
    batch_size: int = 256
    max_values_per_bucket: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "max_values_per_bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibration.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"calibration.steps must be >= 1, got {self.steps}")


@dataclass
class GenerationSettings:
    """How ``generate`` writes teacher trajectories (also what ``fit`` expects of the shards).

    Trajectories are laid out phase by phase: phase ``p`` gets ``trajectories_per_phase[p]``
    consecutive trajectory indices (one int: the same for every phase), each a multiple of
    ``trajectories_per_shard`` so that every shard holds one phase. Trajectory ``i``'s initial
    noise and condition are a pure function of ``(seed, i)``.

    ``store_targets``: write ``eps_eff`` (the teacher's effective direction) with every point;
    without it ``fit`` computes the targets online. ``prompts``: text models only, a file with
    one prompt per line (trajectory ``i`` uses line ``i % lines``). ``num_classes``: class models
    only, the number of real classes (default: the conditioner's, without the null class).
    ``store_pairs``: also write every point's second-order intermediate point (``x_mid``,
    ``s_mid``, ``paired``; see :mod:`saq_lightning.data.trajectory_pairs`), the calibration pairs of
    SA-PTQ; needs teacher order 2 and ``teacher_steps == student_steps`` in every phase.
    ``validation_trajectories_per_phase``: held-out trajectories per phase that ``generate`` also
    writes to ``<shards>/val`` (another noise seed; the validation set, ``val/alignment_loss``).
    """

    trajectories_per_phase: int | list[int] = 256
    trajectories_per_shard: int = 64
    rollout_batch_size: int | None = None
    storage_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    store_targets: bool = True
    seed: int = 0
    prompts: str | None = None
    num_classes: int | None = None
    store_pairs: bool = False
    validation_trajectories_per_phase: int = 0

    def __post_init__(self) -> None:
        if self.validation_trajectories_per_phase < 0:
            raise ValueError(f"generation.validation_trajectories_per_phase must be >= 0, got "
                             f"{self.validation_trajectories_per_phase}")
        if self.trajectories_per_shard < 1:
            raise ValueError(f"generation.trajectories_per_shard must be >= 1, got "
                             f"{self.trajectories_per_shard}")
        if self.rollout_batch_size is not None and self.rollout_batch_size < 1:
            raise ValueError(f"generation.rollout_batch_size must be >= 1, got {self.rollout_batch_size}")
        if self.storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"generation.storage_dtype must be one of {STORAGE_DTYPES}, got "
                             f"{self.storage_dtype!r}")
        if self.seed < 0:
            raise ValueError(f"generation.seed must be >= 0, got {self.seed}")

    def per_phase(self, num_phases: int) -> list[int]:
        """Trajectories of every phase; each a positive multiple of ``trajectories_per_shard``."""
        counts = self.trajectories_per_phase
        counts = [counts] * num_phases if isinstance(counts, int) else list(counts)
        if len(counts) != num_phases:
            raise ValueError(f"generation.trajectories_per_phase lists {len(counts)} counts for "
                             f"{num_phases} phases")
        for p, n in enumerate(counts):
            if n < 1 or n % self.trajectories_per_shard:
                raise ValueError(
                    f"generation.trajectories_per_phase[{p}] = {n} must be a positive multiple of "
                    f"trajectories_per_shard = {self.trajectories_per_shard} (one phase per shard)")
        return counts


@dataclass
class TeacherSettings:
    """How the FP teacher's trajectories and targets are computed (shared by generate and fit).

    ``solver``: the solver family whose order-k step defines the target (``dpm``: DPM-Solver-k,
    ``dpm++``: DPM-Solver++(kS), ``dpm_multistep`` / ``dpm++_multistep``: DPM-Solver(++)-kM,
    ``plms``: PLMS of order k <= 4); singlestep solvers make ``eps_eff`` a pure function of the
    point, multistep ones also of the trajectory's previous grid states (records carry them as
    ``x_hist``), so targets computed online and cached in shards agree.
    ``spacing``: the time grid of every phase (``time_uniform``, ``logSNR``, ``time_quadratic``,
    ``leading``). ``guidance_scale``: classifier-free guidance of the teacher rollout *and* of both
    sides of the loss (1 = none).
    """

    solver: Literal["dpm", "dpm++", "dpm_multistep", "dpm++_multistep", "plms"] = "dpm"
    spacing: Literal["time_uniform", "logSNR", "time_quadratic", "leading"] = "time_uniform"
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        families = ("dpm", "dpm++", "dpm_multistep", "dpm++_multistep", "plms")
        if self.solver not in families:
            raise ValueError(f"teacher solver family must be one of {families}, got {self.solver!r}")
        if self.guidance_scale <= 0:
            raise ValueError(f"guidance_scale must be > 0, got {self.guidance_scale}")


def init_hyperparameters(init: Callable[..., Any], values: Mapping[str, Any],
                         not_saved: Collection[str] = ()) -> dict[str, Any]:
    """The hyperparameters of a module: every argument of its ``init`` (but ``not_saved``) with its
    value in ``values`` (the init's locals, normalised), as plain data: settings dataclasses as
    dicts, objects with ``to_dict`` (a ``QuantPolicy``) by it."""
    def plain(value: Any) -> Any:
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value

    names = [n for n in inspect.signature(init).parameters if n != "self" and n not in not_saved]
    return {n: plain(values[n]) for n in names}
