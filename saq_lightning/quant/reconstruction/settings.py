"""Plain-data settings of a block reconstruction (the ``ptq:`` block of a PTQ config).

Defaults are the method's lineage (BRECQ / AdaRound / Q-Diffusion): 1024 calibration samples,
10k iterations per block, rounding weight 0.01, beta annealed 20 -> 2 after a warm-up of 0.2, then
5k iterations of activation step sizes at lr 4e-4. The L_p (p = 2.4) initialisation of every
quantizer is the policy's (``lp_p``), done by the ordinary calibration before the first block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Objective = Literal["same_input", "mixed_order"]
PairRoles = Literal["fp_first_order", "fp_second_order"]
SameInputPoints = Literal["grid", "grid_and_intermediate"]

#: module types that are one reconstruction block each (diffusers UNet2DModel / UNet2DConditionModel)
DEFAULT_BLOCK_TYPES = ["ResnetBlock2D", "Transformer2DModel", "Attention", "Downsample2D",
                       "Upsample2D", "TimestepEmbedding"]
#: module names (fnmatch globs) that are one block each
DEFAULT_BLOCK_PATTERNS = ["conv_in", "conv_out"]


@dataclass
class ReconstructionSettings:
    """What SA-PTQ / BRECQ reconstruction does per block.

    ``objective``: ``same_input`` (plain BRECQ: the FP and the quantized block see the same
    trajectory point, each point with its own FP output) or ``mixed_order`` (SA-PTQ: pairs from one
    DPM-Solver-2 rollout of an ``x_T``: a grid point ``x_{t_j}`` of that second-order rollout and
    the intermediate point ``x_{s_j}`` of its step from ``x_{t_j}``).

    ``pair_roles`` (for ``mixed_order``): ``fp_first_order`` gives the FP block the grid point
    ``x_{t_j}`` and the quantized block the intermediate point ``x_{s_j}`` (the paper's equations);
    ``fp_second_order`` swaps them (the student at the grid point mimics the teacher at the
    intermediate point, as MOTA does for whole directions). ``None``: the caller decides by the
    sampler the student is for (``alignment/ptq_sampler.py``: a first-order sampler takes
    ``fp_second_order``), before it builds the pairs.

    ``same_input_points`` (for ``same_input``): ``grid`` reconstructs on the grid points only;
    ``grid_and_intermediate`` on the grid points and the intermediate points of their steps (half
    the samples each), the plain-BRECQ control with the same calibration coverage as
    ``mixed_order`` (a second-order sampler queries both).

    Loss per block: ``w_mse * sum-of-squares per sample (mean over samples) + w_cos * (1 - cos)``
    plus the rounding regulariser ``rounding_weight * sum(1 - |2h - 1|^beta)``.

    ``block_types`` / ``block_patterns``: module class names / name globs that make a block
    (``None``: the defaults below, which cover diffusers' UNet2DModel and UNet2DConditionModel).

    ``cache``: where recorded block inputs live: ``auto`` keeps them in memory up to
    ``cache_limit_gb`` per block and spills to a memory-mapped file in the output folder above.
    """

    objective: Objective = "mixed_order"
    pair_roles: PairRoles | None = None
    same_input_points: SameInputPoints = "grid"
    num_samples: int = 1024
    iters: int = 10000
    batch_size: int = 32
    lr: float = 1e-3
    rounding_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    learn_act_steps: bool = True
    act_iters: int = 5000
    act_lr: float = 4e-4
    w_mse: float = 1.0
    w_cos: float = 0.0
    block_types: list[str] | None = None
    block_patterns: list[str] | None = None
    record_batch_size: int = 64
    cache: Literal["auto", "memory", "disk"] = "auto"
    cache_limit_gb: float = 4.0
    seed: int = 0
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.objective not in ("same_input", "mixed_order"):
            raise ValueError(f"ptq.objective must be 'same_input' or 'mixed_order', got {self.objective!r}")
        if self.pair_roles not in (None, "fp_first_order", "fp_second_order"):
            raise ValueError(f"ptq.pair_roles must be 'fp_first_order', 'fp_second_order' or null (by the "
                             f"sampler), got {self.pair_roles!r}")
        if self.same_input_points not in ("grid", "grid_and_intermediate"):
            raise ValueError(f"ptq.same_input_points must be 'grid' or 'grid_and_intermediate', got "
                             f"{self.same_input_points!r}")
        if self.objective == "mixed_order" and self.same_input_points != "grid":
            raise ValueError("ptq.same_input_points is a same_input setting (mixed_order pairs the grid "
                             "and the intermediate points by role): set ptq.objective same_input")
        for name in ("num_samples", "batch_size", "record_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"ptq.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("iters", "act_iters"):
            if getattr(self, name) < 0:
                raise ValueError(f"ptq.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"ptq.warmup must be in [0, 1), got {self.warmup}")
        if self.w_mse < 0 or self.w_cos < 0 or self.w_mse + self.w_cos == 0:
            raise ValueError(f"ptq.w_mse / ptq.w_cos must be >= 0 and not both 0, got {self.w_mse}, {self.w_cos}")
        if self.cache not in ("auto", "memory", "disk"):
            raise ValueError(f"ptq.cache must be 'auto', 'memory' or 'disk', got {self.cache!r}")
        for name in ("block_types", "block_patterns"):
            if getattr(self, name) is not None:
                setattr(self, name, list(getattr(self, name)))

    def block_definition(self) -> tuple[list[str], list[str], bool]:
        """(types, patterns, strict): the defaults (``None``) are not required to match anything,
        an explicit list is (a typo must not silently leave layers to the one-layer fallback)."""
        strict = self.block_types is not None or self.block_patterns is not None
        types = DEFAULT_BLOCK_TYPES if self.block_types is None else self.block_types
        patterns = DEFAULT_BLOCK_PATTERNS if self.block_patterns is None else self.block_patterns
        return list(types), list(patterns), strict

    def beta(self, it: int) -> float | None:
        """Regulariser exponent at iteration ``it`` (``None`` during the warm-up: no regulariser)."""
        warm = int(self.warmup * self.iters)
        if it < warm:
            return None
        frac = (it - warm) / max(1, self.iters - warm)
        return self.beta_end + (self.beta_start - self.beta_end) * max(0.0, 1.0 - frac)
