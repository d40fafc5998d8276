"""The paper's Table 1 at small scale, on the embedded digits default.

Rows: FP | W4A4 naive PTQ | W4A4 same-input (cos, 2nd-order points): the same-input target on
this project's recipe (MOTA's cosine term, the DPM-Solver-2 trajectory's points, per-bucket
calibration) | W4A4 EfficientDM (DDIM points, MSE): the faithful baseline (FP DDIM trajectory,
MSE only, same input) | W4A4 mixed-order (SA-QLoRA) | W4A4 mixed-order + mixstep | W4A8 naive / mixed-order | W8A8 naive | W4A4 default
recipe / W4A4 author recipe (``configs/digits_w4a4.yaml`` against ``configs/digits_w4a4_author.yaml``
with their own phases, the same budget). Every trained row has the same training budget
(``--max_steps`` optimizer steps of ``configs/digits_w4a4.yaml``'s batch). Each row is sampled with DPM-Solver-1/2/3 at 5, 10 and 20 steps from the same x_T; columns:
FD vs the real digits, class accuracy, and the final-step deviation (RMS distance of each final
sample from the FP model's final sample under the same solver and steps); a second table gives
pixel-space FD and k-NN precision/recall in both spaces (classifier features / pixels).
``--guidance 1 2`` samples every row at each CFG scale (training stays at the config's).

    python benchmarks/quality_digits.py --out runs/quality_digits [--max_steps 800] [--samples 500]

Writes ``quality_digits.json`` + ``quality_digits.md`` to ``--out`` (and copies both to
``benchmarks/results/``) after every row. Rows can run in separate processes (``--rows``, each
with its own ``--name``) and be joined with ``--merge <json>...``. The PTQ rows (SA-PTQ, BRECQ,
SA-QLoRA from SA-PTQ at W8A8 / W4A8 / W4A4) are in ``quality_digits_ptq.py``. The last line is the headline "dual acceleration" ratio per W4A4 row:
student FD with DPM-Solver-1 at 10 steps over FP FD with DPM-Solver-2 at 10 steps.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console

from saq_lightning.commands.demo import demo_run_config, resolve_config, train
from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.sampling.registry import solver_order
from saq_lightning.students import load_student

FIXED_10 = [{"student_steps": 10, "student_order": 1, "teacher_order": 2}]
MIXSTEP = [{"student_steps": s, "student_order": 1, "teacher_order": 2} for s in (20, 10, 5)]
# solver-aware rows (docs/training.md): the student's own DPM-Solver-2 step in the loss; one student
# for DPM-Solver-1, -2 and -3 (a phase per order, each against a teacher of at least order 2)
SOLVER_AWARE_DPM2 = [{"student_steps": 10, "student_order": 2, "teacher_order": 2}]
# EfficientDM: the FP teacher's DDIM (first-order) trajectory, aligned at the same input, MSE only
DDIM_10 = [{"student_steps": 10, "student_order": 1, "teacher_order": 1}]
MSE_ONLY = {"loss": {"w_mse": 1.0, "w_cos": 0.0}}
SOLVER_AWARE_123 = [{"student_steps": 10, "student_order": k, "teacher_order": max(k, 2)}
                    for k in (1, 2, 3)]


@dataclass(frozen=True)
class Row:
    name: str
    policy: str | None = None  # None: the FP teacher
    alignment: str | None = None  # None: naive PTQ (calibrated, untrained)
    phases: list[dict[str, int]] | None = field(default_factory=lambda: FIXED_10)  # None: the config's
    config: str | None = None  # another training config than --config (a recipe row)
    init: dict[str, Any] = field(default_factory=dict)  # model.init_args overrides (dicts merged)

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.name.lower()).strip("_")


ROWS = [
    Row("FP"),
    Row("W4A4 naive", "w4a4"),
    Row("W4A4 same-input (cos, 2nd-order points)", "w4a4", "same_input"),
    Row("W4A4 EfficientDM (DDIM points, MSE)", "w4a4", "same_input", DDIM_10, init=MSE_ONLY),
    Row("W4A4 mixed-order", "w4a4", "mixed_order"),
    Row("W4A4 mixed-order + mixstep", "w4a4", "mixed_order", MIXSTEP),
    Row("W4A8 naive", "w4a8"),
    Row("W4A8 mixed-order", "w4a8", "mixed_order"),
    Row("W8A8 naive", "w8a8"),
    # recipe comparison at equal budget: each config with its own phases, spacing, loss, lr
    Row("W4A4 default recipe", "w4a4", "mixed_order", None, "configs/digits_w4a4.yaml"),
    Row("W4A4 author recipe", "w4a4", "mixed_order", None, "configs/digits_w4a4_author.yaml"),
    Row("W4A4 solver-aware DPM-2", "w4a4", "mixed_order", SOLVER_AWARE_DPM2),
    Row("W4A4 solver-aware orders 1-3", "w4a4", "mixed_order", SOLVER_AWARE_123),
]
HEADLINE = {"W4A4 naive": "naive", "W4A4 same-input": "same_input",  # the row's name before 2026-12-07
            "W4A4 same-input (cos, 2nd-order points)": "same_input",
            "W4A4 EfficientDM (DDIM points, MSE)": "efficientdm",
            "W4A4 mixed-order": "mixed_order", "W4A4 mixed-order + mixstep": "mixstep",
            "W4A4 default recipe": "default_recipe", "W4A4 author recipe": "author_recipe"}
#: PTQ rows (``quality_digits_ptq.py``, named "<POLICY> <row>") in the headline, against "<POLICY> PTQ naive"
PTQ_HEADLINE = {"BRECQ": "brecq", "BRECQ (grid + intermediate)": "brecq_gi", "SA-PTQ (fp first-order)": "saptq_fp1",
                "SA-PTQ (fp second-order)": "saptq_fp2", "SA-QLoRA from SA-PTQ": "saqlora"}


def row_config(base: Path, out: Path, row: Row, max_steps: int) -> Path:
    """The demo's training config with this row's policy, alignment and mixstep phases."""
    out.mkdir(parents=True, exist_ok=True)
    path = demo_run_config(base, out, max_steps)
    cfg = yaml.safe_load(path.read_text())
    init = cfg["model"]["init_args"]
    init["policy"] = row.policy or "w4a4"
    init["alignment"] = row.alignment or "mixed_order"
    for name, value in row.init.items():
        init[name] = {**init.get(name, {}), **value} if isinstance(value, dict) else value
    if row.phases is not None:
        cfg["mixstep"]["phases"] = row.phases
    # rows with the same phases (and teacher settings) share one trajectory folder (generate keeps
    # finished shards)
    shared = {"mixstep": MIXSTEP, "fixed10": FIXED_10, "ddim10": DDIM_10}
    tag = next((k for k, v in shared.items() if v == row.phases), row.key)
    if "guidance_scale" in row.init:
        tag += f"_cfg{row.init['guidance_scale']:g}"
    cfg["data"]["init_args"]["shards"] = str(out.parent / f"trajectories_{tag}")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def build_row_model(row: Row, base: Path, out: Path, max_steps: int, console: Console):
    if row.config is not None:
        base = resolve_config(row.config)
    config = row_config(base, out / row.key, row, max_steps)
    parts = load_run_parts(["--config", str(config)])
    module = parts.setup
    if row.policy is None:
        return module.teacher, 0.0
    if row.alignment is None:
        module.bind_bucket_map(parts.schedule.phases)  # as fit does before calibrating
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
    parser.add_argument("--guidance", type=float, nargs="*", default=None,
                        help="CFG scales to sample at (default: the config's)")
    parser.add_argument("--solvers", type=int, nargs="*", default=[1, 2, 3], help="DPM-Solver orders")
    parser.add_argument("--steps", type=int, nargs="*", default=[5, 10, 20], help="step counts")
    parser.add_argument("--name", default="quality_digits",
                        help="results file stem (a reduced run: another name keeps the full table)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="write one table from these result files (rows run by separate processes) "
                             "instead of running rows")
    add_arguments(parser)  # PTQ rows (quality_digits_ptq.py)
    args = parser.parse_args()
    if args.merge:
        payload = merge_payloads(args.merge)
        args.samples, args.max_steps = payload["samples"], payload["max_steps"]
        args.ptq_iters, args.ptq_act_iters, args.ptq_samples = (payload["ptq"][k] for k in ("iters", "act_iters",
                                                                                          "samples"))
        write_outputs(Path(args.out), payload["results"], args, payload["guidance_scale"], payload["commit"],
                      payload["seconds"])
        return
    console = Console()
    out = Path(args.out)
    base = resolve_config(args.config)
    guidance = yaml.safe_load(base.read_text())["model"]["init_args"].get("guidance_scale", 1.0)
    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    scales = args.guidance or [guidance]
    settings = [SamplerSetting(f"dpm{k}", n, "time_uniform", g) for g in scales for k in args.solvers
                for n in args.steps]
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
            key = f"{setting.solver}@{setting.steps}@cfg{setting.guidance_scale:g}"
            if row.policy is None:
                fp_final[key] = samples
            deviation = float((samples - fp_final[key]).pow(2).mean().sqrt()) if key in fp_final else None
            results.append({"row": row.name, "solver": setting.solver, "steps": setting.steps,
                            "guidance_scale": setting.guidance_scale,
                            **q.as_dict(),
                            "final_deviation": deviation, "train_seconds": train_seconds,
                            "sample_seconds": time.perf_counter() - t0})
            console.print(f"  {key:14s} FD {q.fd:7.3f}  acc {q.class_accuracy:6.1%}  pixel FD "
                          f"{q.pixel_fd:6.3f}  P/R {q.precision:.2f}/{q.recall:.2f} pix "
                          f"{q.pixel_precision:.2f}/{q.pixel_recall:.2f}  dev "
                          f"{deviation if deviation is not None else float('nan'):.4f}")
        # after every row: a later row that fails loses only itself (rerun: trained rows resume)
        write_outputs(out, results, args, guidance, commit, time.perf_counter() - t_start, final=row is rows[-1])


def markdown_table(results: list[dict[str, Any]], cell_of=None) -> str:
    """One line per (row, solver[, CFG]); a column per step count; cells ``FD / accuracy / deviation``
    (or ``cell_of(result)``)."""
    steps = sorted({r["steps"] for r in results})
    scales = sorted({r.get("guidance_scale") for r in results}, key=lambda g: (g is None, g))
    by_cfg = len(scales) > 1
    lines = ["| row | solver | " + ("CFG | " if by_cfg else "") + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|" + ("---:|" if by_cfg else "") + "---:|" * len(steps)]
    cell = {(r["row"], r["solver"], r["steps"], r.get("guidance_scale")): r for r in results}

    def default_cell(r: dict[str, Any]) -> str:
        dev = "" if r["final_deviation"] in (None, 0.0) else f" / {r['final_deviation']:.3f}"
        return f"{r['fd']:.3f} / {r['class_accuracy']:.1%}{dev}"

    cell_of = cell_of or default_cell
    for name in dict.fromkeys(r["row"] for r in results):
        for g in scales:
            for solver in dict.fromkeys(r["solver"] for r in results if r["row"] == name):
                cells = [cell_of(cell[(name, solver, n, g)]) if (name, solver, n, g) in cell else ""
                         for n in steps]
                if not any(cells):
                    continue
                cfg = f"{g:g} | " if by_cfg else ""
                lines.append(f"| {name} | DPM-Solver-{solver_order(solver)} | {cfg}" + " | ".join(cells) + " |")
    return "\n".join(lines)


def spaces_cell(r: dict[str, Any]) -> str:
    """Pixel FD / precision, recall in classifier space / in pixel space."""
    if "pixel_fd" not in r:
        return ""
    return (f"{r['pixel_fd']:.3f} / {r['precision']:.2f}, {r['recall']:.2f} / "
            f"{r['pixel_precision']:.2f}, {r['pixel_recall']:.2f}")


def headline(results: list[dict[str, Any]]) -> str:
    """Student FD with DPM-Solver-1 at 10 steps over FP FD with DPM-Solver-2 at 10 steps, per W4A4
    row, CFG scale and feature space (classifier ``fd``, pixel ``pixel_fd``); then the PTQ rows'."""
    parts = []
    for g in sorted({r.get("guidance_scale") for r in results}, key=lambda g: (g is None, g)):
        for metric, label in (("fd", "fd_ratio"), ("pixel_fd", "pixel_fd_ratio")):
            fd = {(r["row"], r["solver"], r["steps"]): r.get(metric) for r in results
                  if r.get("guidance_scale") == g}
            fp2 = fd.get(("FP", "dpm2", 10))
            ratios = [f"{short}={fd[(row, 'dpm1', 10)] / fp2:.2f}" for row, short in HEADLINE.items()
                      if fp2 and fd.get((row, "dpm1", 10)) is not None]
            if ratios:
                parts.append((f"cfg{g:g} " if g is not None else "") + label + " " + " ".join(ratios))
            parts += ptq_headline(fd, metric, g)
    return "; ".join(parts)


def ptq_headline(fd: dict[tuple[str, str, int], float | None], metric: str, g: float | None) -> list[str]:
    """Per policy: each PTQ row's FD with DPM-Solver-1 at 10 steps over its policy's ``PTQ naive``
    row's (below 1: reconstruction beats calibration with nearest rounding)."""
    parts = []
    for policy in ("W8A8", "W4A8", "W4A4"):
        naive = fd.get((f"{policy} PTQ naive", "dpm1", 10))
        ratios = [f"{short}={fd[(f'{policy} {row}', 'dpm1', 10)] / naive:.2f}" for row, short in PTQ_HEADLINE.items()
                  if naive and fd.get((f"{policy} {row}", "dpm1", 10)) is not None]
        if ratios:
            parts.append((f"cfg{g:g} " if g is not None else "") + f"{policy} {metric}_over_ptq_naive "
                         + " ".join(ratios))
    return parts


def merge_payloads(paths: list[Path]) -> dict[str, Any]:
    """One payload from result files of one commit and one setting; a cell (row, solver, steps,
    CFG) in several files (the FP row each process sampled) is kept from the first file, and
    ``seconds`` is the longest file's (the processes ran side by side)."""
    payloads = [json.loads(Path(p).read_text()) for p in paths]
    for field_name in ("commit", "samples", "max_steps", "guidance_scale", "ptq"):
        for path, payload in zip(paths[1:], payloads[1:], strict=True):
            if payload.get(field_name) != payloads[0].get(field_name):
                raise ValueError(f"{path}: {field_name} is {payload.get(field_name)!r}, but {paths[0]} has "
                                 f"{payloads[0].get(field_name)!r}; merge only results of one commit and setting")
    cells: dict[tuple, dict[str, Any]] = {}
    for payload in payloads:
        for r in payload["results"]:
            cells.setdefault((r["row"], r["solver"], r["steps"], r.get("guidance_scale")), r)
    return {**payloads[0], "results": list(cells.values()), "seconds": max(p["seconds"] for p in payloads),
            "merged_from": [str(p) for p in paths]}


def source_commit() -> str:
    """The checked-out commit, ``+dirty`` when tracked files differ from it."""
    # not in a git checkout: "unknown", not an error
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], check=False, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_outputs(out: Path, results: list[dict[str, Any]], args: argparse.Namespace, guidance: float,
                  commit: str, seconds: float, final: bool = True) -> None:
    """Write the JSON and Markdown results (``final``: also print the table and the headline)."""
    payload = {"commit": commit, "samples": args.samples, "max_steps": args.max_steps,
               "rows": list(dict.fromkeys(r["row"] for r in results)),
               "torch_threads": torch.get_num_threads(),
               "guidance_scale": guidance, "seconds": seconds, "results": results,
               "ptq": {"iters": args.ptq_iters, "act_iters": args.ptq_act_iters, "samples": args.ptq_samples}}
    md = (f"Cells: FD / class accuracy / final-step RMS deviation from FP (same solver and steps); "
          f"{args.samples} class-balanced samples, CFG {guidance:g}, {args.max_steps} training steps per "
          f"trained row, PTQ rows {args.ptq_iters} + {args.ptq_act_iters} iterations per block on "
          f"{args.ptq_samples} pairs, commit {commit}, {seconds / 60:.1f} min on this machine.\n\n"
          + markdown_table(results) + "\n\nSecond feature space: pixel-space FD / k-NN precision, recall "
          "(k = 3) in the classifier's feature space / in pixel space.\n\n"
          + markdown_table(results, spaces_cell) + "\n")
    results_dir = Path(__file__).resolve().parent / "results"
    for folder in (out, results_dir):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{getattr(args, 'name', 'quality_digits')}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (folder / f"{getattr(args, 'name', 'quality_digits')}.md").write_text(md)
    if not final:
        return
    print(md, flush=True)  # plain print: rich would wrap the table's lines
    print(headline(results))


if __name__ == "__main__":
    main()
