"""``python -m saq_lightning demo``: the embedded digits default, end to end, on this machine.

1. the FP teacher's quality table (DDIM, CFG);
2. ``generate``: 2nd-order teacher trajectories of ``configs/digits_w4a4.yaml``'s mixstep phases;
3. ``fit``: SA-QLoRA W4A4 (resumes the demo's own ``last.ckpt`` when rerun);
4. the comparison at 10 steps: FP with DPM-Solver-2 and -1, naive (calibrated, untrained) W4A4 and
   trained W4A4 with DPM-Solver-1 ("dual acceleration": the aligned quantized student on a
   first-order solver approaches the FP model on a second-order one), plus the students with the
   higher-order solvers they were not trained for.

Everything is written under ``out`` (the run config, trajectories, TensorBoard logs, checkpoints,
sample grids, ``demo.json``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import auto_cli
from rich.console import Console
from rich.table import Table

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import SamplerSetting, sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_fd, digits_quality
from saq_lightning.metrics.grids import save_grid
from saq_lightning.models import ModelSpec, build_model
from saq_lightning.sampling.registry import model_calls_per_step, solver_order


def teacher_report(
    out: Path, num_samples: int, steps: int, guidance_scale: float, seed: int, console: Console
) -> dict:
    """The teacher's FD and class accuracy at ``steps`` DDIM steps, with the FD reference points."""
    teacher = build_model(ModelSpec(kind="digits"))
    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    setting = SamplerSetting("ddim", steps, "time_uniform", guidance_scale)
    t0 = time.perf_counter()
    samples, labels = sample_class_balanced(teacher, num_samples, setting, seed)
    quality = digits_quality(classifier, samples, labels, real)
    noise = torch.randn((num_samples, 1, 8, 8), generator=torch.Generator().manual_seed(seed + 1))
    train, _ = digits_split("train")
    val, _ = digits_split("val")
    report = {
        "setting": setting.label(),
        "num_samples": num_samples,
        "fd": quality.fd,
        "class_accuracy": quality.class_accuracy,
        "fd_noise_vs_real": digits_fd(classifier, noise, real),
        "fd_val_vs_train": digits_fd(classifier, val, train),
        "seconds": time.perf_counter() - t0,
    }
    save_grid(samples[:100], out / "teacher_samples.png", col_labels=[str(k) for k in range(10)],
              title="FP teacher (columns: class)")
    table = Table(title=f"FP teacher, {setting.label()}, {num_samples} class-balanced samples")
    for col in ("FD vs real digits", "class accuracy", "FD Gaussian noise", "FD real val vs train"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{report['fd']:.3f}", f"{report['class_accuracy']:.1%}",
        f"{report['fd_noise_vs_real']:.2f}", f"{report['fd_val_vs_train']:.3f}",
    )
    console.print(table)
    return report


DEFAULT_CONFIG = "configs/digits_w4a4.yaml"


def resolve_config(config: str) -> Path:
    """``config`` as given, else relative to the repository (``make demo`` runs from its root)."""
    path = Path(config)
    if path.is_file():
        return path
    repo = Path(__file__).resolve().parents[2] / config
    if repo.is_file():
        return repo
    raise FileNotFoundError(f"training config {config} not found (also looked at {repo})")


def demo_run_config(src: Path, out: Path, max_steps: int | None = None) -> Path:
    """A copy of the training config whose outputs all go under ``out``; returns its path."""
    cfg = yaml.safe_load(src.read_text())
    init = cfg["model"]["init_args"]
    teacher = init.get("teacher")
    if isinstance(teacher, str) and not Path(teacher).is_absolute():
        init["teacher"] = str((src.parent / teacher).resolve())  # relative to the source config
    trainer = cfg["trainer"]
    trainer["default_root_dir"] = str(out / "run")
    if max_steps is not None:
        trainer["max_steps"] = int(max_steps)
    logger = trainer.get("logger")
    if isinstance(logger, dict):
        logger.setdefault("init_args", {})["save_dir"] = str(out / "run")
    for callback in trainer.get("callbacks", []):
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint"):
            callback.setdefault("init_args", {})["dirpath"] = str(out / "run" / "checkpoints")
    cfg["data"]["init_args"]["shards"] = str(out / "trajectories")
    path = out / src.name
    path.write_text(f"# written by `python -m saq_lightning demo` from {src}\n" + yaml.safe_dump(cfg, sort_keys=False))
    return path


def train(run_config: Path, out: Path, retrain: bool, console: Console) -> Path:
    """generate -> fit on ``run_config``; a rerun resumes (or, finished, reuses) ``last.ckpt``."""
    from saq_lightning.commands.generate import generate
    from saq_lightning.lightning.run_cli import SAQLightningCLI, args_given_on_purpose

    console.rule("generate: teacher trajectories -> shards")
    generate(["--config", str(run_config)])
    checkpoints = out / "run" / "checkpoints"
    if retrain and checkpoints.is_dir():
        shutil.rmtree(checkpoints)  # the demo's own output folder
    last = checkpoints / "last.ckpt"
    console.rule("fit: SA-QLoRA" + (" (resuming last.ckpt)" if last.is_file() else ""))
    args = ["fit", "--config", str(run_config)] + (["--ckpt_path", "last"] if last.is_file() else [])
    with args_given_on_purpose():
        SAQLightningCLI(args=args)
    if not last.is_file():
        raise RuntimeError(f"fit wrote no {last}")
    return last


def evaluate(name: str, model, setting: SamplerSetting, n: int, seed: int, classifier, real, out: Path,
             grid_name: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    samples, labels = sample_class_balanced(model, n, setting, seed)
    quality = digits_quality(classifier, samples, labels, real)
    save_grid(samples[:100], out / f"{grid_name}.png", col_labels=[str(k) for k in range(10)],
              title=f"{name}, {setting.label()} (columns: class)")
    return {"model": name, "sampler": setting.label(), "solver": setting.solver, "steps": setting.steps,
            "nfe": setting.steps * model_calls_per_step(setting.solver, setting.order), **quality.as_dict(),
            "seconds": time.perf_counter() - t0, "grid": f"{grid_name}.png"}


def compare(run_config: Path, checkpoint: Path, out: Path, n: int, steps: int, student_orders: list[int],
            seed: int, console: Console) -> list[dict[str, Any]]:
    """FD / class accuracy of FP, naive W4A4 and trained W4A4 at ``steps`` steps."""
    from saq_lightning.commands.run_config import load_run_parts
    from saq_lightning.students import load_student

    console.rule(f"compare at {steps} steps ({n} class-balanced samples each)")
    parts = load_run_parts(["--config", str(run_config)])
    module = parts.setup
    module.bind_bucket_map(parts.schedule.phases)  # the buckets (and calibration grid) fit binds
    module.calibrate_student()  # the same deterministic calibration the trained student started from
    naive = module.student_model.eval()
    trained = load_student(checkpoint)
    g, spacing = module.teacher_settings.guidance_scale, module.teacher_settings.spacing
    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")

    def setting(order: int) -> SamplerSetting:
        return SamplerSetting(f"dpm{order}", steps, spacing, g)

    runs = [("FP", module.teacher, 2, "fp_dpm2"), ("FP", module.teacher, 1, "fp_dpm1"),
            ("naive W4A4", naive, 1, "naive_dpm1"), ("trained W4A4", trained, 1, "trained_dpm1")]
    for order in student_orders:
        if order != 1:
            runs += [("naive W4A4", naive, order, f"naive_dpm{order}"),
                     ("trained W4A4", trained, order, f"trained_dpm{order}")]
    rows = []
    for name, model, order, grid in runs:
        rows.append(evaluate(name, model, setting(order), n, seed, classifier, real, out, grid))
        console.print(f"  {name:13s} DPM-Solver-{order} @{steps}: FD {rows[-1]['fd']:.3f}, "
                      f"class accuracy {rows[-1]['class_accuracy']:.1%}, pixel FD "
                      f"{rows[-1]['pixel_fd']:.3f} ({rows[-1]['seconds']:.0f} s)")
    return rows


def print_comparison(rows: list[dict[str, Any]], steps: int, n: int, console: Console) -> None:
    table = Table(title=f"digits W4A4 at {steps} steps, {n} class-balanced samples, FD vs real digits "
                        f"(lower is better) in the classifier's feature space and in pixel space; "
                        f"k-NN precision/recall (k = 3) in both")
    for col in ("model", "sampler", "NFE", "FD", "class accuracy", "pixel FD", "P / R",
                "pixel P / R"):
        table.add_column(col, justify="left" if col in ("model", "sampler") else "right")
    for r in rows:
        table.add_row(r["model"], f"DPM-Solver-{solver_order(r['solver'])}", str(r["nfe"]), f"{r['fd']:.3f}",
                      f"{r['class_accuracy']:.1%}", f"{r['pixel_fd']:.3f}",
                      f"{r['precision']:.2f} / {r['recall']:.2f}",
                      f"{r['pixel_precision']:.2f} / {r['pixel_recall']:.2f}")
    console.print(table)
    for metric, space in (("fd", "classifier features"), ("pixel_fd", "pixel space")):
        by = {(r["model"], r["solver"]): r[metric] for r in rows}
        naive, trained, fp1 = by[("naive W4A4", "dpm1")], by[("trained W4A4", "dpm1")], by[("FP", "dpm1")]
        console.print(f"{space}: trained W4A4 with DPM-Solver-1: FD {trained:.3f} vs naive W4A4 "
                      f"{naive:.3f} ({naive / trained:.1f}x lower), FP DPM-Solver-1 {fp1:.3f}, FP "
                      f"DPM-Solver-2 {by[('FP', 'dpm2')]:.3f}")


def demo(
    out: str = "runs/demo",
    num_samples: int = 1000,
    teacher_steps: int = 50,
    guidance_scale: float = 2.0,
    seed: int = 0,
    config: str = DEFAULT_CONFIG,
    compare_samples: int = 1000,
    compare_steps: int = 10,
    student_orders: list[int] = [1, 2],  # noqa: B006 - jsonargparse shows the default
    max_steps: int | None = None,
    retrain: bool = False,
    train_student: bool = True,
) -> dict:
    """Run the embedded digits default end to end: teacher quality, generate -> fit -> compare.

    Args:
        out: folder for everything the demo writes (a rerun resumes or reuses what is there).
        num_samples: class-balanced samples for the teacher's quality table.
        teacher_steps: DDIM steps for the teacher's quality table.
        guidance_scale: classifier-free guidance of the teacher table (the training config has its own).
        seed: seed of the initial noise (the same x_T for every model).
        config: the training config (generate and fit run on a copy whose outputs go to ``out``).
        compare_samples: class-balanced samples per model in the comparison.
        compare_steps: solver steps of the comparison.
        student_orders: solver orders the students are sampled with (1 = what they are trained for).
        max_steps: override the config's training steps.
        retrain: discard the demo's earlier checkpoints and train from scratch.
        train_student: ``false`` prints the teacher table only.
    """
    t_start = time.perf_counter()
    console = Console()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "teacher": teacher_report(out_dir, num_samples, teacher_steps, guidance_scale, seed, console)}
    json_path = out_dir / "demo.json"
    if train_student:
        run_config = demo_run_config(resolve_config(config), out_dir, max_steps)
        t0 = time.perf_counter()
        checkpoint = train(run_config, out_dir, retrain, console)
        t_train = time.perf_counter() - t0
        rows = compare(run_config, checkpoint, out_dir, compare_samples, compare_steps,
                       list(student_orders), seed, console)
        print_comparison(rows, compare_steps, compare_samples, console)
        results["training"] = {"config": str(run_config), "checkpoint": str(checkpoint),
                               "global_step": int(torch.load(checkpoint, weights_only=True)["global_step"]),
                               "seconds_generate_and_fit": t_train}
        results["comparison"] = rows
    results["seconds_total"] = time.perf_counter() - t_start
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {json_path} and the sample grids in {out_dir} "
                  f"({results['seconds_total']:.0f} s in all)")
    return results


def main(args: list[str]) -> None:
    auto_cli(demo, args=args, as_positional=False, exit_on_error=False)
