"""Low-bit inference runtime for exported students (no Lightning, no samplers).

    from saq_lightning.quant.runtime import load_runtime
    unet = load_runtime("out/w4a4", arithmetic="int8")      # or "weight_only" (W4A16), "fake"
    print(unet.runtime_report)                              # what each layer really computes
    eps = unet(x, t, encoder_hidden_states=c).sample

See docs/quant.md ("Low-bit runtime").
"""

from .kernels import int8_gemm, probe_int8_gemm
from .layers import RuntimeLayer
from .loader import load_runtime, read_config
from .memory import weight_bytes
from .report import LayerArithmetic, RuntimeReport
from .selection import ProbeConfig

__all__ = [
    "LayerArithmetic",
    "ProbeConfig",
    "RuntimeLayer",
    "RuntimeReport",
    "int8_gemm",
    "load_runtime",
    "probe_int8_gemm",
    "read_config",
    "weight_bytes",
]
