"""Cost of SA-PTQ / BRECQ block reconstruction: wall time and memory per block and in total, 1 vs 2 ranks.

Models: the embedded digits teacher, and an LDM-4-size UNet (``configs/models/ldm4_imagenet.yaml``'s
architecture, random weights: cost does not depend on the values). Each run reconstructs every
block (or the first ``--max_blocks``) with a few iterations (``--iters``, ``--act_iters``) on
``--samples`` synthetic calibration points (random latents, timesteps, labels: recording and
optimisation cost are the same as on real pairs); the time per iteration is extrapolated to the
configured counts (``--full_iters`` + ``--full_act_iters``, the lineage's 10k + 5k).

Per block: recording time, optimisation time per iteration, extrapolated block time, the recorded
cache size; per run: peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of the process).
Ranks: ``--ranks 1 2`` runs the same job on 1 and on 2 gloo/NCCL ranks (local processes) and
reports the total-time ratio. Prints a table, writes ``benchmarks/results/ptq_cost[_<device>].json``
with the commit, and ends with ``ptq_seconds_per_block=... speedup_2ranks=...`` (digits model,
extrapolated to the full iteration counts).

    python benchmarks/ptq_cost.py                                   # digits + LDM-4 (few blocks), CPU
    python benchmarks/ptq_cost.py --device cuda --models digits ldm4 --samples 64 --iters 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, check=False, capture_output=True, text=True).stdout.strip()
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain",
                                                                                   "--untracked-files=no") else "")


def _unet(model: str):
    import yaml

    from saq_lightning.models import ModelSpec, build_model

    if model == "digits":
        spec = ModelSpec(kind="digits", name="digits")
        return build_model(spec).unet, 11
    spec = yaml.safe_load((ROOT / "configs" / "models" / "ldm4_imagenet.yaml").read_text())
    spec.pop("weights", None)
    torch.manual_seed(0)
    return build_model(ModelSpec(**spec), load_weights=False).unet, None


def _inputs(unet, n: int, seed: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    cfg = unet.config
    shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
    batch = {"sample": torch.randn(n, *shape, generator=g), "timestep": torch.randint(0, 1000, (n,), generator=g)}
    if getattr(cfg, "cross_attention_dim", None) and "Cross" in "".join(cfg.down_block_types):
        batch["encoder_hidden_states"] = torch.randn(n, 1, cfg.cross_attention_dim, generator=g)
    if getattr(cfg, "num_class_embeds", None):
        batch["class_labels"] = torch.randint(0, cfg.num_class_embeds - 1, (n,), generator=g)
    return [{k: v.to(device) for k, v in batch.items()}]


def worker(args: argparse.Namespace, rank: int, world: int, out: Path) -> dict[str, Any]:
    """One rank of one run; returns per-block timings (rank 0's)."""
    import warnings

    from saq_lightning.quant import calibrate, quantize_model
    from saq_lightning.quant.reconstruction import Comm, ReconstructionSettings, reconstruct_student

    torch.set_num_threads(args.threads)
    device = torch.device(args.device if args.device != "cuda" else f"cuda:{rank}")
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                             init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    unet, _ = _unet(args.model)
    unet = unet.to(device).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        student, _ = quantize_model(unet, args.policy)
    data = _inputs(unet, args.samples, 0, device)[0]
    comm = Comm(rank, world)
    mine = torch.tensor([i for i in range(args.samples) if comm.owns(i)])
    settings = ReconstructionSettings(objective="same_input", num_samples=args.samples, iters=args.iters,
                                      act_iters=args.act_iters, batch_size=args.batch_size,
                                      record_batch_size=args.batch_size, log_every=10**9)

    def batches():
        for chunk in mine.split(args.batch_size):
            b = {k: v[chunk.to(device)] for k, v in data.items()}
            yield (lambda b=b: unet(**b), lambda b=b: student(**b), int(chunk.numel()))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    report = reconstruct_student(
        student, unet, batches, args.samples,
        lambda: calibrate(student, [{k: v[: args.batch_size] for k, v in data.items()}]),
        settings, out / "state", {"bench": args.model}, comm=comm, device=device, progress=False,
        max_blocks=args.max_blocks)
    total = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if world > 1:
        torch.distributed.destroy_process_group()
    iters = args.iters + args.act_iters
    blocks = [{"name": b.name, "record_s": b.record_seconds, "optimize_s": b.optimize_seconds,
               "s_per_iter": b.optimize_seconds / max(1, iters), "cache_mb": b.cache_bytes / 2**20,
               "extrapolated_s": b.record_seconds + b.optimize_seconds / max(1, iters)
               * (args.full_iters + args.full_act_iters)} for b in report.blocks]
    return {"model": args.model, "ranks": world, "total_s": total, "peak_mb": peak / 2**20, "blocks": blocks,
            "extrapolated_total_s": sum(b["extrapolated_s"] for b in blocks)}


def _run(args: argparse.Namespace, model: str, world: int) -> dict[str, Any]:
    """Run ``world`` local ranks in fresh processes (clean peak memory); rank 0's result."""
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, __file__, "--_worker", "--model", model, "--port", str(port), "--out", tmp,
               "--world", str(world)] + _forward(args)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env, stdout=subprocess.PIPE, text=True)
                 for r in range(world)]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"{model} on {world} rank(s) failed: {outs}")
        return json.loads(outs[0].strip().splitlines()[-1])


def _forward(args: argparse.Namespace) -> list[str]:
    keys = ("device", "policy", "samples", "iters", "act_iters", "batch_size", "full_iters", "full_act_iters",
            "threads")
    out = [x for k in keys for x in (f"--{k}", str(getattr(args, k)))]
    if args.max_blocks is not None:
        out += ["--max_blocks", str(args.max_blocks)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "ldm4"], choices=["digits", "ldm4"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--policy", default="w8a8")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--act_iters", type=int, default=5)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--full_iters", type=int, default=10000)
    p.add_argument("--full_act_iters", type=int, default=5000)
    p.add_argument("--max_blocks", type=int, default=None, help="reconstruct only the first N blocks")
    p.add_argument("--ldm4_max_blocks", type=int, default=4, help="--max_blocks for the LDM-4 UNet")
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="digits", help=argparse.SUPPRESS)
    p.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        result = worker(args, args.rank, args.world, Path(args.out))
        print(json.dumps(result))
        return
    runs = []
    for model in args.models:
        run_args = argparse.Namespace(**vars(args))
        if model == "ldm4" and args.max_blocks is None:
            run_args.max_blocks = args.ldm4_max_blocks
        for world in args.ranks:
            t0 = time.perf_counter()
            r = _run(run_args, model, world)
            r["wall_s"] = time.perf_counter() - t0
            runs.append(r)
            print(f"{model:6s} ranks={world}: {len(r['blocks'])} blocks, {r['total_s']:.1f} s measured "
                  f"({args.iters}+{args.act_iters} iterations/block), extrapolated to "
                  f"{args.full_iters}+{args.full_act_iters}: {r['extrapolated_total_s'] / 3600:.2f} h, "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
    print("\n| model | ranks | block | record s | s/iter | cache MB | extrapolated s |\n|---|---:|---|---:|---:|---:|---:|")
    for r in runs:
        for b in r["blocks"]:
            print(f"| {r['model']} | {r['ranks']} | {b['name']} | {b['record_s']:.2f} | {b['s_per_iter']:.4f} | "
                  f"{b['cache_mb']:.1f} | {b['extrapolated_s']:.0f} |")
    digits = {r["ranks"]: r for r in runs if r["model"] == "digits"}
    per_block = statistics.median(b["extrapolated_s"] for b in (digits.get(1) or runs[0])["blocks"])
    speedup = (digits[1]["total_s"] / digits[2]["total_s"]) if 1 in digits and 2 in digits else float("nan")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ptq_cost.json" if args.device == "cpu" else f"ptq_cost_{args.device}.json"
    payload = {"commit": _commit(), "device": args.device, "cpu": platform.processor() or platform.machine(),
               "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "runs": runs,
               "ptq_seconds_per_block": per_block, "speedup_2ranks": speedup}
    (RESULTS / name).write_text(json.dumps(payload, indent=1) + "\n")
    print(f"ptq_seconds_per_block={per_block:.1f} speedup_2ranks={speedup:.2f}")


if __name__ == "__main__":
    main()
