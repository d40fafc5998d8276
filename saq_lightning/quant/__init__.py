"""Quantization core: turn a diffusers UNet into a fake-quantized LoRA student, calibrate it,
export it as integer weights. No Lightning, no sampler imports (see docs/quant.md).

Typical use::

    student, report = quantize_model(unet, "w4a4")      # unet becomes the frozen teacher
    print(report)
    calibrate(student, [{"sample": x, "timestep": t, "encoder_hidden_states": c}])
    opt = torch.optim.AdamW(param_groups(student, lr=5e-4))
    ...
    export_student(student, "out/w4a4")
    int_student = load_exported("out/w4a4")
"""

from .attention import QuantAttnProcessor
from .calibrate import calibrate, init_weight_quantizers
from .export import export_student, load_exported, pack_codes, read_manifest, unpack_codes
from .functional import FakeQuantize, fake_quantize, qrange
from .layers import QuantConv2d, QuantLayer, QuantLinear
from .lora import LoRA
from .macs import MacCounts, count_macs
from .model import QuantizedUNet, quantize_model
from .param_groups import param_groups
from .policy import PRESETS, LayerPlan, LayerRule, QuantPolicy, as_policy, preset, resolve_policy
from .quantizers import AffineQuantizer, WeightQuantizer
from .report import PrecisionShare, QuantReport
from .state import load_trainable_state_dict, set_quant_state, trainable_state_dict
from .timestep_quantizer import TimestepActQuantizer, TimestepContext, bucket_index

__all__ = [
    "PRESETS",
    "AffineQuantizer",
    "FakeQuantize",
    "LayerPlan",
    "LayerRule",
    "LoRA",
    "MacCounts",
    "PrecisionShare",
    "QuantAttnProcessor",
    "QuantConv2d",
    "QuantLayer",
    "QuantLinear",
    "QuantPolicy",
    "QuantReport",
    "QuantizedUNet",
    "TimestepActQuantizer",
    "TimestepContext",
    "WeightQuantizer",
    "as_policy",
    "bucket_index",
    "calibrate",
    "count_macs",
    "export_student",
    "fake_quantize",
    "init_weight_quantizers",
    "load_exported",
    "load_trainable_state_dict",
    "pack_codes",
    "param_groups",
    "preset",
    "qrange",
    "quantize_model",
    "read_manifest",
    "resolve_policy",
    "set_quant_state",
    "trainable_state_dict",
    "unpack_codes",
]
