"""``python -m saq_lightning demo``: the embedded digits default, end to end, on this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from jsonargparse import auto_cli
from rich.console import Console
from rich.table import Table

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import SamplerSetting, sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_fd, digits_quality
from saq_lightning.metrics.grids import save_grid
from saq_lightning.models import ModelSpec, build_model


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
    save_grid(samples[:100], out / "teacher_samples.png")
    table = Table(title=f"FP teacher, {setting.label()}, {num_samples} class-balanced samples")
    for col in ("FD vs real digits", "class accuracy", "FD Gaussian noise", "FD real val vs train"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{report['fd']:.3f}", f"{report['class_accuracy']:.1%}",
        f"{report['fd_noise_vs_real']:.2f}", f"{report['fd_val_vs_train']:.3f}",
    )
    console.print(table)
    return report


def demo(
    out: str = "runs/demo",
    num_samples: int = 1000,
    teacher_steps: int = 50,
    guidance_scale: float = 2.0,
    seed: int = 0,
) -> dict:
    """Run the embedded digits default and print its quality figures.

    Args:
        out: folder for the sample grids and ``demo.json``.
        num_samples: class-balanced samples per evaluated model.
        teacher_steps: DDIM steps for the teacher's quality figure.
        guidance_scale: classifier-free guidance scale.
        seed: seed of the initial noise (the same x_T for every model).
    """
    console = Console()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"teacher": teacher_report(out_dir, num_samples, teacher_steps, guidance_scale, seed, console)}
    (out_dir / "demo.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {out_dir / 'demo.json'} and {out_dir / 'teacher_samples.png'}")
    return results


def main(args: list[str]) -> None:
    auto_cli(demo, args=args, as_positional=False)
