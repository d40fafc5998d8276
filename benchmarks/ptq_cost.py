"""Cost of SA-PTQ / BRECQ block reconstruction: wall time and memory per block and in total, 1 vs 2 ranks.

Models: the embedded digits teacher, and an LDM-4-size UNet (``configs/models/ldm4_imagenet.yaml``'s
architecture, 401M parameters, random weights: cost does not depend on the values). Each run
calibrates, then records and reconstructs every ``--block_stride``-th block (digits: every block;
LDM-4: every ``--ldm4_block_stride``-th, from the shallowest to the deepest) with a few iterations
(``--iters``, ``--act_iters``) on ``--samples`` synthetic calibration points (random latents,
timesteps, labels: recording and optimisation cost the same as on real pairs).

Extrapolation to the configured counts (``--full_iters`` + ``--full_act_iters``, the lineage's
10k + 5k): per block, recording and the three full evaluations are paid once, the measured time
per iteration (the loops alone) is multiplied by the full count; the model's total is the mean
block times its block count.

Per block: recording time, evaluation time, time per iteration, extrapolated block time, the
recorded cache size; per run: peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of the
process). Ranks: ``--ranks 1 2`` runs the same job on 1 and on 2 gloo/NCCL ranks (local processes,
``--threads`` torch threads each). Prints a table, writes ``benchmarks/results/ptq_cost[_<device>].json``
with the commit, and ends with ``ptq_seconds_per_block=... speedup_2ranks=...`` (the first model:
median extrapolated block, ratio of the extrapolated totals), then the same for the other models.

    OMP_NUM_THREADS=1 python benchmarks/ptq_cost.py           # digits + LDM-4 (every 10th block), CPU
    python benchmarks/ptq_cost.py --device cuda --samples 64 --batch_size 32 --iters 20   # GPU: configured batch
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
#: what is measured per model. Digits: the configured samples and batch, every block. LDM-4 (a
#: forward of one sample takes ~2 s on one CPU thread): a sample of the blocks, few samples.
PRESETS = {
    "digits": {"samples": 1024, "batch_size": 32, "iters": 50, "act_iters": 20, "block_stride": 1},
    "ldm4": {"samples": 16, "batch_size": 8, "iters": 3, "act_iters": 2, "block_stride": 10},
}


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
    from saq_lightning.quant.reconstruction import Comm, ReconstructionSettings

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
    calibrate(student, [{k: v[: args.batch_size] for k, v in data.items()}])
    results, n_blocks = _reconstruct_every(args.block_stride, student, unet, batches, settings, comm, device, out)
    total = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    if world > 1:
        torch.distributed.destroy_process_group()
    blocks = [_block_row(b, args) for b in results]
    mean_block = statistics.fmean(b["extrapolated_s"] for b in blocks)
    return {"model": args.model, "ranks": world, "total_s": total, "peak_mb": peak / 2**20, "blocks": blocks,
            "num_blocks": n_blocks, "block_stride": args.block_stride,
            "extrapolated_total_s": mean_block * n_blocks}


def _reconstruct_every(stride: int, student, unet, batches, settings, comm, device, out: Path):
    """Record and reconstruct blocks 0, stride, 2 * stride, ... (what ``reconstruct_student`` does
    per block, minus its state files); returns their results and the model's block count.

    Recording block ``i`` costs the prefix up to it whatever came before, so a stride samples the
    cost of the deep blocks as well as the shallow ones (the first blocks alone would not)."""
    from saq_lightning.quant.reconstruction import reconstruct_block
    from saq_lightning.quant.reconstruction.pipeline import record_block, student_blocks

    blocks = student_blocks(student, settings, next(iter(batches()))[1])
    results = []
    for i in range(0, len(blocks), stride):
        t0 = time.perf_counter()
        cache = record_block(blocks[i], unet, student, batches(), settings, out / f"cache-{comm.rank}-{i}.pt")
        t1 = time.perf_counter()
        result = reconstruct_block(blocks[i], cache, settings.num_samples, student.context, settings, comm,
                                   device, i)
        result.record_seconds = t1 - t0
        results.append(result)
    return results, len(blocks)


def _block_row(b: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One block's timings, extrapolated to the configured run.

    Only the iterations scale with the iteration count: the recording and the three full
    evaluations over the calibration set (loss before / after weights / after) are paid once per
    block (dividing them by a handful of iterations would inflate the extrapolation many times
    over); they scale with the sample count instead. A measured batch smaller than the configured
    one is scaled linearly (compute-bound, as on CPU; on a GPU measure at the configured batch)."""
    iters = max(1, b.iters + b.act_iters)
    per_iter = b.iterate_seconds / iters
    fixed = b.optimize_seconds - b.iterate_seconds
    per_sample = args.full_samples / args.samples
    per_batch = args.full_batch_size / args.batch_size
    return {"name": b.name, "record_s": b.record_seconds, "evaluate_s": fixed, "optimize_s": b.optimize_seconds,
            "s_per_iter": per_iter, "cache_mb": b.cache_bytes / 2**20,
            "extrapolated_s": (b.record_seconds + fixed) * per_sample
            + per_iter * per_batch * (args.full_iters + args.full_act_iters)}


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
    keys = ("device", "policy", *PRESETS["digits"], "full_samples", "full_batch_size", "full_iters",
            "full_act_iters", "threads")
    out = [x for k in keys for x in (f"--{k}", str(getattr(args, k)))]
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median extrapolated seconds per block (1 rank) and the 2-rank speed-up of the extrapolated
    total (full iteration counts: what a user waits for), plus the measured-total ratio."""
    by_world = {r["ranks"]: r for r in runs}
    one = by_world.get(1) or runs[0]
    out = {"seconds_per_block": statistics.median(b["extrapolated_s"] for b in one["blocks"]),
           "extrapolated_total_s": one["extrapolated_total_s"], "peak_mb": one["peak_mb"],
           "speedup_2ranks": float("nan"), "measured_speedup_2ranks": float("nan")}
    if 1 in by_world and 2 in by_world:
        out["speedup_2ranks"] = by_world[1]["extrapolated_total_s"] / by_world[2]["extrapolated_total_s"]
        out["measured_speedup_2ranks"] = by_world[1]["total_s"] / by_world[2]["total_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["digits", "ldm4"], choices=["digits", "ldm4"])
    p.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--policy", default="w8a8")
    for name in PRESETS["digits"]:
        p.add_argument(f"--{name}", type=int, default=None,
                       help="the same for every model (default: " + ", ".join(f"{m} {v[name]}" for m, v in PRESETS.items())
                       + ")")
    p.add_argument("--full_samples", type=int, default=1024, help="the configured calibration samples")
    p.add_argument("--full_batch_size", type=int, default=32, help="the configured minibatch")
    p.add_argument("--full_iters", type=int, default=10000)
    p.add_argument("--full_act_iters", type=int, default=5000)
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
        run_args = argparse.Namespace(**{**vars(args), **{k: v if getattr(args, k) is None else getattr(args, k)
                                                          for k, v in PRESETS[model].items()}})
        for world in args.ranks:
            t0 = time.perf_counter()
            r = _run(run_args, model, world)
            r["wall_s"] = time.perf_counter() - t0
            runs.append(r)
            print(f"{model:6s} ranks={world}: {len(r['blocks'])} of {r['num_blocks']} blocks, {r['total_s']:.1f} s measured "
                  f"({run_args.iters}+{run_args.act_iters} iterations/block, {run_args.samples} samples, batch "
                  f"{run_args.batch_size}), extrapolated to "
                  f"{args.full_iters}+{args.full_act_iters}: {r['extrapolated_total_s'] / 3600:.2f} h, "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
    print("\n| model | ranks | block | record s | evaluate s | s/iter | cache MB | extrapolated s |\n"
          "|---|---:|---|---:|---:|---:|---:|---:|")
    for r in runs:
        for b in r["blocks"]:
            print(f"| {r['model']} | {r['ranks']} | {b['name']} | {b['record_s']:.2f} | {b['evaluate_s']:.2f} | "
                  f"{b['s_per_iter']:.4f} | {b['cache_mb']:.1f} | {b['extrapolated_s']:.0f} |")
    summary = {model: _summary([r for r in runs if r["model"] == model]) for model in args.models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "ptq_cost.json" if args.device == "cpu" else f"ptq_cost_{args.device}.json"
    payload = {"commit": _commit(), "device": args.device, "cpu": platform.processor() or platform.machine(),
               "args": {k: v for k, v in vars(args).items() if not k.startswith("_")}, "runs": runs,
               "summary": summary}
    (RESULTS / name).write_text(json.dumps(payload, indent=1) + "\n")
    first, *rest = args.models
    line = [f"ptq_seconds_per_block={summary[first]['seconds_per_block']:.1f}",
            f"speedup_2ranks={summary[first]['speedup_2ranks']:.2f}"]
    line += [f"{m}_{k}={summary[m][v]:.{d}f}" for m in rest
             for k, v, d in (("ptq_seconds_per_block", "seconds_per_block", 1), ("speedup_2ranks", "speedup_2ranks", 2))]
    print(" ".join(line))


if __name__ == "__main__":
    main()
