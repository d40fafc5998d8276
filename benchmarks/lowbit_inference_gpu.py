"""``lowbit_inference.py --device cuda``: the Triton int8 runtime against bf16 on a GPU.

UNets (random weights: only speed and memory mean something here): the LDM-4-size UNet
(``configs/models/ldm4_bedrooms.yaml``, 274M parameters, 64x64x3) and an SD-size cross-attention
UNet (``configs/models/sd14.yaml``'s architecture, 860M parameters, 64x64x4 latents, 77 x 768
context). Per UNet and batch (default 1, 8, 32):

* ``bf16``: the FP UNet in bf16, eager; ``bf16_compile``: the same under ``torch.compile``
  (``--compile-batches``: compiling per batch shape takes tens of seconds on SD);
* ``w8a8_triton`` / ``w4a8_triton``: the W8A8 / W4A8 exports (min/max calibrated at the timed
  timestep) in the runtime with ``int8_kernel="auto"`` (the Triton kernels on CUDA), bf16 outside
  the quantized layers.

Latency: median of ``--repeats`` calls after warm-up (models alternating per repeat). Peak
memory: ``max_memory_allocated`` during one call plus nothing else resident (each model is
measured alone on the GPU). Weight bytes: every tensor of the model (runtime: packed codes +
scales + zero points + FP layers). Per-layer table (largest batch): CUDA-event time of every
quantized layer in the two runtimes and of the same bf16 layer (forward hooks), so it says which
layers win and which lose. Records GPU model, driver, CUDA, torch and Triton versions.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from saq_lightning.models import build_model
from saq_lightning.models.specs import load_model_spec
from saq_lightning.quant import calibrate, export_student, quantize_model
from saq_lightning.quant.runtime import RuntimeLayer, load_runtime, weight_bytes

ROOT = Path(__file__).resolve().parents[1]
SPECS = {"ldm4": "configs/models/ldm4_bedrooms.yaml", "sd": "configs/models/sd14.yaml"}
TIMESTEP = 500
POLICIES = {"w8a8_triton": "w8a8", "w4a8_triton": "w4a8"}


def gpu_info(device: torch.device) -> dict[str, Any]:
    import triton

    props = torch.cuda.get_device_properties(device)
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         check=False, capture_output=True, text=True).stdout.strip().splitlines()
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "driver": smi[0] if smi else "unknown",
            "cuda": torch.version.cuda, "torch": torch.__version__, "triton": triton.__version__}


def make_fp_unet(kind: str, device: torch.device) -> torch.nn.Module:
    """Random-weight FP32 UNet, initialised directly on ``device`` (an 860M-parameter CPU init is slow)."""
    torch.manual_seed(0)
    with torch.device(device):
        return build_model(load_model_spec(ROOT / SPECS[kind]), load_weights=False).unet.eval()


def make_call(unet: torch.nn.Module, batch: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    cfg = unet.config
    g = torch.Generator().manual_seed(1)
    call: dict[str, Any] = {
        "sample": torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g).to(device, dtype),
        "timestep": torch.full((batch,), TIMESTEP, device=device),
    }
    if getattr(cfg, "cross_attention_dim", None):
        call["encoder_hidden_states"] = torch.randn(batch, 77, cfg.cross_attention_dim, generator=g).to(device, dtype)
    return call


def tensor_bytes(model: torch.nn.Module) -> int:
    seen = {t.data_ptr(): t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())}
    return sum(seen.values())


def exports(fp: torch.nn.Module, kind: str, device: torch.device, tmp: Path) -> dict[str, Path]:
    """W8A8 and W4A8 exports of ``fp`` (min/max calibration on one batch of 2 at the timed timestep)."""
    folders = {}
    calib = make_call(fp, 2, device, torch.float32)
    for name, policy in POLICIES.items():
        student, _ = quantize_model(fp, policy, warn=False)
        with torch.no_grad():
            calibrate(student, [calib], act_method="minmax", weight_method="minmax")
        folders[name] = export_student(student.eval(), tmp / f"{kind}_{policy}")
        del student
        gc.collect()
    return folders


def _timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def latencies(models: dict[str, Any], batch: int, device: torch.device, repeats: int, compile_ok: bool) -> dict:
    calls = {}
    for name, m in models.items():
        if name == "bf16_compile" and not compile_ok:
            continue
        args = make_call(m, batch, device, torch.bfloat16)
        calls[name] = (lambda m=m, args=args: m(**args).sample)
    for name, fn in calls.items():  # warm-up (compiles, autotunes)
        t0 = time.perf_counter()
        fn()
        fn()
        print(f"    batch {batch:3d} {name:14s} warm-up {time.perf_counter() - t0:6.1f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(_timed(fn))
    out = {}
    for name, fn in calls.items():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        out[name] = {"median_s": statistics.median(times[name]), "times": times[name],
                     "call_rise_bytes": torch.cuda.max_memory_allocated() - before}
        print(f"    batch {batch:3d} {name:14s} {out[name]['median_s'] * 1e3:9.2f} ms", flush=True)
    return out


@torch.no_grad()
def per_layer_times(models: dict[str, Any], batch: int, device: torch.device, repeats: int = 5) -> dict[str, dict]:
    """``{layer: {model: median ms}}`` of every quantized layer (CUDA events around its forward)."""
    out: dict[str, dict[str, float]] = {}
    wanted = {n for n, m in models["w8a8_triton"].unet.named_modules() if isinstance(m, RuntimeLayer)}
    for name in ("bf16", *POLICIES):
        model = models[name]
        runtime = name != "bf16"
        root = model.unet if runtime else model
        events: dict[str, list] = {}
        handles = []
        for lname, mod in root.named_modules():
            if lname not in wanted:
                continue
            def pre(mod, args, lname=lname, events=events):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                events.setdefault(lname, []).append([ev, None])

            def post(mod, args, result, lname=lname, events=events):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                events[lname][-1][1] = ev
            handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
        call = make_call(model, batch, device, torch.bfloat16)
        model(**call)
        events.clear()
        for _ in range(repeats):
            model(**call)
        torch.cuda.synchronize()
        for h in handles:
            h.remove()
        for lname, pairs in events.items():
            out.setdefault(lname, {})[name] = statistics.median(a.elapsed_time(b) for a, b in pairs)
        if runtime:
            for row in model.runtime_report.layers:
                if row.name in out:
                    out[row.name][f"{name}_kernel"] = row.kernel or row.arithmetic
    return out


def run_unet(kind: str, args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    fp = make_fp_unet(kind, device)
    params = sum(p.numel() for p in fp.parameters())
    folders = exports(fp, kind, device, tmp)
    skeleton = copy.deepcopy(fp).cpu()
    models: dict[str, Any] = {"bf16": fp.to(torch.bfloat16)}
    models["bf16_compile"] = torch.compile(models["bf16"])
    for name, folder in folders.items():
        models[name] = load_runtime(folder, device=device, dtype=torch.bfloat16, model=copy.deepcopy(skeleton))
    del skeleton
    gc.collect()
    entry: dict[str, Any] = {
        "params": params, "build_s": time.perf_counter() - t0,
        "weight_bytes": {"bf16": tensor_bytes(models["bf16"]),
                         **{n: weight_bytes(models[n])["total"] for n in POLICIES}},
        "reports": {n: models[n].runtime_report.summary() for n in POLICIES},
        "report_notes": {n: models[n].runtime_report.notes for n in POLICIES},
        "batches": {},
    }
    print(f"{kind}: {params / 1e6:.0f}M params, built in {entry['build_s']:.0f} s; "
          f"{entry['reports']['w8a8_triton']}", flush=True)
    for b in args.batches:
        entry["batches"][str(b)] = latencies(models, b, device, args.repeats, b in args.compile_batches)
    largest = max(args.batches)
    entry["per_layer_batch"] = largest
    entry["per_layer_ms"] = per_layer_times(models, largest, device)
    del models
    gc.collect()
    torch.cuda.empty_cache()
    return entry


def summarise(res: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, e in res["models"].items():
        for b, t in e["batches"].items():
            eager = t["bf16"]["median_s"]
            for name in POLICIES:
                out[f"{kind}_b{b}_{name}_vs_bf16_eager"] = eager / t[name]["median_s"]
                if "bf16_compile" in t:
                    out[f"{kind}_b{b}_{name}_vs_bf16_compile"] = t["bf16_compile"]["median_s"] / t[name]["median_s"]
        out[f"{kind}_w4a8_weight_bytes_vs_bf16"] = e["weight_bytes"]["w4a8_triton"] / e["weight_bytes"]["bf16"]
    return out


def print_tables(res: dict[str, Any]) -> None:
    g = res["gpu"]
    mib = 1 / 2**20
    print(f"\n{g['name']} (sm_{g['capability']}), driver {g['driver']}, CUDA {g['cuda']}, torch {g['torch']}, "
          f"Triton {g['triton']}, commit {res['commit']}")
    for kind, e in res["models"].items():
        print(f"\n{kind} UNet ({e['params'] / 1e6:.0f}M params); weights [MiB]: "
              + ", ".join(f"{n} {v * mib:.0f}" for n, v in e["weight_bytes"].items()))
        names = ["bf16", "bf16_compile", *POLICIES]
        print(f"{'batch':>6s}" + "".join(f"{n + ' [ms]':>20s}" for n in names) + f"{'peak rise [MiB] w8/w4/bf16':>30s}")
        for b, t in e["batches"].items():
            row = f"{b:>6s}" + "".join(f"{t[n]['median_s'] * 1e3:20.2f}" if n in t else f"{'-':>20s}" for n in names)
            row += f"{t['w8a8_triton']['call_rise_bytes'] * mib:12.0f}{t['w4a8_triton']['call_rise_bytes'] * mib:9.0f}"
            row += f"{t['bf16']['call_rise_bytes'] * mib:9.0f}"
            print(row)
        print(f"\nper layer at batch {e['per_layer_batch']} [ms] (ratio = bf16 / w8a8: > 1 the int8 layer wins)")
        rows = sorted(e["per_layer_ms"].items(), key=lambda kv: -kv[1].get("bf16", 0))
        for lname, r in rows:
            ratio = r.get("bf16", float("nan")) / r.get("w8a8_triton", float("nan"))
            print(f"  {lname[:60]:60s} bf16 {r.get('bf16', float('nan')):7.3f} w8a8 {r.get('w8a8_triton', float('nan')):7.3f} "
                  f"w4a8 {r.get('w4a8_triton', float('nan')):7.3f} ratio {ratio:5.2f}  {r.get('w8a8_triton_kernel', '')}")


def run_gpu(args: argparse.Namespace, commit: str) -> dict[str, Any]:
    device = torch.device(args.device)
    res: dict[str, Any] = {"commit": commit, "device": str(device), "gpu": gpu_info(device), "gpu_measured": True,
                           "repeats": args.repeats, "timestep": TIMESTEP, "models": {}}
    with tempfile.TemporaryDirectory(prefix="lowbit-gpu-") as tmp:
        for kind in args.unets:
            res["models"][kind] = run_unet(kind, args, device, Path(tmp))
    res["summary"] = summarise(res)
    return res
