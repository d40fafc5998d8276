"""Training-step overhead of the W4A4 LoRA student against its full-precision UNet.

A mid-size diffusers ``UNet2DConditionModel`` (LDM-like layout, 3 levels, cross-attention,
~20M parameters at 32x32x4 latents). Per repeat, one training step each, alternating:

* **FP**: the UNet with all parameters trainable (a full fine-tuning step: forward, MSE loss,
  backward incl. every weight gradient);
* **student**: ``quantize_model(unet, "w4a4")`` (LoRA rank 32 merged into 4-bit per-channel
  weights, 4-bit per-timestep activations, teacher frozen and shared), calibrated once.

Reported: median step time (forward + backward) and peak memory of one step, as ratios
student / FP. Peak memory = resident model tensors + the step's transient peak:

* CUDA: ``torch.cuda.max_memory_allocated`` (absolute, includes the weights);
* CPU: exact byte count of the model's tensors + the rise of the process' peak RSS (``VmHWM``,
  reset before the step via ``/proc/self/clear_refs``) during the step, measured in a fresh
  process per model with glibc's mmap threshold lowered so that freed tensors go back to the OS
  (RSS then tracks live tensors; timing runs without that setting).

Modes (``--modes``, comma-separated): ``eager`` (plain PyTorch), ``cudagraph`` (each step
captured in a CUDA graph and replayed: eager PyTorch pays a fixed CPU cost per op, and a quantized
layer launches dozens of small ops where the FP layer launches one, so eager GPU timings of a model
this size mostly measure launch overhead) and ``compile`` (``torch.compile``, inductor by default,
``--compile-backend``; each model is compiled once and timed in a block).
The student runs once per quantizer implementation (``--kernels``, default ``eager,triton`` on
CUDA, ``eager`` elsewhere; ``quant_kernels`` of ``quantize_model``): the composed eager pieces or
the fused Triton kernels. ``--profile`` adds, per model, a ``torch.profiler`` table of the top
kernels of one step (CUDA kernels on a GPU, aten ops on the CPU) with their calls per quantized layer.

    .venv/bin/python benchmarks/quant_overhead.py [--device cpu|cuda] [--autocast bf16]
        [--batch 4] [--repeats 5] [--threads 1] [--modes eager,cudagraph,compile] [--kernels eager,triton]
        [--profile] [--unet mid|ldm4] [--out ...json]

``--unet ldm4``: the real architecture instead, an LDM-4-size ``UNet2DModel`` with random weights
(``configs/models/ldm4_bedrooms.yaml``: 274M parameters, 64x64x3 latents), e.g. the GPU case
``--device cuda --unet ldm4 --autocast bf16 --batch 32 --modes eager,cudagraph,compile --profile``
(``benchmarks/gpu_check.sh``; on CPU one step takes minutes).

Prints a table, writes JSON with the commit (default ``benchmarks/results/quant_overhead_<device>.json``);
the last line is ``time_ratio=... mem_ratio=...`` for the student's ``auto`` implementation (plus
``time_ratio_<mode>=...`` per other mode and ``time_ratio_<kernels>_kernels=...`` per other
implementation). ``--cuda-graph`` is the old spelling of adding ``cudagraph`` to the modes.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib.metadata
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saq_lightning.quant import calibrate, quantize_model
from saq_lightning.quant.kernels import kernel_path

ROOT = Path(__file__).resolve().parents[1]

UNET_CONFIG = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 256),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 128,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
CONTEXT_TOKENS = 8


# -- memory probes ---------------------------------------------------------------------------------


def _lower_mmap_threshold() -> bool:
    """Make glibc serve allocations >= 64 KiB with mmap and return them on free (Linux only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 * 1024)) and bool(libc.mallopt(m_trim_threshold, 128 * 1024))
    except OSError:
        return False


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Transient peak of one step (bytes above what was resident when it started)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:  # noqa: PYI034
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
            self.start = _status_kb("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.rise = torch.cuda.max_memory_allocated() - self.start
        else:
            self.rise = _status_kb("VmHWM") * 1024 - self.start


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct parameters and buffers of ``modules`` (shared tensors once)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            seen[t.data_ptr()] = t.numel() * t.element_size()
    return sum(seen.values())


# -- benchmark -------------------------------------------------------------------------------------


def make_unet(kind: str = "mid"):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "ldm4":
        from saq_lightning.models import build_model
        from saq_lightning.models.specs import load_model_spec

        spec = load_model_spec(Path(__file__).resolve().parents[1] / "configs/models/ldm4_bedrooms.yaml")
        return build_model(spec, load_weights=False).unet
    return UNet2DConditionModel(**UNET_CONFIG)


def make_batch(batch: int, device: torch.device, kind: str = "mid") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "ldm4":
        return {"sample": torch.randn(batch, 3, 64, 64, generator=g).to(device),
                "timestep": torch.randint(0, 1000, (batch,), generator=g).to(device)}
    return {
        "sample": torch.randn(batch, 4, 32, 32, generator=g).to(device),
        "timestep": torch.randint(0, 1000, (batch,), generator=g).to(device),
        "encoder_hidden_states": torch.randn(batch, CONTEXT_TOKENS, 128, generator=g).to(device),
    }


def train_step(model, params, batch, target, autocast: torch.dtype | None) -> None:
    for p in params:
        p.grad = None
    # no autocast weight cache: a CUDA graph must not capture cached casts
    with torch.autocast(batch["sample"].device.type, dtype=autocast, enabled=autocast is not None, cache_enabled=False):
        out = model(**batch).sample
    loss = (out.float() - target).square().mean()
    loss.backward()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, check=False, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain",
                                                                                   "--untracked-files=no") else "")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def student_name(kernels: str) -> str:
    return f"student_{kernels}"


def build(args: argparse.Namespace, device: torch.device, kernels: list[str] | None = None):
    """FP UNet, its calibrated W4A4 student (``kernels``: one step per quantizer implementation;
    ``[]``: no student), a batch and a target; and the step functions by name."""
    kernels = args.kernels if kernels is None else kernels
    autocast = {"none": None, "bf16": torch.bfloat16}[args.autocast]
    unet = make_unet(args.unet).to(device).train()
    fp_params = list(unet.parameters())
    batch = make_batch(args.batch, device, args.unet)
    target = torch.randn_like(batch["sample"])
    models: dict[str, torch.nn.Module] = {"fp": unet}
    steps = {}

    def make_step(name: str, model: torch.nn.Module, params: list, fp: bool, kernel: str | None = None):
        def step(model=model):
            unet.requires_grad_(fp)
            if kernel is not None:
                student.set_quant_kernels(kernel)
            train_step(model, params, batch, target, autocast)
        steps[name] = step

    make_step("fp", unet, fp_params, True)
    student = report = None
    st_params: list[torch.nn.Parameter] = []
    if kernels:
        student, report = quantize_model(unet, "w4a4", warn=False)  # freezes unet (shared tensors)
        calibrate(student, make_batch(max(2, args.batch), device, args.unet), act_method="minmax",
                  weight_method="minmax")
        student.train()
        st_params = [p for p in student.parameters() if p.requires_grad]
        for k in kernels:
            models[student_name(k)] = student
            make_step(student_name(k), student, st_params, False, k)

    def clear_grads():
        for p in fp_params + st_params:
            p.grad = None

    return unet, student, report, steps, clear_grads, models


def peak_memory(args: argparse.Namespace, device: torch.device, which: str) -> dict:
    """Peak memory of one step of ``which`` (after one warm-up step). The FP measurement builds
    no student, so that nothing but the FP model and its step is resident."""
    kernels = [which.removeprefix("student_")] if which != "fp" else []
    unet, student, _, steps, clear, _ = build(args, device, kernels)
    model = unet if which == "fp" else student
    steps[which]()
    clear()
    with PeakMemory(device) as pm:
        steps[which]()
    if device.type == "cuda":
        return {"resident_bytes": int(pm.start), "step_rise_bytes": int(pm.rise), "peak_bytes": int(pm.start + pm.rise)}
    resident = tensor_bytes(model)
    return {"resident_bytes": resident, "step_rise_bytes": int(pm.rise), "peak_bytes": int(resident + pm.rise)}


def memory_in_subprocess(args: argparse.Namespace, which: str) -> dict:
    """CPU: a fresh process per measurement, so that heap reuse from other steps cannot hide a peak."""
    cmd = [sys.executable, __file__, "--memory-worker", which, "--device", args.device, "--batch", str(args.batch),
           "--autocast", args.autocast, "--threads", str(args.threads), "--unet", args.unet]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def median_times(times: dict[str, list[float]]) -> dict:
    return {k: {"median": statistics.median(v), "all": v} for k, v in times.items()}


def eager_times(steps: dict, device: torch.device, args: argparse.Namespace) -> dict:
    """Alternating steps (so that load changes hit every model alike), medians over ``repeats``."""
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, step in steps.items():
            times[k].append(timed(step, device))
        print("  eager: " + "   ".join(f"{k} {v[-1]:.3f} s" for k, v in times.items()), flush=True)
    return median_times(times)


def cuda_graph_times(steps: dict, clear, repeats: int) -> dict:
    """Step times with each training step (forward + loss + backward) captured in a CUDA graph.

    Eager PyTorch pays a fixed CPU cost per launched op; a quantized layer launches dozens of
    small ops where the FP layer launches one, so at small sizes eager timings measure launch
    overhead. Replaying a captured graph measures the GPU work alone.
    """
    try:
        graphs = {}
        for name, step in steps.items():
            clear()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            clear()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                step()
            graphs[name] = g
        times: dict[str, list[float]] = {k: [] for k in graphs}
        for g in graphs.values():
            g.replay()
        for _ in range(repeats):
            for k, g in graphs.items():
                times[k].append(timed(g.replay, torch.device("cuda")))
        print("  cuda graph: " + "   ".join(f"{k} {statistics.median(v):.4f} s" for k, v in times.items()), flush=True)
        del graphs
        return median_times(times)
    except Exception as e:  # noqa: BLE001 - report, do not lose the other results
        print(f"  cuda graph capture failed: {type(e).__name__}: {e}", flush=True)
        return {"error": f"{type(e).__name__}: {e}"}


def compile_times(args: argparse.Namespace, device: torch.device, models: dict, clear) -> dict:
    """``torch.compile`` of each model (the student once per implementation), each timed in a
    block after its compilation (first call, timed separately) and ``warmup`` more calls."""
    import torch._dynamo

    autocast = {"none": None, "bf16": torch.bfloat16}[args.autocast]
    out: dict = {}
    unet = models["fp"]
    for name, model in models.items():
        try:
            torch._dynamo.reset()
            student = model if name != "fp" else None
            if student is not None:
                student.set_quant_kernels(name.removeprefix("student_"))
            compiled = torch.compile(model, backend=args.compile_backend)
            unet.requires_grad_(name == "fp")
            params = [p for p in model.parameters() if p.requires_grad]
            batch = make_batch(args.batch, device, args.unet)
            target = torch.randn_like(batch["sample"])

            def step(compiled=compiled, params=params, fp=name == "fp", batch=batch, target=target, unet=unet):
                unet.requires_grad_(fp)
                train_step(compiled, params, batch, target, autocast)

            clear()
            first = timed(step, device)
            for _ in range(args.warmup):
                step()
            times = [timed(step, device) for _ in range(args.repeats)]
            out[name] = {"median": statistics.median(times), "all": times, "first_call_s": first}
            print(f"  compile ({args.compile_backend}): {name} {out[name]['median']:.4f} s "
                  f"(first call {first:.1f} s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report, do not lose the other results
            print(f"  compile of {name} failed: {type(e).__name__}: {e}", flush=True)
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    torch._dynamo.reset()
    return out


def profile_steps(steps: dict, device: torch.device, n_layers: int, top: int) -> dict:
    """Per model, the top kernels of one step by self time (CUDA kernels on a GPU, aten ops on the
    CPU), with their calls per step and per quantized layer."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    out = {}
    for name, step in steps.items():
        step()
        with profile(activities=activities) as prof:
            step()
            if cuda:
                torch.cuda.synchronize()
        events = prof.key_averages()
        if cuda:
            rows = [e for e in events if e.device_type == DeviceType.CUDA]
            t = lambda e: e.self_device_time_total
        else:
            rows = [e for e in events if e.key.startswith("aten::")]
            t = lambda e: e.self_cpu_time_total
        total_us = sum(t(e) for e in rows)
        rows.sort(key=t, reverse=True)
        out[name] = {
            "unit": "CUDA kernels" if cuda else "aten ops (self CPU time)",
            "launches": sum(e.count for e in rows),
            "total_ms": total_us / 1e3,
            "top": [{"name": e.key, "calls": e.count, "calls_per_quant_layer": e.count / max(1, n_layers),
                     "ms": t(e) / 1e3, "share": t(e) / max(total_us, 1e-9)} for e in rows[:top]],
        }
    return out


def print_profile(prof: dict) -> None:
    for name, p in prof.items():
        print(f"\nprofile of one {name} step: {p['launches']} {p['unit']}, {p['total_ms']:.1f} ms")
        print(f"  {'kernel':60s}{'calls':>7s}{'/q-layer':>10s}{'ms':>9s}{'share':>8s}")
        for r in p["top"]:
            print(f"  {r['name'][:60]:60s}{r['calls']:7d}{r['calls_per_quant_layer']:10.2f}{r['ms']:9.2f}"
                  f"{100 * r['share']:7.1f}%")


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    unet, student, report, steps, clear, models = build(args, device)
    times = {"eager": eager_times(steps, device, args)}
    n_params = sum(p.numel() for p in unet.parameters())
    unet_config = unet.config
    n_layers = len(report.quantized)
    if "cudagraph" in args.modes:
        times["cudagraph"] = cuda_graph_times(steps, clear, args.repeats)
    prof = profile_steps(steps, device, n_layers, args.profile_top) if args.profile else None
    if "compile" in args.modes:
        times["compile"] = compile_times(args, device, models, clear)
    clear()
    del unet, student, steps, clear, models
    names = ["fp"] + [student_name(k) for k in args.kernels]
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        peaks = {}
        for k in names:
            peaks[k] = peak_memory(args, device, k)
            gc.collect()
            torch.cuda.empty_cache()
    else:
        peaks = {k: memory_in_subprocess(args, k) for k in names}

    ratios = {mode: {k.removeprefix("student_"): t[k]["median"] / t["fp"]["median"]
                     for k in names[1:] if "median" in t.get(k, {}) and "median" in t.get("fp", {})}
              for mode, t in times.items()}
    mem_ratios = {k.removeprefix("student_"): peaks[k]["peak_bytes"] / peaks["fp"]["peak_bytes"] for k in names[1:]}
    auto = kernel_path("auto", device) if kernel_path("auto", device) in args.kernels else args.kernels[0]
    return {
        "commit": _commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "autocast": args.autocast,
        "unet": args.unet,
        "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(unet_config).items()},
        "unet_params": n_params,
        "student_trainable_params": report.trainable_params,
        "quantized_layers": n_layers,
        "batch": args.batch,
        "repeats": args.repeats,
        "modes": args.modes,
        "kernels": args.kernels,
        "auto_kernels": auto,
        "time_s": times,
        "memory": peaks,
        "time_ratios": ratios,
        "mem_ratios": mem_ratios,
        "time_ratio": ratios["eager"][auto],
        "mem_ratio": mem_ratios[auto],
        "compile_backend": args.compile_backend if "compile" in args.modes else None,
        "profile": prof,
    }


def print_results(res: dict) -> None:
    mib = 1 / 2**20
    print(f"\n{res['unet']} UNet {res['unet_params'] / 1e6:.1f}M params, batch {res['batch']}, "
          f"{res['device']} ({res['device_name']}), autocast={res['autocast']}, {res['quantized_layers']} quantized "
          f"layers, torch {res['torch']}, triton {res['triton']}, commit {res['commit']}")
    print(f"{'mode':11s}{'model':16s}{'median step [s]':>17s}{'ratio':>8s}{'peak memory [MiB]':>19s}{'ratio':>8s}")
    for mode, t in res["time_s"].items():
        for k in ["fp"] + [student_name(k) for k in res["kernels"]]:
            if "median" not in t.get(k, {}):
                print(f"{mode:11s}{k:16s}{'failed':>17s}")
                continue
            ratio = res["time_ratios"][mode].get(k.removeprefix("student_"), 1.0)
            mem = res["memory"][k]["peak_bytes"] * mib if mode == "eager" else None
            mratio = res["mem_ratios"].get(k.removeprefix("student_"), 1.0)
            print(f"{mode:11s}{k:16s}{t[k]['median']:17.4f}{ratio:8.2f}"
                  + (f"{mem:19.1f}{mratio:8.2f}" if mem is not None else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="default: 4 on CPU, 32 on CUDA")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: 1 on CPU, where other jobs share the cores and "
                         "OpenMP spin-waits make multi-threaded timings erratic; torch's default on CUDA)")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/quant_overhead_<device>.json)")
    ap.add_argument("--modes", default="eager", help="comma-separated: eager, cudagraph (CUDA only), compile")
    ap.add_argument("--cuda-graph", action="store_true", help="same as adding cudagraph to --modes")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compile mode")
    ap.add_argument("--kernels", default=None,
                    help="student quantizer implementations to time (quant_kernels), comma-separated: eager, "
                         "triton (default: eager,triton on CUDA, eager elsewhere)")
    ap.add_argument("--profile", action="store_true", help="print/record the top kernels of one step per model")
    ap.add_argument("--profile-top", type=int, default=12, help="kernels per profile table")
    ap.add_argument("--unet", choices=["mid", "ldm4"], default="mid",
                    help="mid: the 17.8M-param UNet2DConditionModel; ldm4: LDM-4-size UNet2DModel (random weights)")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    if args.batch is None:
        args.batch = 32 if cuda else 4
    args.modes = [m for m in args.modes.split(",") if m] + (["cudagraph"] if args.cuda_graph else [])
    args.modes = ["eager"] + [m for m in dict.fromkeys(args.modes) if m != "eager"]
    bad = [m for m in args.modes if m not in ("eager", "cudagraph", "compile")]
    if bad:
        raise SystemExit(f"--modes: unknown mode(s) {bad}; choose from eager, cudagraph, compile")
    if "cudagraph" in args.modes and not cuda:
        raise SystemExit("--modes cudagraph (--cuda-graph) needs --device cuda")
    args.kernels = args.kernels.split(",") if args.kernels else (["eager", "triton"] if cuda else ["eager"])
    for k in args.kernels:
        if k not in ("eager", "triton"):
            raise SystemExit(f"--kernels: unknown implementation {k!r}; choose from eager, triton")
        kernel_path(k, torch.device(args.device))  # triton where it cannot run: a clear error now
    if args.threads is None:
        args.threads = 0 if cuda else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:  # internal: one CPU memory measurement in a fresh process
        if not _lower_mmap_threshold():
            raise SystemExit("cannot lower glibc's mmap threshold: CPU peak memory would be unreliable")
        print(json.dumps(peak_memory(args, torch.device(args.device), args.memory_worker)))
        return
    res = run(args)
    if res["profile"]:
        print_profile(res["profile"])
    print_results(res)
    suffix = "" if args.unet == "mid" else f"_{args.unet}"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"quant_overhead_{res['device'].split(':')[0]}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    summary = f"time_ratio={res['time_ratio']:.2f} mem_ratio={res['mem_ratio']:.2f}"
    auto = res["auto_kernels"]
    for mode in res["modes"][1:]:
        if auto in res["time_ratios"].get(mode, {}):
            summary += f" time_ratio_{'cuda_graph' if mode == 'cudagraph' else mode}={res['time_ratios'][mode][auto]:.2f}"
    for k, r in res["time_ratios"]["eager"].items():
        if k != auto:
            summary += f" time_ratio_{k}_kernels={r:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
