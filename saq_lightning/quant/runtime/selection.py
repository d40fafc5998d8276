"""Per-layer choice between int8 arithmetic and float, measured on the layer's own input.

Why per layer and measured: on a CPU, ATen's int8 GEMM (``torch._int_mm``) beats the fp32 GEMM on
large shapes of a processor with VNNI/AMX, loses on small ones (its per-call overhead: the
activation quantization, im2col and epilogue passes dominate a 16x16 conv), and loses
everywhere (10-40x) on a processor without VNNI. One probe at one GEMM shape cannot tell which
layer of a given model wins, so :func:`choose_per_layer` runs the model once on an example input
and, in a forward pre-hook, times each int8 layer both ways on the input it really receives
(int8, then the weight dequantized once, ``dequantized``), keeps the faster, and finally times
the whole model with that mix, with every measured layer int8 (when the mix has float layers:
single-call layer timings mislead on a busy machine) and with every layer float, and keeps the
fastest of the three (stated). Timings go through injectable functions (:attr:`ProbeConfig.layer_timer`,
:attr:`ProbeConfig.model_timer`), so tests decide them; a previous load's choice can be
reused verbatim (:attr:`ProbeConfig.choices`), which makes a deployment deterministic.

Cost (stated in the report): one model call, plus per int8 layer ``1 + repeats`` timed calls of
each path (each sample repeating calls under 0.5 ms up to 50 times), plus ``1 + model_repeats``
calls of the whole model each way (two or three ways).
"""

from __future__ import annotations

import inspect
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .layers import RuntimeLayer

#: ``timer(layer, x) -> ms`` of one call of ``layer`` (as currently set) on ``x``.
LayerTimer = Callable[[RuntimeLayer, Tensor], float]
#: ``timer(model, example) -> ms`` of one call of the whole model on ``example`` (keyword arguments).
ModelTimer = Callable[[nn.Module, Mapping[str, Any]], float]

CHOOSABLE = ("int8", "dequantized")
_MIN_SAMPLE_MS = 0.5
_MAX_INNER = 50


@dataclass
class ProbeConfig:
    """How ``load_runtime(..., arithmetic="int8")`` picks int8 or float per layer on a CPU.

    Attributes:
        example: keyword arguments of one model call (``sample``, ``timestep``, ...) with the
            shapes the model will see; default: built from the UNet's config at ``batch_size``.
        batch_size: batch of the default example.
        repeats: timed calls per layer and path (median).
        model_repeats: timed whole-model calls per configuration (median) in the final check.
        choices: ``{layer name: "int8" | "dequantized"}`` from an earlier load's
            ``runtime_report.choices()``: applied as is, nothing measured.
        layer_timer, model_timer: measure instead of the default wall-clock timers.
    """

    example: Mapping[str, Any] | None = None
    batch_size: int = 1
    repeats: int = 3
    model_repeats: int = 1
    choices: Mapping[str, str] | None = None
    layer_timer: LayerTimer | None = None
    model_timer: ModelTimer | None = None


@dataclass
class LayerChoice:
    name: str
    input_shape: tuple[int, ...]
    int8_ms: float
    float_ms: float
    chosen: str


@dataclass
class Selection:
    """What the probe measured and chose (``lines()`` go into the runtime report)."""

    layers: dict[str, LayerChoice] = field(default_factory=dict)
    example: str = ""
    probe_s: float = 0.0
    mix_ms: float | None = None
    all_float_ms: float | None = None
    all_int8_ms: float | None = None  # timed when the mix has float layers
    all_float: bool = False  # the whole-model check found all-float fastest: every layer float
    all_int8: bool = False  # ... found all-int8 fastest: every measured layer int8
    reused: bool = False

    def lines(self) -> list[str]:
        counts = {a: sum(c.chosen == a for c in self.layers.values()) for a in CHOOSABLE}
        if self.reused:
            return [(f"per-layer choice reused from choices= (not measured): int8 on {counts['int8']} layers, "
                    f"float (dequantized once) on {counts['dequantized']}")]
        out = [(f"per-layer choice measured on this CPU at load ({self.example}): int8 where its kernel beats "
               f"float on the layer's own input: int8 on {counts['int8']} layers, float (dequantized once) on "
               f"{counts['dequantized']}; probe cost {self.probe_s:.1f} s")]
        if self.mix_ms is not None and self.all_float_ms is not None:
            if self.all_float:
                verdict = "mix slower than all-float: every layer runs float"
            elif self.all_int8:
                verdict = "all-int8 fastest: every layer runs int8"
            else:
                verdict = f"mix {self.all_float_ms / self.mix_ms:.2f}x the all-float model"
            int8 = "" if self.all_int8_ms is None else f", all-int8 {self.all_int8_ms:.1f} ms"
            out.append(f"whole model: chosen mix {self.mix_ms:.1f} ms vs all-float {self.all_float_ms:.1f} ms{int8} "
                       f"({verdict})")
        return out


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn`` in ms after one warm-up call; a sample repeats calls that take
    under :data:`_MIN_SAMPLE_MS` (at most :data:`_MAX_INNER` times) so that timer resolution and
    jitter do not decide between two small layers."""
    t0 = time.perf_counter()
    fn()
    first = (time.perf_counter() - t0) * 1e3
    inner = max(1, min(_MAX_INNER, math.ceil(_MIN_SAMPLE_MS / max(first, 1e-6))))
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(samples)


def wall_clock_layer_timer(repeats: int) -> LayerTimer:
    def timer(layer: RuntimeLayer, x: Tensor) -> float:
        return _median_ms(lambda: layer(x), repeats)

    return timer


def wall_clock_model_timer(repeats: int) -> ModelTimer:
    def timer(model: nn.Module, example: Mapping[str, Any]) -> float:
        return _median_ms(lambda: model(**example), repeats)

    return timer


def default_example(unet: nn.Module, batch_size: int, device: torch.device) -> tuple[dict[str, Any], str]:
    """One call's keyword arguments from the UNet's config, and a phrase saying what they are
    (the text-encoder length of a cross-attention UNet is not in its config: 77, CLIP's, stated)."""
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, (list, tuple)) else (cfg.sample_size, cfg.sample_size)
    g = torch.Generator().manual_seed(0)
    example: dict[str, Any] = {
        "sample": torch.randn(batch_size, cfg.in_channels, *size, generator=g).to(device),
        "timestep": torch.zeros(batch_size, device=device),
    }
    what = [f"sample {list(example['sample'].shape)}"]
    if getattr(cfg, "num_class_embeds", None):
        example["class_labels"] = torch.zeros(batch_size, dtype=torch.long, device=device)
        what.append("class labels")
    if getattr(cfg, "cross_attention_dim", None) and "encoder_hidden_states" in inspect.signature(unet.forward).parameters:
        dim = cfg.cross_attention_dim
        example["encoder_hidden_states"] = torch.randn(batch_size, 77, dim, generator=g).to(device)
        what.append(f"encoder_hidden_states [{batch_size}, 77, {dim}] (77 assumed: pass ProbeConfig.example)")
    return example, "example " + ", ".join(what) + " from the model config"


def _describe(example: Mapping[str, Any]) -> str:
    parts = [f"{k} {list(v.shape)}" for k, v in example.items() if isinstance(v, Tensor) and v.ndim > 1]
    return "example " + ", ".join(parts) + " (given)"


def apply_choices(model: nn.Module, choices: Mapping[str, str]) -> Selection:
    """Set each named runtime layer to the arithmetic in ``choices`` (an earlier load's)."""
    layers = dict(_int8_layers(model))
    for name, arithmetic in choices.items():
        if arithmetic not in CHOOSABLE:
            raise ValueError(f"choices[{name!r}] = {arithmetic!r}: expected one of {CHOOSABLE}")
        if name not in layers:
            raise ValueError(f"choices names {name!r}, which is not an int8 runtime layer of this export")
        layers[name].set_arithmetic(arithmetic)
    return Selection(layers={n: LayerChoice(n, (), math.nan, math.nan, a) for n, a in choices.items()}, reused=True)


def _set_all(layers: list[tuple[str, RuntimeLayer]], arithmetic: str) -> None:
    for _, m in layers:
        m.set_arithmetic(arithmetic)


def _int8_layers(model: nn.Module) -> list[tuple[str, RuntimeLayer]]:
    unet = getattr(model, "unet", model)
    return [(n, m) for n, m in unet.named_modules() if isinstance(m, RuntimeLayer) and m.arithmetic == "int8"]


@torch.no_grad()
def choose_per_layer(model: nn.Module, probe: ProbeConfig, device: torch.device) -> Selection:
    """Measure and set each int8 layer of ``model`` to the faster of int8 and ``dequantized``
    (see the module docstring); layers the example never calls stay int8 (no measurement)."""
    if probe.choices is not None:
        return apply_choices(model, probe.choices)
    t0 = time.perf_counter()
    layer_timer = probe.layer_timer or wall_clock_layer_timer(probe.repeats)
    model_timer = probe.model_timer or wall_clock_model_timer(probe.model_repeats)
    if probe.example is not None:
        example, what = dict(probe.example), _describe(probe.example)
    else:
        example, what = default_example(getattr(model, "unet", model), probe.batch_size, device)
    sel = Selection(example=what)

    busy: set[str] = set()  # the timers call the layer, which fires this hook again

    def measure(name: str, layer: RuntimeLayer, args: tuple) -> None:
        if name in sel.layers or name in busy:  # a layer called twice: its first input decides
            return
        busy.add(name)
        x = args[0]
        try:
            t_int = layer_timer(layer, x)
            layer.set_arithmetic("dequantized")
            t_float = layer_timer(layer, x)
        finally:
            busy.discard(name)
        chosen = "int8" if t_int < t_float else "dequantized"
        layer.set_arithmetic(chosen)
        sel.layers[name] = LayerChoice(name, tuple(x.shape), t_int, t_float, chosen)

    layers = _int8_layers(model)
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=n: measure(name, mod, args)) for n, m in layers]
    try:
        model(**example)
    finally:
        for h in hooks:
            h.remove()
    measured = [(n, m) for n, m in layers if n in sel.layers]
    if any(m.arithmetic == "int8" for _, m in measured):
        # per-layer timings of one call each can mislead on a busy machine: the whole model decides
        # between the mix, all-int8 (when the mix has float layers) and all-float
        sel.mix_ms = model_timer(model, example)
        if any(m.arithmetic == "dequantized" for _, m in measured):
            _set_all(measured, "int8")
            sel.all_int8_ms = model_timer(model, example)
        _set_all(measured, "dequantized")
        sel.all_float_ms = model_timer(model, example)
        fastest = min(sel.mix_ms, sel.all_float_ms, math.inf if sel.all_int8_ms is None else sel.all_int8_ms)
        sel.all_float = sel.all_float_ms <= fastest
        sel.all_int8 = not sel.all_float and sel.all_int8_ms is not None and sel.all_int8_ms < sel.mix_ms
        if sel.all_int8:
            _set_all(measured, "int8")
        elif not sel.all_float:
            for n, m in measured:
                m.set_arithmetic(sel.layers[n].chosen)
    sel.probe_s = time.perf_counter() - t0
    return sel
