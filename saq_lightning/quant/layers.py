"""QuantConv2d / QuantLinear: a wrapped (not copied) Conv2d/Linear with quantizers and LoRA.

Forward of a quantized layer::

    w  = base.weight (+ lora.delta())          # merged before quantization: one integer weight
    y  = op(fq_act(x; table[bucket(t)]), fq_w(w)) + bias

``base`` is the original module: its ``weight``/``bias`` are the teacher's frozen tensors
(shared, never copied). After :func:`~saq_lightning.quant.export.load_exported` a layer holds
integer codes (``qweight``) instead and dequantizes them; ``base`` then has no weight.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from .functional import dequantize, fake_quantize
from .kernels import check_kernels, kernel_path
from .lora import LoRA
from .ops import Conv2dOp, LinearOp, Quantized, identity, merge_lora, quantized_op
from .policy import LayerPlan, check_wrappable
from .quantizers import WeightQuantizer
from .rounding import adaround_quantize
from .timestep_quantizer import TimestepActQuantizer, TimestepContext


def _fake_quant_fp32(x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float) -> Tensor:
    # with grad, this is quantized_op's recomputation in backward: keep what the gradient needs
    x = x if x.dtype == torch.float32 else x.float()
    return fake_quantize(x, step, zero_point, qmin, qmax, grad_factor, torch.is_grad_enabled())


class QuantLayer(nn.Module):
    """Shared logic of :class:`QuantConv2d` and :class:`QuantLinear`: ``base`` and a resolved ``plan``."""

    op: LinearOp | Conv2dOp

    def __init__(self, base: nn.Module, context: TimestepContext, plan: LayerPlan) -> None:
        super().__init__()
        check_wrappable(base, plan.name)
        self.name = plan.name
        self.base = base
        shape = tuple(base.weight.shape)
        self.weight_shape = shape
        p = plan.policy
        self.w_quant = WeightQuantizer(shape, plan.weight_bits, p.weight_symmetric, p.weight_per_channel,
                                       p.weight_init, p.lp_p)
        self.a_quant = TimestepActQuantizer(p.n_buckets, plan.act_bits, context, p.act_symmetric, p.act_init, p.lp_p)
        self.a_quant.name = plan.name
        self.lora = LoRA(shape, plan.lora_rank, p.lora_alpha) if plan.lora_rank > 0 else None
        self.quant_weight = True  # toggled by set_quant_state (e.g. during calibration)
        self.quant_act = True
        self.register_buffer("qweight", None)  # integer codes after load_exported
        self.rounding: nn.Module | None = None  # AdaRound decisions (quant.rounding), SA-PTQ
        self.kernels = "auto"  # quant_kernels: how the quantizer pieces run (quant.kernels)

    # -- implementation -------------------------------------------------------------------------
    def set_kernels(self, choice: str) -> None:
        """``auto`` (fused Triton kernels on CUDA, eager elsewhere), ``triton`` or ``eager``."""
        self.kernels = check_kernels(choice)

    def kernel_paths(self, device: torch.device | None = None) -> tuple[str, str]:
        """``(activation piece, weight piece)`` implementations on ``device`` (default: the layer's):
        ``triton`` or ``eager``. AdaRound rounding and integer weights always run eager."""
        if device is None:
            device = self.w_quant.step.device
        path = kernel_path(self.kernels, device)
        weight = "eager" if self.integer or self.rounding is not None else path
        return path, weight

    # -- weight ---------------------------------------------------------------------------------
    @property
    def integer(self) -> bool:
        return self.qweight is not None

    def merged_weight(self) -> Tensor:
        """FP weight that the weight quantizer sees: ``W + LoRA delta`` (or the dequantized codes)."""
        if self.qweight is not None:
            s, z = self.w_quant.effective()
            return dequantize(self.qweight, s, z)
        w = self.base.weight
        if self.lora is not None:
            w = w + self.lora.delta()
        return w

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            return torch.get_autocast_dtype(dev)
        b = self.base
        return b.weight.dtype if "weight" in b._parameters else torch.float32

    def _weight_piece(self, fused: bool, cdt: torch.dtype) -> Quantized:
        """The weight as a quantizer function of its tensors: merge LoRA, then fake-quantize
        (nearest rounding, or the learnt AdaRound decisions); integer mode: dequantize.
        ``fused``: merge and fake-quantize in the Triton kernels, written as ``cdt``."""
        wq = self.w_quant
        if self.integer:
            return Quantized(dequantize, (self.qweight, *wq.effective()))
        lora = self.lora
        merge = (self.base.weight, lora.A, lora.B) if lora is not None else (self.base.weight, None, None)
        scaling = lora.scaling if lora is not None else 1.0
        if not self.quant_weight:
            return Quantized(partial(merge_lora, scaling=scaling), merge)
        if not wq.is_initialised:
            raise RuntimeError(
                f"weight quantizer of {self.name!r} is not initialised: run "
                "saq_lightning.quant.calibrate(student, batches) first"
            )
        if self.rounding is not None:
            fn = partial(_merged_adaround, scaling, wq.qmin, wq.qmax, self.rounding.offset)
            return Quantized(fn, (*merge, *wq.effective(), self.rounding.decisions))
        if fused:
            from .kernels.fused import fused_merged_fake_quant

            fn = partial(fused_merged_fake_quant, scaling, wq.qmin, wq.qmax, wq.grad_factor, cdt)
        else:
            fn = partial(_merged_fake_quant, scaling, wq.qmin, wq.qmax, wq.grad_factor)
        return Quantized(fn, (*merge, *wq.effective()))

    def _act_piece(self, x: Tensor, fused: bool, cdt: torch.dtype) -> Quantized:
        if not self.quant_act:
            return Quantized(identity, (x,))
        aq = self.a_quant
        s, z, gf = aq.params_for(x)
        if fused:
            from .kernels.fused import fused_fake_quant

            return Quantized(partial(fused_fake_quant, qmin=aq.qmin, qmax=aq.qmax, grad_factor=gf, out_dtype=cdt),
                             (x, s, z))
        return Quantized(partial(_fake_quant_fp32, qmin=aq.qmin, qmax=aq.qmax, grad_factor=gf), (x, s, z))

    def forward(self, x: Tensor) -> Tensor:
        cdt = self._compute_dtype(x)
        act, weight = self.kernel_paths(x.device)
        w = self._weight_piece(weight == "triton", cdt)
        self.a_quant.observe(x)
        return quantized_op(self.op, self._act_piece(x, act == "triton", cdt), w, self.bias, cdt)

    # -- export ---------------------------------------------------------------------------------
    @torch.no_grad()
    def weight_codes(self) -> Tensor:
        """Integer codes of the merged weight (int16 tensor in ``[qmin, qmax]``)."""
        if self.qweight is not None:
            return self.qweight.to(torch.int16)
        if self.rounding is not None:
            return self.rounding.codes(self.merged_weight(), self.w_quant)
        return self.w_quant.codes(self.merged_weight())

    def load_integer_weight(self, codes: Tensor) -> None:
        """Switch to integer mode: keep ``codes``, drop the FP weight and the LoRA adapter."""
        if tuple(codes.shape) != self.weight_shape:
            raise ValueError(f"{self.name}: codes of shape {tuple(codes.shape)}, expected {self.weight_shape}")
        dtype = torch.int8 if self.w_quant.qmin < 0 else torch.uint8
        self.register_buffer("qweight", codes.to(dtype))
        if "weight" in self.base._parameters:
            del self.base._parameters["weight"]
        self.lora = None
        self.rounding = None
        self.w_quant.mark_initialised()

    def extra_repr(self) -> str:
        lora = self.lora.rank if self.lora is not None else 0
        mode = "int" if self.integer else "fake"
        return f"w{self.w_quant.bits}a{self.a_quant.bits}, lora={lora}, {mode}"


def _merged_fake_quant(scaling, qmin, qmax, grad_factor, W, A, B, step, zero_point) -> Tensor:
    return _fake_quant_fp32(merge_lora(W, A, B, scaling), step, zero_point, qmin, qmax, grad_factor)


def _merged_adaround(scaling, qmin, qmax, offset, W, A, B, step, zero_point, decisions) -> Tensor:
    return adaround_quantize(merge_lora(W, A, B, scaling), step, zero_point, offset(decisions), qmin, qmax)


class QuantConv2d(QuantLayer):
    """Quantized wrapper of an ``nn.Conv2d`` (zero padding, numeric padding only)."""

    def __init__(self, base: nn.Conv2d, context: TimestepContext, plan: LayerPlan) -> None:
        super().__init__(base, context, plan)
        self.op = Conv2dOp(tuple(base.stride), tuple(base.padding), tuple(base.dilation), base.groups)


class QuantLinear(QuantLayer):
    """Quantized wrapper of an ``nn.Linear``."""

    op = LinearOp()


_WRAPPERS: dict[type[nn.Module], type[QuantLayer]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def wrapper_for(module: nn.Module) -> type[QuantLayer]:
    check_wrappable(module)
    for cls, wrapper in _WRAPPERS.items():
        if isinstance(module, cls):
            return wrapper
    raise AssertionError  # unreachable
