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

``--cuda-graph`` also times both steps captured in CUDA graphs: eager PyTorch pays a fixed CPU
cost per op, and a quantized layer launches dozens of small ops where the FP layer launches one,
so eager GPU timings of a model this size mostly measure launch overhead.

    .venv/bin/python benchmarks/quant_overhead.py [--device cpu|cuda] [--autocast bf16]
        [--batch 4] [--repeats 5] [--threads 1] [--cuda-graph] [--unet mid|ldm4] [--out ...json]

``--unet ldm4``: the real architecture instead, an LDM-4-size ``UNet2DModel`` with random weights
(``configs/models/ldm4_bedrooms.yaml``: 274M parameters, 64x64x3 latents), e.g. the GPU case
``--device cuda --unet ldm4 --autocast bf16 --batch 32`` (not measured on GPU yet; on CPU one
step takes minutes).

Prints a table, writes JSON (default ``benchmarks/results/quant_overhead_<device>.json``); the
last line is ``time_ratio=... mem_ratio=...`` (plus ``time_ratio_cuda_graph=...`` with graphs).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
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


def build(args: argparse.Namespace, device: torch.device, with_student: bool = True):
    """FP UNet, its calibrated W4A4 student, a batch and a target; and the step functions."""
    autocast = {"none": None, "bf16": torch.bfloat16}[args.autocast]
    unet = make_unet(args.unet).to(device).train()
    fp_params = list(unet.parameters())
    batch = make_batch(args.batch, device, args.unet)
    target = torch.randn_like(batch["sample"])
    steps = {}

    def fp_step():
        unet.requires_grad_(True)
        train_step(unet, fp_params, batch, target, autocast)

    steps["fp"] = fp_step
    student = report = None
    st_params: list[torch.nn.Parameter] = []
    if with_student:
        student, report = quantize_model(unet, "w4a4", warn=False)  # freezes unet (shared tensors)
        calibrate(student, make_batch(max(2, args.batch), device, args.unet), act_method="minmax",
                  weight_method="minmax")
        student.train()
        st_params = [p for p in student.parameters() if p.requires_grad]

        def st_step():
            unet.requires_grad_(False)
            train_step(student, st_params, batch, target, autocast)

        steps["student"] = st_step

    def clear_grads():
        for p in fp_params + st_params:
            p.grad = None

    return unet, student, report, steps, clear_grads


def peak_memory(args: argparse.Namespace, device: torch.device, which: str) -> dict:
    """Peak memory of one step of ``which`` (after one warm-up step). The FP measurement builds
    no student, so that nothing but the FP model and its step is resident."""
    unet, student, _, steps, clear = build(args, device, with_student=which == "student")
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
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"  cuda graph: fp {med['fp']:.4f} s   student {med['student']:.4f} s", flush=True)
        del graphs
        return {"time_s": {k: {"median": med[k], "all": v} for k, v in times.items()},
                "time_ratio": med["student"] / med["fp"]}
    except Exception as e:  # noqa: BLE001 - report, do not lose the eager results
        print(f"  cuda graph capture failed: {type(e).__name__}: {e}", flush=True)
        return {"error": f"{type(e).__name__}: {e}"}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    unet, student, report, steps, clear = build(args, device)
    for _ in range(args.warmup):
        steps["fp"]()
        steps["student"]()
    times: dict[str, list[float]] = {"fp": [], "student": []}
    for _ in range(args.repeats):  # alternate, so that load changes hit both alike
        for k in ("fp", "student"):
            times[k].append(timed(steps[k], device))
        print(f"  fp {times['fp'][-1]:.3f} s   student {times['student'][-1]:.3f} s", flush=True)
    n_params = sum(p.numel() for p in unet.parameters())
    unet_config = unet.config
    graph = None
    if args.cuda_graph:
        graph = cuda_graph_times(steps, clear, args.repeats)
    clear()
    if device.type == "cuda":
        del unet, student, steps, clear
        gc.collect()
        torch.cuda.empty_cache()
        peaks = {}
        for k in ("fp", "student"):
            peaks[k] = peak_memory(args, device, k)
            gc.collect()
            torch.cuda.empty_cache()
    else:
        del unet, student, steps, clear
        peaks = {k: memory_in_subprocess(args, k) for k in ("fp", "student")}

    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "autocast": args.autocast,
        "unet": args.unet,
        "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(unet_config).items()},
        "unet_params": n_params,
        "student_trainable_params": report.trainable_params,
        "quantized_layers": len(report.quantized),
        "batch": args.batch,
        "repeats": args.repeats,
        "time_s": {k: {"median": med[k], "all": v} for k, v in times.items()},
        "memory": peaks,
        "time_ratio": med["student"] / med["fp"],
        "mem_ratio": peaks["student"]["peak_bytes"] / peaks["fp"]["peak_bytes"],
        "cuda_graph": graph,
    }


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
    ap.add_argument("--cuda-graph", action="store_true", help="also time graph-captured steps (CUDA only)")
    ap.add_argument("--unet", choices=["mid", "ldm4"], default="mid",
                    help="mid: the 17.8M-param UNet2DConditionModel; ldm4: LDM-4-size UNet2DModel (random weights)")
    ap.add_argument("--memory-worker", choices=["fp", "student"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 32 if args.device.startswith("cuda") else 4
    if args.cuda_graph and not args.device.startswith("cuda"):
        raise SystemExit("--cuda-graph needs --device cuda")
    if args.threads is None:
        args.threads = 0 if args.device.startswith("cuda") else 1
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:  # internal: one CPU memory measurement in a fresh process
        if not _lower_mmap_threshold():
            raise SystemExit("cannot lower glibc's mmap threshold: CPU peak memory would be unreliable")
        print(json.dumps(peak_memory(args, torch.device(args.device), args.memory_worker)))
        return
    res = run(args)
    mib = 1 / 2**20
    print(f"\n{res['unet']} UNet {res['unet_params'] / 1e6:.1f}M params, batch {res['batch']}, "
          f"{res['device']} ({res['device_name']}), autocast={res['autocast']}, {res['quantized_layers']} quantized layers")
    print(f"{'':10s}{'median step [s]':>17s}{'peak memory [MiB]':>19s}")
    for k in ("fp", "student"):
        print(f"{k:10s}{res['time_s'][k]['median']:17.3f}{res['memory'][k]['peak_bytes'] * mib:19.1f}")
    suffix = "" if args.unet == "mid" else f"_{args.unet}"
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"quant_overhead_{res['device'].split(':')[0]}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    summary = f"time_ratio={res['time_ratio']:.2f} mem_ratio={res['mem_ratio']:.2f}"
    if res["cuda_graph"] and "time_ratio" in res["cuda_graph"]:
        summary += f" time_ratio_cuda_graph={res['cuda_graph']['time_ratio']:.2f}"
    print(summary)


if __name__ == "__main__":
    main()
