"""QuantConv2d / QuantLinear: a wrapped (not copied) Conv2d/Linear with quantizers and LoRA.

Forward of a quantized layer::

    w  = base.weight (+ lora.delta())          # merged before quantization: one integer weight
    y  = op(fq_act(x; table[bucket(t)]), fq_w(w)) + bias

``base`` is the original module: its ``weight``/``bias`` are the teacher's frozen tensors
(shared, never copied). After :func:`~saq_lightning.quant.export.load_exported` a layer holds
integer codes (``qweight``) instead and dequantizes them; ``base`` then has no weight.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import FakeQuantize, dequantize
from .fused import FusedSpec, QuantConv2dFunction, QuantLinearFunction
from .lora import LoRA
from .quantizers import WeightQuantizer
from .timestep_quantizer import TimestepActQuantizer, TimestepContext


class QuantLayer(nn.Module):
    """Shared logic of :class:`QuantConv2d` and :class:`QuantLinear`."""

    _function: type[torch.autograd.Function]

    def __init__(
        self,
        base: nn.Module,
        context: TimestepContext,
        *,
        weight_bits: int,
        act_bits: int,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        n_buckets: int = 100,
        weight_symmetric: bool = False,
        weight_per_channel: bool = True,
        weight_init: str = "lp",
        act_symmetric: bool = False,
        act_init: str = "lp",
        lp_p: float = 2.4,
        name: str = "",
    ) -> None:
        super().__init__()
        self.name = name
        self.base = base
        shape = tuple(base.weight.shape)
        self.weight_shape = shape
        self.w_quant = WeightQuantizer(shape, weight_bits, weight_symmetric, weight_per_channel, weight_init, lp_p)
        self.a_quant = TimestepActQuantizer(n_buckets, act_bits, context, act_symmetric, act_init, lp_p)
        self.a_quant.name = name
        self.lora = LoRA(shape, lora_rank, lora_alpha) if lora_rank > 0 else None
        self.quant_weight = True  # toggled by set_quant_state (e.g. during calibration)
        self.quant_act = True
        self.fused = True  # False: plain autograd chain (reference path, same numbers)
        self._spec_cache: dict[float, FusedSpec] = {}
        self.register_buffer("qweight", None)  # integer codes after load_exported
        self.rounding: nn.Module | None = None  # AdaRound decisions (quant.rounding), SA-PTQ

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

    def _spec(self, a_gf: float) -> FusedSpec:
        """The static description of a call (cached: it only depends on the input's sample size)."""
        spec = self._spec_cache.get(a_gf)
        if spec is None:
            spec = self._spec_cache[a_gf] = self._make_spec(a_gf)
        return spec

    def _make_spec(self, a_gf: float) -> FusedSpec:
        raise NotImplementedError

    def _lora_scaling(self) -> float:
        return self.lora.scaling if self.lora is not None else 1.0

    def forward(self, x: Tensor) -> Tensor:
        quant_w = self.quant_weight and not self.integer
        if quant_w and not self.w_quant.is_initialised:
            raise RuntimeError(
                f"weight quantizer of {self.name!r} is not initialised: run "
                "saq_lightning.quant.calibrate(student, batches) first"
            )
        aq, wq = self.a_quant, self.w_quant
        aq.observe(x)
        cdt = self._compute_dtype(x)
        if not self.fused or (quant_w and self.rounding is not None):
            a_s = a_z = w_s = w_z = None
            a_gf = 1.0
            if self.quant_act:
                a_s, a_z, a_gf = aq.params_for(x)
            w = self.merged_weight()
            if quant_w and self.rounding is not None:  # learnt rounding: w is already fake-quantized
                w = self.rounding(w, wq)
            elif quant_w:
                w_s, w_z = wq.effective()
            return self._unfused(x, w, a_s, a_z, w_s, w_z, self._spec(a_gf), cdt)
        a_step = a_zp = a_idx = None
        a_gf = 1.0
        if self.quant_act:
            a_idx, a_gf = aq.bucket_for(x)
            a_step, a_zp = aq.step, aq.zero_point
        w_step, w_zp = (wq.step, wq.zero_point) if quant_w else (None, None)
        if self.integer:
            W, A, B = self.merged_weight(), None, None
        else:
            W = self.base.weight
            A, B = (self.lora.A, self.lora.B) if self.lora is not None else (None, None)
        return self._function.apply(
            x, W, A, B, self.bias, a_step, a_zp, a_idx, w_step, w_zp, self._spec(a_gf), cdt
        )

    def _unfused(self, x, w, a_s, a_z, w_s, w_z, spec: FusedSpec, cdt: torch.dtype) -> Tensor:
        """Reference path: the same numerics as plain autograd ops (keeps more tensors alive)."""
        if a_s is not None:
            x = FakeQuantize.apply(x.float(), a_s, a_z, *spec.a_qrange, spec.a_grad_factor)
        if w_s is not None:
            w = FakeQuantize.apply(w.float(), w_s, w_z, *spec.w_qrange, spec.w_grad_factor)
        b = None if self.bias is None else self.bias.to(cdt)
        return self._function._op(x.to(cdt), w.to(cdt), b, spec)

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
        self.w_quant._initialised = True
        self.w_quant.initialised.fill_(True)

    def extra_repr(self) -> str:
        lora = self.lora.rank if self.lora is not None else 0
        mode = "int" if self.integer else "fake"
        return f"w{self.w_quant.bits}a{self.a_quant.bits}, lora={lora}, {mode}"


class QuantConv2d(QuantLayer):
    """Quantized wrapper of an ``nn.Conv2d`` (zero padding, numeric padding only)."""

    _function = QuantConv2dFunction

    def __init__(self, base: nn.Conv2d, context: TimestepContext, **kwargs) -> None:
        check_wrappable(base, kwargs.get("name", ""))
        super().__init__(base, context, **kwargs)
        self._conv = {"stride": tuple(base.stride), "padding": tuple(base.padding),
                      "dilation": tuple(base.dilation), "groups": base.groups}

    def _make_spec(self, a_gf: float) -> FusedSpec:
        return FusedSpec(
            a_qrange=(self.a_quant.qmin, self.a_quant.qmax), a_grad_factor=a_gf,
            w_qrange=(self.w_quant.qmin, self.w_quant.qmax), w_grad_factor=self.w_quant.grad_factor,
            lora_scaling=self._lora_scaling(), **self._conv,
        )


class QuantLinear(QuantLayer):
    """Quantized wrapper of an ``nn.Linear``."""

    _function = QuantLinearFunction

    def __init__(self, base: nn.Linear, context: TimestepContext, **kwargs) -> None:
        check_wrappable(base, kwargs.get("name", ""))
        super().__init__(base, context, **kwargs)

    def _make_spec(self, a_gf: float) -> FusedSpec:
        return FusedSpec(
            a_qrange=(self.a_quant.qmin, self.a_quant.qmax), a_grad_factor=a_gf,
            w_qrange=(self.w_quant.qmin, self.w_quant.qmax), w_grad_factor=self.w_quant.grad_factor,
            lora_scaling=self._lora_scaling(),
        )


WRAPPABLE: dict[str, type[nn.Module]] = {"Conv2d": nn.Conv2d, "Linear": nn.Linear}
_WRAPPERS: dict[type[nn.Module], type[QuantLayer]] = {nn.Conv2d: QuantConv2d, nn.Linear: QuantLinear}


def check_wrappable(module: nn.Module, name: str = "") -> None:
    """Raise ``TypeError`` if ``module`` is not a Conv2d/Linear this package can quantize."""
    where = f" {name!r}" if name else ""
    if not isinstance(module, tuple(_WRAPPERS)):
        raise TypeError(
            f"cannot wrap module{where} of type {type(module).__name__}: quantized layers exist for "
            f"{sorted(WRAPPABLE)}"
        )
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        raise TypeError(
            f"cannot wrap Conv2d{where}: padding={module.padding!r}, padding_mode="
            f"{module.padding_mode!r} (only numeric zero padding is supported)"
        )


def wrapper_for(module: nn.Module) -> type[QuantLayer]:
    check_wrappable(module)
    for cls, wrapper in _WRAPPERS.items():
        if isinstance(module, cls):
            return wrapper
    raise AssertionError  # unreachable
