"""Implementations of the quantizer pieces: the ``quant_kernels`` switch (:mod:`.select`) and the
fused Triton kernels (:mod:`.fused`, imported only when chosen: importing it decides whether its
kernels compile for the GPU or run in Triton's interpreter)."""

from .select import (
           KERNEL_CHOICES,
           QuantKernels,
           QuantKernelsError,
           check_kernels,
           kernel_path,
           triton_unavailable,
)

__all__ = ["KERNEL_CHOICES", "QuantKernels", "QuantKernelsError", "check_kernels", "kernel_path",
           "triton_unavailable"]
