"""``load_runtime(path)``: an exported student running on integer weights (and int8 arithmetic).

The folder is what :func:`~saq_lightning.quant.export.export_student` writes: ``config.json``
(diffusers-style, with a ``quantization_config``), ``manifest.json`` and ``weights.safetensors``.
Exports written before ``config.json`` existed load from the manifest alone.

The result is the student's own :class:`~saq_lightning.quant.model.QuantizedUNet` (same call
signature, same timestep -> bucket mapping, same activation tables) whose quantized layers are
:class:`~saq_lightning.quant.runtime.layers.RuntimeLayer` s; ``.runtime_report`` says what each
layer computes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attention import QuantAttnProcessor
from ..export import CONFIG, FORMAT, ExportMismatchError, load_exported, read_manifest
from ..model import QuantizedUNet
from .kernels import cpu_int8_flags, probe_int8_gemm, storage_bytes
from .layers import ARITHMETICS, RuntimeLayer
from .onednn import onednn_unavailable
from .report import LayerArithmetic, RuntimeReport
from .selection import ProbeConfig, Selection, choose_per_layer
from .triton_conv import triton_unavailable

#: what ``arithmetic=`` accepts; "int4" is refused with an explanation (no such kernel exists).
REQUESTABLE = ("int8", "weight_only", "fake")
#: what ``int8_kernel=`` accepts (see :func:`choose_int8_kernel`).
INT8_KERNELS = ("auto", "torch", "triton", "onednn")
_TRITON_LIMIT = "; a call with a tensor over 2^31 elements falls back to torch._int_mm (int32 offsets)"


def read_config(folder: Path) -> dict[str, Any] | None:
    """The export's ``config.json`` (validated), or ``None`` for an export that predates it."""
    path = folder / CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    qc = config.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != FORMAT:
        raise ValueError(
            f"{path}: no quantization_config with quant_method {FORMAT!r}: not a saq_lightning integer export "
            "(a plain diffusers folder? load it with diffusers instead)"
        )
    return config


def check_export(folder: Path, manifest: dict[str, Any], config: dict[str, Any] | None) -> None:
    """Consistency of config.json, manifest.json and the tensors' shapes (before anything is built),
    so that a mismatch names the file and the layer."""
    from safetensors import safe_open

    if config is not None:
        if config.get("_class_name") != manifest["model"]["class"]:
            raise ValueError(
                f"{folder / CONFIG}: _class_name {config.get('_class_name')!r} but {folder / 'manifest.json'} "
                f"describes {manifest['model']['class']!r}"
            )
        policy = config["quantization_config"].get("policy")
        if policy != manifest["policy"]["name"]:
            raise ValueError(
                f"{folder / CONFIG}: quantization_config.policy {policy!r} but manifest.json holds policy "
                f"{manifest['policy']['name']!r} (files from two exports?)"
            )
    tensors_file = folder / manifest["tensors"]
    if not tensors_file.is_file():
        raise FileNotFoundError(f"{tensors_file}: weights file named by manifest.json is missing")
    n_buckets = int(manifest["n_buckets"])
    with safe_open(str(tensors_file), framework="pt") as f:
        keys = set(f.keys())

        def shape_of(key: str, layer: str) -> list[int]:
            if key not in keys:
                raise ValueError(f"{tensors_file}: layer {layer!r} has no tensor {key!r}")
            return list(f.get_slice(key).get_shape())

        for name, e in manifest["layers"].items():
            numel = math.prod(e["shape"])
            want_q = (numel + 1) // 2 if e["packing"] == "int4x2" else numel
            got_q = math.prod(shape_of(f"{name}.qweight", name))
            if got_q != want_q:
                raise ValueError(
                    f"{tensors_file}: layer {name!r}: qweight holds {got_q} bytes, {want_q} expected for "
                    f"{e['weight_bits']}-bit {e['packing']} codes of shape {e['shape']} (export of another policy?)"
                )
            n_ch = e["shape"][0] if e["weight_per_channel"] else 1
            for kind, n in (("w", n_ch), ("a", n_buckets)):
                for what in ("scale", "zero_point"):
                    got = math.prod(shape_of(f"{name}.{kind}_{what}", name))
                    if got != n:
                        raise ValueError(
                            f"{tensors_file}: layer {name!r}: {kind}_{what} has {got} entries, {n} expected"
                        )


def load_runtime(
    path: str | os.PathLike,
    *,
    arithmetic: str = "int8",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    model: nn.Module | None = None,
    allow_fallback: bool = False,
    int8_kernel: str = "auto",
    probe: ProbeConfig | None = None,
) -> QuantizedUNet:
    """Load an export as a low-bit runtime.

    Args:
        path: export folder.
        arithmetic: ``int8`` (W8A8 / W4A8 / W4A4: integer GEMMs, 4-bit values in int8 kernels),
            ``weight_only`` (W4A16 / W8A16: packed weights dequantized per layer, float
            activations) or ``fake`` (the fake-quant student, for comparison).
        device: where it runs.
        dtype: float dtype of the non-integer parts (activations, FP layers); default fp32
            (e.g. ``torch.bfloat16`` on a GPU). Quantizer tables stay fp32.
        model: FP module of the export's architecture to build on (default: built from the config).
        allow_fallback: if the device has no int8 GEMM, multiply the integer codes in float64
            (exact, slow) instead of raising.
        int8_kernel: for ``arithmetic="int8"``: ``auto`` (Triton on CUDA; on a CPU, per layer,
            oneDNN's int8 kernels where they are exact here, else ``torch._int_mm``, where faster
            than float on the layer's own input, else the weight dequantized once: measured at
            load, see :mod:`.selection`), ``onednn`` (x86 CPU: on every layer they take),
            ``torch`` (``torch._int_mm`` on every layer wherever it runs) or ``triton`` (CUDA, or
            the CPU under ``TRITON_INTERPRET=1``).
        probe: how the CPU per-layer choice measures (example input, batch, repeats, timers) or
            which earlier choice it reuses; default :class:`~.selection.ProbeConfig()`.
    """
    folder = Path(path)
    if arithmetic == "int4":
        raise ValueError(
            "arithmetic='int4': no 4-bit integer GEMM exists in PyTorch on any device here (Hopper GPUs have "
            "no int4 tensor cores either); use arithmetic='int8', which runs 4-bit codes in int8 kernels"
        )
    if arithmetic not in REQUESTABLE:
        raise ValueError(f"unknown arithmetic {arithmetic!r}; expected one of {REQUESTABLE}")
    if int8_kernel not in INT8_KERNELS:
        raise ValueError(f"unknown int8_kernel {int8_kernel!r}; expected one of {INT8_KERNELS}")
    device = torch.device(device)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such export folder")
    config = read_config(folder)
    manifest = read_manifest(folder)
    check_export(folder, manifest, config)
    chosen, kernel = arithmetic, "torch"
    notes: list[str] = []
    if arithmetic == "int8":
        kernel, chosen, line = choose_int8_kernel(device, int8_kernel)
        notes += [line] if line else []
    per_layer = chosen == "int8" and kernel in ("torch", "onednn") and device.type == "cpu" and int8_kernel == "auto"
    if chosen == "int8" and kernel == "torch":  # (oneDNN layers never call torch._int_mm)
        reason = probe_int8_gemm(str(device))
        if reason is not None:
            first = next(iter(manifest["layers"]), "?")
            if not allow_fallback:
                raise RuntimeError(
                    f"{folder}: int8 arithmetic requested for layer {first!r} and {len(manifest['layers']) - 1} "
                    f"others, but {reason}; pass allow_fallback=True for exact float64 emulation, or use "
                    "arithmetic='weight_only'"
                )
            chosen, per_layer = "emulated", False  # every layer, so no kernel line either
            notes = [f"fallback: {reason}; integer codes multiplied in float64"]
    try:
        student = load_exported(folder, model=model, device="cpu", manifest=manifest)
    except ValueError as e:  # the export does not match itself: a user error naming the folder
        if str(folder) in str(e):
            raise
        raise ExportMismatchError(f"{folder}: {e}") from e
    if arithmetic != "fake":
        _swap_layers(student, chosen, kernel)
    student.to(device)
    if dtype is not None:
        _cast_float_parts(student, dtype)
    student.eval()
    selection = choose_per_layer(student, probe or ProbeConfig(), device) if per_layer else None
    student.runtime_report = build_report(student, str(device), arithmetic, notes, selection)
    return student


def choose_int8_kernel(device: torch.device, requested: str) -> tuple[str, str, str]:
    """``(kernel, arithmetic, report line)`` for ``arithmetic="int8"`` on ``device``.

    ``auto``: Triton on CUDA (``torch._int_mm`` if Triton is missing, stated); on a CPU oneDNN's
    int8 conv/linear where they are exact on this processor (:func:`.onednn.onednn_unavailable`;
    PT2E's kernels: no im2col, fused epilogue), else ``torch._int_mm``, then decided per layer
    against float by measurement at load (:func:`.selection.choose_per_layer`: int8 wins on large
    shapes, loses on small ones, and ATen's int8 GEMM is 10-40x slower without VNNI), so that
    ``int8`` never silently runs slower than float."""
    if requested == "onednn":
        why = "oneDNN's int8 kernels run on a CPU" if device.type != "cpu" else onednn_unavailable()
        if why is not None:
            raise ValueError(f"int8_kernel='onednn': {why}")
        return "onednn", "int8", "int8 kernels: oneDNN qconv/qlinear (requested)"
    reason = triton_unavailable(device)
    if requested == "triton":
        if reason is not None:
            raise ValueError(f"int8_kernel='triton': {reason}")
        return "triton", "int8", "int8 kernels: Triton implicit GEMM (requested)" + _TRITON_LIMIT
    if requested == "torch" or device.type not in ("cuda", "cpu"):
        return "torch", "int8", "int8 kernels: torch._int_mm" + (" (requested)" if requested == "torch" else "")
    if device.type == "cuda":
        if reason is None:
            return "triton", "int8", "int8 kernels: Triton implicit GEMM (CUDA)" + _TRITON_LIMIT
        return "torch", "int8", f"fallback: {reason}; int8 kernels: torch._int_mm"
    why = onednn_unavailable()
    if why is None:
        return "onednn", "int8", (f"int8 kernels: oneDNN qconv/qlinear where they beat float per layer "
                                  f"({cpu_int8_flags()}); int8_kernel='onednn' forces them everywhere")
    if probe_int8_gemm(str(device)) is not None:
        return "torch", "int8", ""  # no int8 GEMM at all: the caller raises or emulates, stated
    return "torch", "int8", (f"int8 kernels: torch._int_mm where it beats float per layer ({cpu_int8_flags()}; "
                             f"not oneDNN: {why}); int8_kernel='torch' forces int8 everywhere")


def _swap_layers(student: QuantizedUNet, arithmetic: str, kernel: str = "torch") -> None:
    assert arithmetic in ARITHMETICS
    for name, layer in list(student.quant_layers()):
        parent_name, _, child = name.rpartition(".")
        parent = student.unet.get_submodule(parent_name) if parent_name else student.unet
        setattr(parent, child, RuntimeLayer(layer, arithmetic, kernel))


def _cast_float_parts(student: QuantizedUNet, dtype: torch.dtype) -> None:
    """Cast the float tensors of everything but the quantizer tables / runtime scales."""
    keep = (RuntimeLayer, QuantAttnProcessor)
    skip: set[int] = set()
    for m in student.modules():
        if isinstance(m, keep) or type(m).__name__.endswith("Quantizer"):
            skip.update(id(t) for t in m.modules())
    for m in student.modules():
        if id(m) in skip:
            continue
        for key, p in m._parameters.items():
            if p is not None and p.is_floating_point():
                m._parameters[key] = nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for key, b in m._buffers.items():
            if b is not None and b.is_floating_point():
                m._buffers[key] = b.to(dtype)


def _choice_note(c, selection: Selection) -> str:
    if c.input_shape == ():
        return "chosen by choices= (not measured)"
    how = f"measured at input {list(c.input_shape)}: int8 {c.int8_ms:.3f} ms, float {c.float_ms:.3f} ms"
    if selection.all_float and c.chosen == "int8":
        return how + "; int8 faster here, but the whole mix was slower than all-float"
    if selection.all_int8 and c.chosen != "int8":
        return how + "; float faster here, but all-int8 was the fastest whole model"
    return how + ("" if c.chosen == "int8" else "; float faster: weights dequantized once")


def _memory_line(student: QuantizedUNet) -> str | None:
    """Bytes the once-dequantized layers hold against their packed codes (the price of speed)."""
    rows = [m for m in student.unet.modules() if isinstance(m, RuntimeLayer) and m.arithmetic == "dequantized"]
    if not rows:
        return None
    held = sum(storage_bytes(m.float_weight) for m in rows)
    packed = sum(m.packed_bytes for m in rows)
    return (f"float layers hold their weights dequantized once: {held / 2**20:.2f} MiB fp32 where the packed codes "
            f"take {packed / 2**20:.2f} MiB ({len(rows)} layers); their inputs are fake-quantized as in the student, "
            "so they compute what int8 computes up to fp32 rounding; arithmetic='weight_only' keeps the weights "
            "packed (dequantized per call, float activations: slower)")


def build_report(student: QuantizedUNet, device: str, requested: str, notes: list[str],
                 selection: Selection | None = None) -> RuntimeReport:
    report = RuntimeReport(device=device, requested=requested, notes=list(notes))
    if selection is not None:
        report.notes += selection.lines()
    if (line := _memory_line(student)) is not None:
        report.notes.append(line)
    choices = {} if selection is None else selection.layers
    if requested != "fake" and student.policy.quantize_attention_matmuls:
        report.notes.append("attention matmuls (q k^T, probs v) stay fake-quant float: no integer kernel for them")
    for name, m in student.unet.named_modules():
        if isinstance(m, RuntimeLayer):
            kind = m.kind if m.kind == "Linear" else f"Conv2d {m.weight_shape[2]}x{m.weight_shape[3]}"
            note = m.note
            if not note and m.arithmetic in ("int8", "emulated") and min(m.w_bits, m.a_quant.bits) < 8:
                note = f"{min(m.w_bits, m.a_quant.bits)}-bit codes in int8 kernels: no 4-bit arithmetic kernel"
            c = choices.get(name)
            if c is not None:
                note = _choice_note(c, selection)
            storage = m.packing if m.arithmetic != "dequantized" else f"{m.packing}+fp32"
            report.layers.append(LayerArithmetic(name, kind, f"w{m.w_bits}a{m.a_quant.bits}", storage,
                                                 m.arithmetic, note, m.kernel_name(),
                                                 None if c is None or not c.input_shape else c.int8_ms,
                                                 None if c is None or not c.input_shape else c.float_ms))
        elif hasattr(m, "w_quant") and getattr(m, "integer", False):  # arithmetic="fake"
            w, a = m.w_quant.bits, m.a_quant.bits
            report.layers.append(LayerArithmetic(name, type(m.base).__name__, f"w{w}a{a}",
                                                 str(m.qweight.dtype).removeprefix("torch."), "fake"))
        elif isinstance(m, QuantAttnProcessor):
            report.layers.append(LayerArithmetic(name, "attention matmuls", f"a{m.quantizers['q'].bits}", "-",
                                                 "fake", "" if requested == "fake" else "no integer kernel"))
        elif isinstance(m, (nn.Conv2d, nn.Linear)) and not _inside_quant_layer(student, name):
            report.layers.append(LayerArithmetic(name, type(m).__name__, "fp", str(m.weight.dtype).removeprefix("torch."),
                                                 "fp"))
    return report


def _inside_quant_layer(student: QuantizedUNet, name: str) -> bool:
    parent = name.rpartition(".")[0]
    return parent != "" and hasattr(student.unet.get_submodule(parent), "w_quant")
