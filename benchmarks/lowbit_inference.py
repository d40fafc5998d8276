"""Low-bit inference: weight bytes, peak memory and latency per UNet call of the exported student.

Models (each on the digits UNet and on an LDM-4-size UNet with random weights, the
``configs/models/ldm4_bedrooms.yaml`` architecture: 274M parameters, 64x64x3 latents):

* ``fp32``: the FP UNet; ``bf16``: the same cast to bf16 (GPU only);
* ``fake_w4a4``: the calibrated W4A4 fake-quant student (what training runs);
* ``rt_w4a16``: the W4A4 export in the runtime, weight-only (packed int4, float activations);
* ``rt_w4a4_int8``: the W4A4 export in the runtime, int8 arithmetic (4-bit codes in int8 GEMMs);
* ``rt_w8a8``: the W8A8 export in the runtime, ``arithmetic="int8"`` as a user gets it: on a CPU
  each layer runs int8 (oneDNN's conv/linear where they are exact on this processor, else
  ``torch._int_mm``) or float (weights dequantized once), whichever its load-time measurement
  found faster (``--probe-repeats``);
* ``rt_w8a8_onednn``: the same with ``int8_kernel="onednn"`` (oneDNN on every layer it takes);
* ``rt_w8a8_allint8``: the same with ``int8_kernel="torch"`` (``torch._int_mm`` on every layer: the
  figure before the oneDNN kernels and the per-layer choice);
* ``pt2e_int8`` (CPU, batch 1 only): PyTorch's own x86 int8 path on the FP UNet: torchao's PT2E
  (``torch.export`` + ``X86InductorQuantizer`` W8A8, static per-tensor activations calibrated on
  one batch) and ``torch.compile`` with freezing (oneDNN int8 kernels). Needs ``torchao``
  (``pip install -e .[bench]``); where it cannot run, the JSON records the error.

Students are calibrated (min/max) on the timed batch's timestep; weights are random (LDM-4) or
the shipped digits teacher, so only speed and memory mean something here, not quality.
Latency: median over ``--repeats`` calls after a warm-up, models alternating per repeat.
Peak memory: resident model tensors + the rise during one call (CUDA: ``max_memory_allocated``;
CPU: peak RSS rise, ``VmHWM`` reset via ``/proc/self/clear_refs``, in a fresh process with
glibc's mmap threshold lowered so freed tensors return to the OS; LDM-4 there without a warm-up
call; timings run without that setting, since every large allocation then costs an mmap). CPU figures depend on the processor's int8 support: the CPU
model and its VNNI/AMX flags are recorded with them.

    .venv/bin/python benchmarks/lowbit_inference.py [--device cpu|cuda] [--threads 2] [--repeats 3]
        [--digits-batches 1,8,32] [--ldm-batches 1] [--memory-unets digits,ldm4] [--probe-repeats 2]
        [--out ...json]

``--device cuda`` runs :mod:`lowbit_inference_gpu` instead (LDM-4 and SD-size UNets, bf16 eager and
compiled against the W8A8/W4A8 Triton runtimes, per-layer table; see that module).

Defaults: CPU LDM-4 at batch 1 only (an fp32 call at batch 32 takes minutes on 2 cores), GPU
batches 1/8/32 for both. Last line: ``weight_bytes_ratio_w4=... int8_speedup_vs_fakequant=...
int8_speedup_vs_bf16_gpu=...``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_digits import source_commit
from quant_overhead import PeakMemory, _lower_mmap_threshold, tensor_bytes, timed

from saq_lightning.models import ModelSpec, build_model
from saq_lightning.models.specs import load_model_spec
from saq_lightning.quant import calibrate, export_student, quantize_model
from saq_lightning.quant.runtime import ProbeConfig, load_runtime, weight_bytes
from saq_lightning.quant.runtime.onednn import onednn_unavailable

ROOT = Path(__file__).resolve().parents[1]
TIMESTEP = 500
#: models that run at batch 1 only (a compiled export has static shapes)
BATCH1_ONLY = ("pt2e_int8",)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info() -> dict[str, Any]:
    """CPU model and the flags that decide CPU int8 speed (VNNI, AMX)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"model": name, "flags": {f: f in flags for f in CPU_FLAGS}}


def make_unet(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "digits":
        return build_model(ModelSpec(kind="digits")).unet.eval()
    return build_model(load_model_spec(ROOT / "configs/models/ldm4_bedrooms.yaml"), load_weights=False).unet.eval()


def make_call(unet: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    cfg = unet.config
    g = torch.Generator().manual_seed(1)
    call: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), TIMESTEP, device=device),
    }
    if getattr(cfg, "num_class_embeds", None):
        call["class_labels"] = (torch.arange(batch) % 10).to(device)
    return call


def quantized_layer_fp32_bytes(student) -> int:
    return sum(4 * layer.base.weight.numel() for _, layer in student.quant_layers())


class _Sample:
    def __init__(self, sample: torch.Tensor) -> None:
        self.sample = sample


class PT2EUNet(torch.nn.Module):
    """A PT2E-quantized, compiled UNet called like the others (``m(**call).sample``)."""

    def __init__(self, converted: torch.nn.Module, compiled: Callable, keys: tuple[str, ...], config: Any) -> None:
        super().__init__()
        self.converted, self._compiled, self.keys, self.config = converted, compiled, keys, config

    def forward(self, sample, timestep, **kw):
        return _Sample(self._compiled(sample, timestep.float(), *(kw[k] for k in self.keys[2:])))


class _Positional(torch.nn.Module):
    """The UNet with positional tensor inputs and a tensor output, as ``torch.export`` wants it."""

    def __init__(self, unet: torch.nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.unet, self.keys = unet, keys

    def forward(self, *args):
        return self.unet(**dict(zip(self.keys, args, strict=True))).sample


def build_pt2e(fp: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """PT2E + X86InductorQuantizer (W8A8) + ``torch.compile`` (freezing) of ``fp`` at batch 1,
    calibrated on one random batch-1 call; ``(None, {"error": ...})`` where it cannot run."""
    info: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        import torch._inductor.config as inductor_config
        import torchao
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        info["torchao"] = torchao.__version__
        call = make_call(fp, 1, device, torch.float32)
        call["timestep"] = call["timestep"].float()  # a Long input reaches a histogram observer otherwise
        keys = tuple(call)
        args = tuple(call[k] for k in keys)
        wrapped = _Positional(copy.deepcopy(fp), keys).eval()
        exported = torch.export.export(wrapped, args).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            prepared(*args)
        converted = convert_pt2e(prepared)
        inductor_config.freezing = True  # int8 weights prepacked for oneDNN, as the PT2E tutorial does
        compiled = torch.compile(converted)
        with torch.no_grad():
            compiled(*args)
    except Exception as e:  # noqa: BLE001 - recorded in the JSON: the row says why it is missing
        info["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"  pt2e_int8 not measured: {info['error']}", flush=True)
        return None, info
    info["build_s"] = time.perf_counter() - t0
    print(f"  pt2e_int8: exported, quantized and compiled in {info['build_s']:.0f} s", flush=True)
    return PT2EUNet(converted, compiled, keys, fp.config), info


W4_MODELS = ("fake_w4a4", "rt_w4a16", "rt_w4a4_int8")


def build_models(kind: str, device: torch.device, tmp: Path, gpu: bool, probe_repeats: int = 2,
                 pt2e: bool = True, only: list[str] | None = None) -> tuple[dict[str, torch.nn.Module], dict]:
    """The models of the module docstring (FP first, students built on it and sharing its tensors);
    ``only``: the W4 models are built only if one of them is named (``--ldm-models``)."""
    fp = make_unet(kind).to(device)
    models: dict[str, torch.nn.Module] = {"fp32": fp}
    info: dict[str, Any] = {"params": sum(p.numel() for p in fp.parameters())}
    calib = make_call(fp, 2, device, torch.float32)
    probe = ProbeConfig(repeats=probe_repeats)
    w4 = only is None or any(m in only for m in W4_MODELS)
    for policy in ("w4a4", "w8a8") if w4 else ("w8a8",):
        student, _ = quantize_model(fp, policy, warn=False)
        calibrate(student, [calib], act_method="minmax", weight_method="minmax")
        info[f"{policy}_quantized_fp32_bytes"] = quantized_layer_fp32_bytes(student)
        folder = export_student(student.eval(), tmp / f"{kind}_{policy}")
        if policy == "w4a4":
            models["fake_w4a4"] = student
            models["rt_w4a16"] = load_runtime(folder, arithmetic="weight_only", device=device, model=skeleton(fp))
            models["rt_w4a4_int8"] = load_runtime(folder, device=device, model=skeleton(fp), probe=probe)
            info["report_w4a4"] = models["rt_w4a4_int8"].runtime_report.summary()
            info["notes_w4a4"] = models["rt_w4a4_int8"].runtime_report.notes
        else:
            del student
            models["rt_w8a8"] = load_runtime(folder, device=device, model=skeleton(fp), probe=probe)
            info["report_w8a8"] = models["rt_w8a8"].runtime_report.summary()
            info["notes_w8a8"] = models["rt_w8a8"].runtime_report.notes
            info["layers_w8a8"] = [asdict(r) for r in models["rt_w8a8"].runtime_report.layers]
            for name, kernel in (("rt_w8a8_onednn", "onednn"), ("rt_w8a8_allint8", "torch")):
                if not gpu and (only is None or name in only) and (kernel != "onednn" or onednn_unavailable() is None):
                    models[name] = load_runtime(folder, device=device, model=skeleton(fp), int8_kernel=kernel)
    if not gpu and pt2e and (only is None or "pt2e_int8" in only):
        compiled, info["pt2e"] = build_pt2e(fp, device)
        if compiled is not None:
            models["pt2e_int8"] = compiled
    if gpu:
        models["bf16"] = make_unet(kind).to(device, torch.bfloat16)
        models["rt_w8a8_bf16"] = load_runtime(tmp / f"{kind}_w8a8", device=device, dtype=torch.bfloat16,
                                              model=skeleton(fp))
    return models, info


def skeleton(fp: torch.nn.Module) -> torch.nn.Module:
    """A copy of the FP UNet for the loader to fill (faster than a fresh random init of 274M
    parameters; every tensor is replaced or dropped by the export's)."""
    return copy.deepcopy(fp).cpu()


def model_bytes(name: str, model: torch.nn.Module) -> dict[str, int]:
    if name.startswith("rt_"):
        return weight_bytes(model)
    return {"quantized": 0, "other": tensor_bytes(model), "total": tensor_bytes(model)}


def _calls(models: dict[str, torch.nn.Module], batch: int, device: torch.device) -> dict[str, Callable[[], Any]]:
    calls = {}
    for name, m in models.items():
        if name in BATCH1_ONLY and batch != 1:
            continue
        dtype = torch.bfloat16 if name.endswith("bf16") else torch.float32
        args = make_call(m, batch, device, dtype)
        calls[name] = (lambda m=m, args=args: m(**args).sample)
    return calls


@torch.no_grad()
def latencies(models: dict[str, torch.nn.Module], batch: int, device: torch.device, repeats: int) -> dict[str, dict]:
    calls = _calls(models, batch, device)
    for fn in calls.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):  # alternate, so that load changes hit all models alike
        for name, fn in calls.items():
            times[name].append(timed(fn, device))
    out = {name: {"median_s": statistics.median(t), "times": t} for name, t in times.items()}
    for name, r in out.items():
        print(f"    batch {batch:3d} {name:14s} {r['median_s'] * 1e3:10.2f} ms", flush=True)
    return out


@torch.no_grad()
def call_memory_rise(models: dict[str, torch.nn.Module], batch: int, device: torch.device,
                     warmup: bool = True) -> dict[str, int]:
    """Transient memory of one call per model (after a warm-up call unless ``warmup=False``)."""
    out = {}
    for name, fn in _calls(models, batch, device).items():
        if warmup:
            fn()
        with PeakMemory(device) as pm:
            fn()
        out[name] = int(pm.rise)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    res: dict[str, Any] = {
        "commit": source_commit(), "device": str(device), "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if gpu else cpu_info()["model"],
        "cpu": cpu_info(), "threads": torch.get_num_threads(), "repeats": args.repeats, "timestep": TIMESTEP,
        "gpu_measured": gpu, "models": {},
    }
    batches = {"digits": args.digits_batches, "ldm4": args.ldm_batches}
    built = build_all(args, device, gpu, res)
    for kind, models in built.items():
        for b in batches[kind]:
            res["models"][kind]["batches"][str(b)] = latencies(models, b, device, args.repeats)
        # again after the calls: the oneDNN layers prepack their weight per input shape at its first call
        res["models"][kind]["bytes"] = {n: model_bytes(n, m) for n, m in models.items()}
    del built
    gc.collect()
    mem_unets = [k for k in args.unets if k in args.memory_unets]
    rises = memory_rises(argparse.Namespace(**{**vars(args), "unets": mem_unets}), device, batches) if mem_unets else {}
    for kind, per_batch in rises.items():
        entry = res["models"][kind]
        for b, per_model in per_batch.items():
            for name, rise in per_model.items():
                r = entry["batches"][b][name]
                r["step_rise_bytes"], r["peak_bytes"] = rise, entry["bytes"][name]["total"] + rise
    return res


def build_all(args: argparse.Namespace, device: torch.device, gpu: bool, res: dict | None = None) -> dict:
    built = {}
    tmp = tempfile.mkdtemp(prefix="lowbit-")
    for kind in args.unets:
        t0 = time.perf_counter()
        only = args.ldm_models if kind == "ldm4" else None
        models, info = build_models(kind, device, Path(tmp), gpu, args.probe_repeats, pt2e=res is not None, only=only)
        print(f"{kind}: {info['params'] / 1e6:.1f}M params, built in {time.perf_counter() - t0:.0f} s; "
              f"{info.get('report_w4a4', info['report_w8a8'])}", flush=True)
        built[kind] = models
        if res is not None:
            res["models"][kind] = {**info, "bytes": {n: model_bytes(n, m) for n, m in models.items()}, "batches": {}}
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return built


def memory_rises(args: argparse.Namespace, device: torch.device, batches: dict) -> dict:
    """Transient memory of one call per model and batch. CPU: in a fresh process whose glibc mmap
    threshold is lowered before anything is allocated (RSS then tracks live tensors; in this
    process freed heap pages would be reused without raising RSS)."""
    if device.type == "cuda":
        built = build_all(args, device, True)
        return {k: {str(b): call_memory_rise(built[k], b, device) for b in batches[k]} for k in built}
    cmd = [sys.executable, __file__, "--memory-worker", "--device", args.device, "--unets", ",".join(args.unets),
           "--probe-repeats", str(args.probe_repeats),
           "--digits-batches", ",".join(map(str, batches["digits"])), "--ldm-batches", ",".join(map(str, batches["ldm4"]))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory_worker(args: argparse.Namespace) -> None:
    if not _lower_mmap_threshold():
        raise SystemExit("cannot lower glibc's mmap threshold: CPU peak memory would be unreliable")
    device = torch.device(args.device)
    batches = {"digits": args.digits_batches, "ldm4": args.ldm_batches}
    built = build_all(args, device, False)
    print(json.dumps({k: {str(b): call_memory_rise(built[k], b, device, warmup=k == "digits") for b in batches[k]}
                      for k in built}))


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    """Headline ratios (LDM-4 UNet; speed-ups at its largest measured batch, and their minimum
    over every model and batch measured)."""
    ldm = res["models"]["ldm4"]
    by = ldm["bytes"]
    if "rt_w4a4_int8" not in by:  # --ldm-models without the W4 rows: the CPU goal ratios only
        return cpu_ratios(res)
    out: dict[str, Any] = {
        "weight_bytes_ratio_w4": by["rt_w4a4_int8"]["total"] / by["fp32"]["total"],
        "weight_bytes_ratio_w4_quantized_layers": by["rt_w4a4_int8"]["quantized"] / ldm["w4a4_quantized_fp32_bytes"],
    }
    largest = max(ldm["batches"], key=int)
    t = {k: v["median_s"] for k, v in ldm["batches"][largest].items()}
    out["largest_ldm_batch"] = int(largest)
    out["int8_speedup_vs_fakequant"] = t["fake_w4a4"] / t["rt_w8a8"]
    out["int8_w4a4_speedup_vs_fakequant_w4a4"] = t["fake_w4a4"] / t["rt_w4a4_int8"]
    out["int8_speedup_vs_fp32"] = t["fp32"] / t["rt_w8a8"]
    out["int8_speedup_vs_bf16_gpu"] = t["bf16"] / t["rt_w8a8_bf16"] if "bf16" in t else None
    pairs = [v["fake_w4a4"]["median_s"] / min(v["rt_w8a8"]["median_s"], v["rt_w4a4_int8"]["median_s"])
             for m in res["models"].values() for v in m["batches"].values()]
    out["min_int_speedup_vs_fakequant_any_model_batch"] = min(pairs)
    out.update(cpu_ratios(res))
    return out


def cpu_ratios(res: dict[str, Any]) -> dict[str, Any]:
    """The CPU goals: W8A8 runtime (per-layer choice) vs fp32 eager and vs PT2E, per UNet at
    batch 1 (ratio > 1: the runtime is faster), and its slowest ratio to fp32 over every batch."""
    out: dict[str, Any] = {}
    for kind, m in res["models"].items():
        for b, v in m["batches"].items():
            t = {k: r["median_s"] for k, r in v.items()}
            out[f"{kind}_b{b}_w8a8_vs_fp32"] = t["fp32"] / t["rt_w8a8"]
            if "rt_w8a8_allint8" in t:
                out[f"{kind}_b{b}_allint8_vs_fp32"] = t["fp32"] / t["rt_w8a8_allint8"]
            if "rt_w8a8_onednn" in t:
                out[f"{kind}_b{b}_onednn_vs_fp32"] = t["fp32"] / t["rt_w8a8_onednn"]
            if "pt2e_int8" in t:
                out[f"{kind}_b{b}_pt2e_vs_fp32"] = t["fp32"] / t["pt2e_int8"]
                out[f"{kind}_b{b}_w8a8_vs_pt2e"] = t["pt2e_int8"] / t["rt_w8a8"]
    ratios = [v for k, v in out.items() if k.endswith("_w8a8_vs_fp32")]
    out["min_w8a8_vs_fp32_any_model_batch"] = min(ratios) if ratios else None
    return out


def print_table(res: dict[str, Any]) -> None:
    mib = 1 / 2**20
    cpu = res["cpu"]
    flags = " ".join(f for f, on in cpu["flags"].items() if on) or "none"
    print(f"\n{res['device']} ({res['device_name']}), {res['threads']} threads, torch {res['torch']}, "
          f"CPU {cpu['model']} [{flags}], commit {res['commit']}")
    for kind, m in res["models"].items():
        print(f"\n{kind} UNet ({m['params'] / 1e6:.1f}M params)")
        names = list(m["bytes"])
        print(f"{'model':14s}{'weights [MiB]':>14s}" + "".join(f"{'b' + b + ' [ms]':>12s}{'peak [MiB]':>12s}"
                                                         for b in m["batches"]))
        for n in names:
            row = f"{n:14s}{m['bytes'][n]['total'] * mib:14.1f}"
            for b in m["batches"]:
                r = m["batches"][b].get(n)
                ms = f"{r['median_s'] * 1e3:12.1f}" if r else f"{'-':>12s}"
                peak = f"{r['peak_bytes'] * mib:12.1f}" if r and "peak_bytes" in r else f"{'-':>12s}"
                row += ms + peak
            print(row)
        if "error" in m.get("pt2e", {}):
            print(f"pt2e_int8 not measured: {m['pt2e']['error']}")
        for line in m.get("notes_w8a8", [])[1:]:
            print(f"rt_w8a8: {line}")
    if not res["gpu_measured"]:
        print("\nbf16 and GPU int8: not measured on GPU (run with --device cuda)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=None, help="default: 3 on CPU, 10 on CUDA")
    ap.add_argument("--digits-batches", default="1,8,32")
    ap.add_argument("--ldm-batches", default=None, help="default: 1 on CPU, 1,8,32 on CUDA")
    ap.add_argument("--unets", default="digits,ldm4", help="which UNets (the summary needs ldm4)")
    ap.add_argument("--compile-batches", default=None,
                    help="CUDA: batches that also time bf16 torch.compile (default: every batch)")
    ap.add_argument("--ldm-models", default=None, help="CPU: build only these LDM-4 rows (fp32 always), e.g. "
                    "rt_w8a8,rt_w8a8_onednn,rt_w8a8_allint8,pt2e_int8 for the CPU goals within 20 minutes on a loaded machine")
    ap.add_argument("--memory-unets", default="digits,ldm4", help="CPU: which UNets get the peak-memory pass "
                    "(a fresh process that builds them again)")
    ap.add_argument("--probe-repeats", type=int, default=2, help="timed calls per layer and path of the "
                    "runtime's load-time int8/float choice")
    ap.add_argument("--memory-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="default benchmarks/results/lowbit_inference_<device>.json")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    args.repeats = args.repeats or (10 if gpu else 3)
    args.unets = args.unets.split(",")
    args.memory_unets = args.memory_unets.split(",")
    args.ldm_models = args.ldm_models.split(",") if args.ldm_models else None
    args.digits_batches = [int(b) for b in args.digits_batches.split(",")]
    args.ldm_batches = [int(b) for b in (args.ldm_batches or ("1,8,32" if gpu else "1")).split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:  # internal: CPU memory measurement in a fresh process
        memory_worker(args)
        return
    if gpu:
        main_gpu(args)
        return
    t0 = time.perf_counter()
    res = run(args)
    res["summary"] = summarise(res) if "ldm4" in res["models"] else cpu_ratios(res)
    res["ldm_models"] = args.ldm_models
    res["seconds"] = time.perf_counter() - t0
    print_table(res)
    s = res["summary"]
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"lowbit_inference_{res['device'].split(':')[0]}.json"
    if "weight_bytes_ratio_w4" not in s:  # no ldm4 run, or one without its W4 rows
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(f"wrote {out}\n" + " ".join(f"{k}={v:.2f}" for k, v in s.items() if v is not None))
        return
    print(f"\nLDM-4 W4 weights: {s['weight_bytes_ratio_w4']:.3f} of fp32 (whole model), "
          f"{s['weight_bytes_ratio_w4_quantized_layers']:.3f} (quantized layers only); "
          f"W4A4 int8 vs fake W4A4 {s['int8_w4a4_speedup_vs_fakequant_w4a4']:.2f}x, W8A8 int8 vs fp32 "
          f"{s['int8_speedup_vs_fp32']:.2f}x at batch {s['largest_ldm_batch']}; slowest case int vs fake "
          f"{s['min_int_speedup_vs_fakequant_any_model_batch']:.2f}x; {res['seconds']:.0f} s")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    gpu_ratio = s["int8_speedup_vs_bf16_gpu"]
    cpu = " ".join(f"{k}={v:.2f}" for k, v in s.items() if k.endswith(("_vs_fp32", "_vs_pt2e")) and "_b1_" in k)
    print(f"weight_bytes_ratio_w4={s['weight_bytes_ratio_w4']:.3f} "
          f"int8_speedup_vs_fakequant={s['int8_speedup_vs_fakequant']:.2f} "
          f"int8_speedup_vs_bf16_gpu={'n/a' if gpu_ratio is None else f'{gpu_ratio:.2f}'} {cpu} "
          f"min_w8a8_vs_fp32_any_model_batch={s['min_w8a8_vs_fp32_any_model_batch']:.2f}")


def main_gpu(args: argparse.Namespace) -> None:
    from lowbit_inference_gpu import print_tables, run_gpu

    if args.unets == ["digits", "ldm4"]:  # the CPU default; on a GPU: LDM-4 and SD-size
        args.unets = ["ldm4", "sd"]
    args.batches = args.ldm_batches
    args.compile_batches = ([int(b) for b in args.compile_batches.split(",")] if args.compile_batches
                            else args.batches)
    t0 = time.perf_counter()
    res = run_gpu(args, source_commit())
    res["seconds"] = time.perf_counter() - t0
    print_tables(res)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "lowbit_inference_cuda.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    s = res["summary"]
    heads = [k for k in s if k.startswith("ldm4_b") and k.endswith(("_vs_bf16_eager", "_vs_bf16_compile"))]
    print(" ".join(f"{k}={s[k]:.2f}" for k in heads) + " "
          + " ".join(f"{k}={v:.3f}" for k, v in s.items() if k.endswith("weight_bytes_vs_bf16")))


if __name__ == "__main__":
    main()
