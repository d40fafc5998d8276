"""SA-QLoRA training throughput: online teacher targets vs shard-cached targets, teacher order 1/2/3.

For each teacher order k the same student (W4A4, LoRA) trains on a mid-size class-conditional
UNet with CFG on both sides, under a real Lightning ``Trainer`` and ``TrajectoryDataModule``, in
three modes:

* ``cached``: points and ``eps_eff`` are read from the shards written by ``generate`` (no teacher
  in the step);
* ``online`` (the paper's online regime, no disk): the data module streams initial noise and the
  step rolls the teacher out over the phase's 10-step grid (10 k guided teacher evaluations per
  trajectory) and trains on one point per trajectory;
* ``online_targets``: points from the shards, but the step computes each point's ``eps_eff``
  itself (``targets: online``: k guided teacher evaluations per point);
* ``student_order2`` (orders k >= 2): as ``cached``, but the loss takes the student's own
  DPM-Solver-2 step (solver-aware alignment: 2 differentiable guided student evaluations per
  point, at ``x_s`` and at its own midpoint) instead of first-order MOTA's one.

Every configuration runs in its own process (clean peak memory): optimizer steps per second over
the timed steps (after warm-up) and peak memory (CUDA: ``max_memory_allocated``; CPU: peak RSS of
the process). Prints a table, writes JSON, and ends with one summary line, e.g.
``cached_over_online_order2=2.4``.

    python benchmarks/train_throughput.py                       # CPU, mid-size UNet
    python benchmarks/train_throughput.py --device cuda --batch_size 64 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "train_throughput.json"

# A mid-size class-conditional UNet (~13M parameters) on 16x16x4 latents, like a small LDM.
MID_UNET: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [64, 128, 256],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "attention_head_dim": 32,
    "num_class_embeds": 11,
}
SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195,
            "num_train_timesteps": 1000}


def teacher_folder(root: Path) -> Path:
    """The mid-size teacher (seeded random weights) as a diffusers folder."""
    from diffusers import UNet2DModel

    folder = root / "teacher"
    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        UNet2DModel(**MID_UNET).save_pretrained(str(folder))
    return folder


MODES = ("cached", "online", "online_targets", "student_order2")
TARGETS = {"cached": "shard", "online": "auto", "online_targets": "online", "student_order2": "shard"}
STUDENT_ORDER = {"student_order2": 2}  # the rest: first-order MOTA
STEPS_PER_TRAJECTORY = 10


def module_for(root: Path, order: int, targets: str, device: str):
    from saq_lightning.lightning.module import SAQLightningModule
    from saq_lightning.models import ModelSpec

    spec = ModelSpec(kind="diffusers_folder", name="mid_unet", weights=str(teacher_folder(root)),
                     schedule=SCHEDULE, conditioning={"type": "class_labels", "null_class": 10})
    return SAQLightningModule(
        teacher=spec, policy="w4a4", targets=targets, guidance_scale=2.0,
        calibration={"num_samples": 2, "steps": 20, "max_values_per_bucket": 256, "batch_size": 128},
        generation={"trajectories_per_phase": 16, "trajectories_per_shard": 4})


def schedule_for(order: int, student_order: int = 1):
    from saq_lightning.data import MixStepPhase, MixStepSchedule

    return MixStepSchedule((MixStepPhase(STEPS_PER_TRAJECTORY, student_order, order),))


class StepTimer(pl.Callback):
    """Times optimizer steps ``warmup .. warmup + steps`` (synchronising CUDA)."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.cuda = warmup, device.startswith("cuda")
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.end = time.perf_counter()


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """One configuration (in its own process): shards of order k, then timed training."""
    from saq_lightning.alignment.generation import generate_trajectories
    from saq_lightning.callbacks import MixStepCallback
    from saq_lightning.data import TrajectoryDataModule

    torch.set_num_threads(args.threads or torch.get_num_threads())
    root = Path(args.workdir)
    student_order = STUDENT_ORDER.get(args.mode, 1)
    # the shards' manifest names the phases (student order included), so each gets its own
    shards = root / (f"shards_order{args.order}" if student_order == 1
                     else f"shards_order{args.order}_student{student_order}")
    if not (shards / "manifest.json").is_file():
        generate_trajectories(module_for(root, args.order, "auto", args.device),
                              schedule_for(args.order, student_order), shards, device=args.device,
                              progress=False)
    module = module_for(root, args.order, TARGETS[args.mode], args.device)
    if args.mode == "online":  # noise and labels only; the teacher rolls out inside the step
        data = TrajectoryDataModule(None, batch_size=args.batch_size, image_shape=[4, 16, 16],
                                    num_classes=10, batches_per_epoch=1000, num_workers=args.workers)
    else:
        data = TrajectoryDataModule(str(shards), batch_size=args.batch_size, num_workers=args.workers)
    timer = StepTimer(args.warmup, args.device)
    precision = "bf16-mixed" if args.device.startswith("cuda") else "32-true"
    trainer = pl.Trainer(
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
        max_steps=args.warmup + args.steps, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[MixStepCallback.from_schedule(schedule_for(args.order, student_order)), timer])
    trainer.fit(module, datamodule=data)
    seconds = timer.end - timer.start
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": args.mode, "order": args.order, "steps": args.steps,
            "steps_per_s": args.steps / seconds, "seconds": seconds, "peak_mem_mib": peak,
            "guided_teacher_evals_per_point": {"cached": 0, "online_targets": args.order,
                                               "student_order2": 0,
                                               "online": STEPS_PER_TRAJECTORY * args.order}[args.mode],
            "student_evals_per_point": STUDENT_ORDER.get(args.mode, 1)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="modes to run (student_order2 only at orders >= 2)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--workdir", default=None, help="teacher and shards (default: a temporary folder)")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--order", type=int, help=argparse.SUPPRESS)
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace, mode: str, order: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--single", "--mode", mode, "--order", str(order),
           "--device", args.device, "--batch_size", str(args.batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--workers", str(args.workers), "--threads", str(args.threads),
           "--workdir", args.workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"configuration {mode}/order {order} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.single:
        print(json.dumps(run_one(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.workdir = args.workdir or tmp
        rows = [child(args, mode, order) for order in args.orders for mode in args.modes
                if not (mode == "student_order2" and order < 2)]
    n_params = sum(p.numel() for p in __import__("diffusers").UNet2DModel(**MID_UNET).parameters())
    print(f"SA-QLoRA training throughput, mid-size UNet ({n_params / 1e6:.1f}M params, 16x16x4, "
          f"class-conditional, CFG 2 on both sides, W4A4 LoRA 32), batch {args.batch_size}, "
          f"device {args.device}, {args.steps} timed steps")
    print(f"{'order':>5} {'targets':>15} {'guided teacher evals/point':>27} "
          f"{'student evals/point':>20} {'steps/s':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['order']:>5} {r['mode']:>15} {r['guided_teacher_evals_per_point']:>27} "
              f"{r['student_evals_per_point']:>20} {r['steps_per_s']:>9.3f} {r['peak_mem_mib']:>9.0f}")
    ratios: dict[int, float] = {}
    target_ratios: dict[int, float] = {}
    student2: dict[int, dict[str, float]] = {}
    for order in args.orders:
        by = {r["mode"]: r for r in rows if r["order"] == order}
        if "cached" in by and "online" in by:
            ratios[order] = by["cached"]["steps_per_s"] / by["online"]["steps_per_s"]
        if "cached" in by and "online_targets" in by:
            target_ratios[order] = by["cached"]["steps_per_s"] / by["online_targets"]["steps_per_s"]
        if "cached" in by and "student_order2" in by:
            student2[order] = {
                "mota_over_student2_steps_per_s": by["cached"]["steps_per_s"]
                / by["student_order2"]["steps_per_s"],
                "student2_over_mota_peak_mem": by["student_order2"]["peak_mem_mib"]
                / by["cached"]["peak_mem_mib"]}
    print("cached / online (rollout in the step): "
          + ", ".join(f"order {k}: {v:.2f}x" for k, v in ratios.items()))
    print("cached / online_targets (points from shards, targets in the step): "
          + ", ".join(f"order {k}: {v:.2f}x" for k, v in target_ratios.items()))
    if student2:
        print("first-order MOTA / student order 2 (steps/s; peak memory the other way): "
              + ", ".join(f"teacher order {k}: {v['mota_over_student2_steps_per_s']:.2f}x, "
                          f"mem {v['student2_over_mota_peak_mem']:.2f}x" for k, v in student2.items()))
    result = {
        "benchmark": "train_throughput",
        "unet": MID_UNET, "unet_params": n_params, "batch_size": args.batch_size,
        "device": args.device, "device_name": (torch.cuda.get_device_name(args.device)
                                              if args.device.startswith("cuda") else platform.processor()
                                              or platform.machine()),
        "cpu_threads": args.threads or torch.get_num_threads(), "timed_steps": args.steps,
        "warmup_steps": args.warmup, "torch": torch.__version__, "rows": rows,
        "cached_over_online": {str(k): v for k, v in ratios.items()},
        "cached_over_online_targets": {str(k): v for k, v in target_ratios.items()},
        "mota_vs_student_order2": {str(k): v for k, v in student2.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    if 2 in ratios:
        print(f"cached_over_online_order2={ratios[2]:.1f}")
    elif 2 in student2:
        print(f"mota_over_student_order2={student2[2]['mota_over_student2_steps_per_s']:.2f}")


if __name__ == "__main__":
    main()
