"""The paper's Table 1 at small scale, on the embedded digits default.

Rows: FP | W4A4 naive PTQ | W4A4 same-input alignment (EfficientDM-style) | W4A4 mixed-order
(SA-QLoRA) | W4A4 mixed-order + mixstep | W4A8 naive / mixed-order | W8A8 naive. Every trained row
has the same training budget (``--max_steps`` optimizer steps of ``configs/digits_w4a4.yaml``'s
batch). Each row is sampled with DPM-Solver-1/2/3 at 5, 10 and 20 steps from the same x_T; columns:
FD vs the real digits, class accuracy, and the final-step deviation (RMS distance of each final
sample from the FP model's final sample under the same solver and steps).

    python benchmarks/quality_digits.py --out runs/quality_digits [--max_steps 800] [--samples 500]

Writes ``quality_digits.json`` + ``quality_digits.md`` to ``--out`` (and copies both to
``benchmarks/results/``). The last line is the headline "dual acceleration" ratio per W4A4 row:
student FD with DPM-Solver-1 at 10 steps over FP FD with DPM-Solver-2 at 10 steps.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from saq_lightning.commands.demo import demo_run_config, resolve_config, train
from saq_lightning.commands.generate import load_run
from saq_lightning.data.digits import digits_split
from saq_lightning.lightning.student_loading import load_student
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.sample_generation import SamplerSetting

FIXED_10 = [{"student_steps": 10, "student_order": 1, "teacher_order": 2}]
MIXSTEP = [{"student_steps": s, "student_order": 1, "teacher_order": 2} for s in (20, 10, 5)]


@dataclass(frozen=True)
class Row:
    name: str
    policy: str | None = None  # None: the FP teacher
    alignment: str | None = None  # None: naive PTQ (calibrated, untrained)
    phases: list[dict[str, int]] = field(default_factory=lambda: FIXED_10)

    @property
    def key(self) -> str:
        return self.name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "_")


ROWS = [
    Row("FP"),
    Row("W4A4 naive", "w4a4"),
    Row("W4A4 same-input", "w4a4", "same_input"),
    Row("W4A4 mixed-order", "w4a4", "mixed_order"),
    Row("W4A4 mixed-order + mixstep", "w4a4", "mixed_order", MIXSTEP),
    Row("W4A8 naive", "w4a8"),
    Row("W4A8 mixed-order", "w4a8", "mixed_order"),
    Row("W8A8 naive", "w8a8"),
]
HEADLINE = {"W4A4 naive": "naive", "W4A4 same-input": "same_input",
            "W4A4 mixed-order": "mixed_order", "W4A4 mixed-order + mixstep": "mixstep"}


def row_config(base: Path, out: Path, row: Row, max_steps: int) -> Path:
    """The demo's training config with this row's policy, alignment and mixstep phases."""
    out.mkdir(parents=True, exist_ok=True)
    path = demo_run_config(base, out, max_steps)
    cfg = yaml.safe_load(path.read_text())
    init = cfg["model"]["init_args"]
    init["policy"] = row.policy or "w4a4"
    init["alignment"] = row.alignment or "mixed_order"
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("MixStepCallback"):
            cb["init_args"]["phases"] = row.phases
    # rows with the same phases share one trajectory folder (generate keeps finished shards)
    tag = "mixstep" if row.phases == MIXSTEP else "fixed10"
    cfg["data"]["init_args"]["shards"] = str(out.parent / f"trajectories_{tag}")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_row_model(row: Row, base: Path, out: Path, max_steps: int, console: Console):
    config = row_config(base, out / row.key, row, max_steps)
    module = load_run(["--config", str(config)]).model
    if row.policy is None:
        return module.teacher, 0.0
    if row.alignment is None:
        module.calibrate_student()
        return module.student_model.eval(), 0.0
    t0 = time.perf_counter()
    checkpoint = train(config, out / row.key, retrain=False, console=console)
    return load_student(checkpoint).eval(), time.perf_counter() - t0


def main() -> None:
    from quality_digits_ptq import (  # benchmarks/, PTQ rows
        PTQ_ROWS,
        add_arguments,
        build_ptq_row_model,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quality_digits")
    parser.add_argument("--config", default="configs/digits_w4a4.yaml")
    parser.add_argument("--max_steps", type=int, default=800)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="*", default=None, help="row names to run (default: all)")
    parser.add_argument("--orders", nargs="*", type=int, default=[1, 2, 3], help="solver orders to sample")
    parser.add_argument("--steps", nargs="*", type=int, default=[5, 10, 20], help="step counts to sample")
    parser.add_argument("--results_name", default="quality_digits",
                        help="file stem under --out and benchmarks/results/ (a reduced run: another name)")
    add_arguments(parser)  # PTQ rows (quality_digits_ptq.py)
    args = parser.parse_args()
    console = Console()
    out = Path(args.out)
    base = resolve_config(args.config)
    guidance = yaml.safe_load(base.read_text())["model"]["init_args"].get("guidance_scale", 1.0)
    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    settings = [SamplerSetting(f"dpm{k}", n, "time_uniform", guidance) for k in args.orders for n in args.steps]
    rows = [r for r in ROWS + PTQ_ROWS if args.rows is None or r.name in args.rows]
    commit = source_commit()  # now: the tree may change while the benchmark runs
    t_start = time.perf_counter()
    fp_final: dict[str, torch.Tensor] = {}
    results: list[dict[str, Any]] = []
    for row in rows:
        console.rule(row.name)
        if isinstance(row, Row):
            model, train_seconds = build_row_model(row, base, out, args.max_steps, console)
        else:
            model, train_seconds = build_ptq_row_model(row, base, out, args, console)
        for setting in settings:
            t0 = time.perf_counter()
            samples, labels = sample_class_balanced(model, args.samples, setting, args.seed)
            q = digits_quality(classifier, samples, labels, real)
            key = f"{setting.solver}@{setting.steps}"
            if row.policy is None:
                fp_final[key] = samples
            deviation = float((samples - fp_final[key]).pow(2).mean().sqrt()) if key in fp_final else None
            results.append({"row": row.name, "solver": setting.solver, "steps": setting.steps,
                            "fd": q.fd, "class_accuracy": q.class_accuracy,
                            "final_deviation": deviation, "train_seconds": train_seconds,
                            "sample_seconds": time.perf_counter() - t0})
            console.print(f"  {key:8s} FD {q.fd:7.3f}  acc {q.class_accuracy:6.1%}  dev "
                          f"{deviation if deviation is not None else float('nan'):.4f}")
    write_outputs(out, results, args, guidance, commit, time.perf_counter() - t_start)


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One line per (row, solver); a column per step count; cells ``FD / accuracy / deviation``."""
    steps = sorted({r["steps"] for r in results})
    lines = ["| row | solver | " + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|" + "---:|" * len(steps)]
    cell = {(r["row"], r["solver"], r["steps"]): r for r in results}
    for name in dict.fromkeys(r["row"] for r in results):
        for solver in dict.fromkeys(r["solver"] for r in results if r["row"] == name):
            cells = []
            for n in steps:
                r = cell.get((name, solver, n))
                if r is None:
                    cells.append("")
                    continue
                dev = "" if r["final_deviation"] in (None, 0.0) else f" / {r['final_deviation']:.3f}"
                cells.append(f"{r['fd']:.3f} / {r['class_accuracy']:.1%}{dev}")
            lines.append(f"| {name} | DPM-Solver-{solver[-1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(results: list[dict[str, Any]]) -> str:
    fd = {(r["row"], r["solver"], r["steps"]): r["fd"] for r in results}
    fp2 = fd.get(("FP", "dpm2", 10))
    parts = [f"{short}={fd[(row, 'dpm1', 10)] / fp2:.2f}" for row, short in HEADLINE.items()
             if fp2 and (row, "dpm1", 10) in fd]
    return "fd_ratio " + " ".join(parts)


def source_commit() -> str:
    """The checked-out commit, ``+dirty`` when tracked files differ from it."""
    # not in a git checkout: "unknown", not an error
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_outputs(out: Path, results: list[dict[str, Any]], args: argparse.Namespace, guidance: float,
                  commit: str, seconds: float) -> None:
    payload = {"commit": commit, "samples": args.samples, "max_steps": args.max_steps,
               "torch_threads": torch.get_num_threads(),
               "guidance_scale": guidance, "seconds": seconds, "results": results}
    md = (f"Cells: FD / class accuracy / final-step RMS deviation from FP (same solver and steps); "
          f"{args.samples} class-balanced samples, CFG {guidance:g}, {args.max_steps} training steps per "
          f"trained row, commit {commit}, {seconds / 60:.1f} min on this machine.\n\n"
          + markdown_table(results) + "\n")
    results_dir = Path(__file__).resolve().parent / "results"
    for folder in (out, results_dir):
        folder.mkdir(parents=True, exist_ok=True)
        name = getattr(args, "results_name", "quality_digits")
        (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (folder / f"{name}.md").write_text(md)
    print(md, flush=True)  # plain print: rich would wrap the table's lines
    print(headline(results))


if __name__ == "__main__":
    main()
