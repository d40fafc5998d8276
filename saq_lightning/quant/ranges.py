"""Initial (step, zero-point) from data: min-max, or an L_p clipping search.

Every function works on a 2-D view ``[groups, values]`` and returns one (step, zero-point)
per group, so per-output-channel weight initialisation is one vectorised computation over all
channels (the search loops over candidate clipping ratios, never over channels).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .functional import MIN_STEP, fake_quant_forward

INIT_METHODS = ("minmax", "lp")
_BLOCK_ELEMENTS = 1 << 22


def check_init_method(method: str) -> str:
    if method not in INIT_METHODS:
        raise ValueError(f"unknown quantizer init method {method!r}; choose one of {INIT_METHODS}")
    return method


def params_from_range(
    lo: Tensor, hi: Tensor, qmin: int, qmax: int, symmetric: bool
) -> tuple[Tensor, Tensor]:
    """(step, integer zero point) that map ``[lo, hi]`` onto the code range.

    Asymmetric ranges are widened to contain 0 (so that 0 is exactly representable).
    Symmetric quantizers use ``max(|lo|, |hi|) / qmax`` and a zero point of 0.
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if symmetric:
        step = (torch.maximum(-lo, hi) / qmax).clamp_min(MIN_STEP)
        return step, torch.zeros_like(step)
    step = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_STEP)
    zero_point = torch.round(qmin - lo / step).clamp(qmin, qmax)
    return step, zero_point


def minmax_init(x2d: Tensor, qmin: int, qmax: int, symmetric: bool) -> tuple[Tensor, Tensor]:
    """Per-row min-max initialisation of a ``[groups, values]`` tensor."""
    x2d = x2d.float()
    return params_from_range(x2d.amin(1), x2d.amax(1), qmin, qmax, symmetric)


def lp_init(
    x2d: Tensor,
    qmin: int,
    qmax: int,
    symmetric: bool,
    p: float = 2.4,
    n_candidates: int = 100,
    min_ratio: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Per-row clipping search minimising ``sum |x - fq(x)|^p``.

    Candidate ranges are ``c * [min, max]`` for ``c`` in ``linspace(min_ratio, 1, n_candidates)``;
    each candidate is evaluated for all rows at once.
    """
    x2d = x2d.float()
    lo0, hi0 = x2d.amin(1), x2d.amax(1)
    ratios = torch.linspace(min_ratio, 1.0, n_candidates, device=x2d.device)
    # candidates are evaluated in blocks of [k, groups, values] (bounded memory, few Python steps)
    block = max(1, _BLOCK_ELEMENTS // max(1, x2d.numel()))
    best_err = best_step = best_zp = None
    for start in range(0, n_candidates, block):
        c = ratios[start : start + block][:, None]  # [k, 1]
        step, zp = params_from_range(lo0 * c, hi0 * c, qmin, qmax, symmetric)  # [k, groups]
        err = _lp_error(x2d[None], step[..., None], zp[..., None], qmin, qmax, p)  # [k, groups]
        err, arg = err.min(0)
        step = step.gather(0, arg[None])[0]
        zp = zp.gather(0, arg[None])[0]
        if best_err is None:
            best_err, best_step, best_zp = err, step, zp
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_step = torch.where(better, step, best_step)
            best_zp = torch.where(better, zp, best_zp)
    return best_step, best_zp


def _lp_error(x: Tensor, step: Tensor, zp: Tensor, qmin: int, qmax: int, p: float) -> Tensor:
    y = fake_quant_forward(x, step, zp, qmin, qmax)
    return y.sub_(x).abs_().pow_(p).sum(-1)


def init_params(
    x2d: Tensor, qmin: int, qmax: int, symmetric: bool, method: str, p: float = 2.4
) -> tuple[Tensor, Tensor]:
    """Dispatch to :func:`minmax_init` or :func:`lp_init`."""
    if check_init_method(method) == "minmax":
        return minmax_init(x2d, qmin, qmax, symmetric)
    return lp_init(x2d, qmin, qmax, symmetric, p=p)
