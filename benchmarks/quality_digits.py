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

``--seeds N`` trains every trained row N times (training seeds 0..N-1; ``--train_seeds`` names them), each cell
then holds the mean over seeds ± half its 95 % t interval, and every cell's samples are kept under
``<out>/samples/`` for the paired bootstrap of ``quality_intervals.py``; each result also carries the
RMS distance of its final samples to FP's DPM-Solver-2 samples from the same x_T (the direct test of
"dual acceleration").

Writes ``quality_digits.json`` + ``quality_digits.md`` to ``--out`` (and copies both to
``benchmarks/results/``) after every row. Rows can run in separate processes (``--rows``, each
with its own ``--name``) and be joined with ``--merge <json>...``. The PTQ rows (SA-PTQ, BRECQ,
SA-QLoRA from SA-PTQ at W8A8 / W4A8 / W4A4) are in ``quality_digits_ptq.py``. The last line is the headline "dual acceleration" ratio per W4A4 row:
student FD with DPM-Solver-1 at 10 steps over FP FD with DPM-Solver-2 at 10 steps.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
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
from saq_lightning.metrics.intervals import seed_interval
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
# the solver-aware student's eps at the grid point held to the teacher's (loss.grid_anchor, equal weight)
GRID_ANCHOR = {"loss": {"grid_anchor": 1.0}}
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
    # both CFG branches aligned (eps_u and eps_c), not only their guided combination: what CFG 1 samples
    Row("W4A4 mixed-order, branches aligned", "w4a4", "mixed_order", init={"guidance_alignment": "branches"}),
    Row("W4A8 naive", "w4a8"),
    Row("W4A8 mixed-order", "w4a8", "mixed_order"),
    Row("W8A8 naive", "w8a8"),
    # recipe comparison at equal budget: each config with its own phases, spacing, loss, lr
    Row("W4A4 default recipe", "w4a4", "mixed_order", None, "configs/digits_w4a4.yaml"),
    Row("W4A4 author recipe", "w4a4", "mixed_order", None, "configs/digits_w4a4_author.yaml"),
    Row("W4A4 solver-aware DPM-2", "w4a4", "mixed_order", SOLVER_AWARE_DPM2),
    Row("W4A4 solver-aware DPM-2, grid anchor", "w4a4", "mixed_order", SOLVER_AWARE_DPM2, init=GRID_ANCHOR),
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


def row_config(base: Path, out: Path, row: Row, max_steps: int, train_seed: int | None = None,
               shards_root: Path | None = None) -> Path:
    """The demo's training config with this row's policy, alignment and mixstep phases.

    ``train_seed``: ``seed_everything`` and the data module's shuffling seed (the trajectories, their
    generation seed and the x_T they start from stay the same: "different training seeds, same data");
    ``None`` keeps the config's. ``shards_root``: the folder of the shared trajectory folders
    (default ``out.parent``)."""
    out.mkdir(parents=True, exist_ok=True)
    path = demo_run_config(base, out, max_steps)
    cfg = yaml.safe_load(path.read_text())
    if train_seed is not None:
        cfg["seed_everything"] = int(train_seed)
        cfg["data"]["init_args"]["seed"] = int(train_seed)
    init = cfg["model"]["init_args"]
    init["policy"] = row.policy or "w4a4"
    init["alignment"] = row.alignment or "mixed_order"
    for name, value in row.init.items():
        init[name] = {**init.get(name, {}), **value} if isinstance(value, dict) else value
    if row.phases is not None:
        cfg["mixstep"]["phases"] = row.phases
    # rows with the same phases (and teacher settings) share one trajectory folder (generate keeps
    # finished shards)
    shared = {"mixstep": MIXSTEP, "fixed10": FIXED_10, "ddim10": DDIM_10, "solver_aware_dpm2": SOLVER_AWARE_DPM2}
    tag = next((k for k, v in shared.items() if v == row.phases), row.key)
    if "guidance_scale" in row.init:
        tag += f"_cfg{row.init['guidance_scale']:g}"
    cfg["data"]["init_args"]["shards"] = str((shards_root or out.parent) / f"trajectories_{tag}")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def row_folder(out: Path, row: Row, train_seed: int | None) -> Path:
    """``<out>/<row>`` for training seed 0 (and untrained rows), ``<out>/<row>/seed<k>`` for the others."""
    return out / row.key if not train_seed else out / row.key / f"seed{train_seed}"


def build_row_model(row: Row, base: Path, out: Path, max_steps: int, console: Console,
                    train_seed: int | None = None):
    if row.config is not None:
        base = resolve_config(row.config)
    folder = row_folder(out, row, train_seed)
    config = row_config(base, folder, row, max_steps, train_seed, shards_root=out)
    parts = load_run_parts(["--config", str(config)])
    module = parts.setup
    if row.policy is None:
        return module.teacher, 0.0
    if row.alignment is None:
        module.bind_bucket_map(parts.schedule.phases)  # as fit does before calibrating
        module.calibrate_student()
        return module.student_model.eval(), 0.0
    t0 = time.perf_counter()
    checkpoint = train(config, folder, retrain=False, console=console)
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
    parser.add_argument("--seed", type=int, default=0, help="the x_T seed (every row samples the same x_T)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="train every trained row N times, training seeds 0..N-1 (same data, same x_T)")
    seeds.add_argument("--train_seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="these training seeds (e.g. one more seed to check a stated interval)")
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
    train_seeds = list(range(args.seeds)) if args.seeds else (args.train_seeds or [0])
    runs = [(row, seed if is_trained(row) else None) for row in rows
            for seed in (train_seeds if is_trained(row) else [None])]
    commit = source_commit()  # now: the tree may change while the benchmark runs
    command = " ".join(["python", *sys.argv])
    t_start = time.perf_counter()
    fp_final: dict[str, torch.Tensor] = {}
    results: list[dict[str, Any]] = []
    for i, (row, train_seed) in enumerate(runs):
        console.rule(row.name + ("" if train_seed is None else f", training seed {train_seed}"))
        if isinstance(row, Row):
            model, train_seconds = build_row_model(row, base, out, args.max_steps, console, train_seed)
        else:
            model, train_seconds = build_ptq_row_model(row, base, out, args, console, train_seed)
        for setting in settings:
            t0 = time.perf_counter()
            samples, labels = sample_class_balanced(model, args.samples, setting, args.seed)
            q = digits_quality(classifier, samples, labels, real)
            key = f"{setting.solver}@{setting.steps}@cfg{setting.guidance_scale:g}"
            if row.policy is None:
                fp_final[key] = samples
            save_samples(out, row.key, train_seed, key, samples, labels)
            deviation = rms(samples, fp_final.get(key))
            # the direct test of "dual acceleration": the distance to FP's DPM-Solver-2 samples from
            # the same x_T (for the FP row under DPM-Solver-1: the gap a student has to close)
            to_fp2 = rms(samples, fp_final.get(f"dpm2@{setting.steps}@cfg{setting.guidance_scale:g}"))
            results.append({"row": row.name, "train_seed": train_seed, "solver": setting.solver,
                            "steps": setting.steps, "guidance_scale": setting.guidance_scale,
                            **q.as_dict(),
                            "final_deviation": deviation, "distance_to_fp_dpm2": to_fp2,
                            "train_seconds": train_seconds,
                            "sample_seconds": time.perf_counter() - t0, "x_T_seed": args.seed,
                            "command": command, "commit": commit})
            console.print(f"  {key:14s} FD {q.fd:7.3f}  acc {q.class_accuracy:6.1%}  pixel FD "
                          f"{q.pixel_fd:6.3f}  P/R {q.precision:.2f}/{q.recall:.2f} pix "
                          f"{q.pixel_precision:.2f}/{q.pixel_recall:.2f}  dev "
                          f"{deviation if deviation is not None else float('nan'):.4f}  to FP DPM-2 "
                          f"{to_fp2 if to_fp2 is not None else float('nan'):.4f}")
        if row.policy is None:  # FP's DPM-Solver-1 cells ran before its DPM-Solver-2 samples existed
            backfill_fp_distances(results, fp_final)
        # after every row: a later row that fails loses only itself (rerun: trained rows resume)
        write_outputs(out, results, args, guidance, commit, time.perf_counter() - t_start,
                      final=i == len(runs) - 1)


def backfill_fp_distances(results: list[dict[str, Any]], fp_final: dict[str, torch.Tensor]) -> None:
    """The FP row's distance to its own DPM-Solver-2 samples (the gap a DPM-Solver-1 student closes)."""
    for r in results:
        if r["row"] == "FP" and r["distance_to_fp_dpm2"] is None:
            key = f"{r['solver']}@{r['steps']}@cfg{r['guidance_scale']:g}"
            r["distance_to_fp_dpm2"] = rms(fp_final[key], fp_final.get(f"dpm2@{r['steps']}@cfg{r['guidance_scale']:g}"))


def is_trained(row: Any) -> bool:
    """Rows whose result depends on a training seed: trained rows, and PTQ rows through their
    reconstruction seed (FP and the naive rows, calibrated only, do not)."""
    if isinstance(row, Row):
        return row.policy is not None and row.alignment is not None
    return not row.naive


def rms(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
    """RMS distance between two sample sets from the same x_T (``None`` without a reference)."""
    return None if b is None else float((a - b).pow(2).mean().sqrt())


def samples_path(out: Path, row_key: str, train_seed: int | None, cell: str) -> Path:
    """Where a cell's samples are kept (``benchmarks/quality_intervals.py`` bootstraps them)."""
    seed = "untrained" if train_seed is None else f"seed{train_seed}"
    return out / "samples" / row_key / seed / (cell.replace("@", "_") + ".safetensors")


def save_samples(out: Path, row_key: str, train_seed: int | None, cell: str, samples: torch.Tensor,
                 labels: torch.Tensor) -> None:
    from safetensors.torch import save_file

    path = samples_path(out, row_key, train_seed, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"samples": samples.float().contiguous(), "labels": labels.contiguous()}, str(path))


#: per-sample-set figures of a cell; with several training seeds each becomes their mean (and interval)
METRICS = ("fd", "class_accuracy", "precision", "recall", "pixel_fd", "pixel_precision", "pixel_recall",
           "final_deviation", "distance_to_fp_dpm2")


def cell_key(r: dict[str, Any]) -> tuple:
    return r["row"], r["solver"], r["steps"], r.get("guidance_scale")


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One cell per (row, solver, steps, CFG): each metric's mean over the training seeds and, with
    two or more seeds, ``<metric>_interval`` (95 % t interval and one-new-seed prediction interval)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(cell_key(r), []).append(r)
    cells = []
    for rs in groups.values():
        cell = {k: v for k, v in rs[0].items() if k not in METRICS and k != "train_seed"}
        cell["train_seeds"] = [r.get("train_seed") for r in rs]
        for m in METRICS:
            values = [r.get(m) for r in rs]
            if any(v is None for v in values):
                cell[m] = None
                continue
            finite = all(math.isfinite(v) for v in values)
            interval = seed_interval(values) if finite else None
            cell[m] = interval.mean if interval else float("nan")
            if interval is not None and interval.n > 1:
                cell[f"{m}_interval"] = interval.as_dict()
        cells.append(cell)
    return cells


def plus_minus(cell: dict[str, Any], metric: str, fmt: str = ".3f") -> str:
    """``mean`` or ``mean ± half-width`` of the 95 % interval over training seeds."""
    iv = cell.get(f"{metric}_interval")
    text = format(cell[metric], fmt)
    return text if not iv else f"{text} ± {format((iv['hi'] - iv['lo']) / 2, fmt)}"


def markdown_table(results: list[dict[str, Any]], cell_of=None) -> str:
    """One line per (row, solver[, CFG]); a column per step count; cells ``FD / accuracy / deviation``
    (or ``cell_of(cell)``), means over training seeds ``± half`` their 95 % interval."""
    results = aggregate(results)
    steps = sorted({r["steps"] for r in results})
    scales = sorted({r.get("guidance_scale") for r in results}, key=lambda g: (g is None, g))
    by_cfg = len(scales) > 1
    lines = ["| row | solver | " + ("CFG | " if by_cfg else "") + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|" + ("---:|" if by_cfg else "") + "---:|" * len(steps)]
    cell = {(r["row"], r["solver"], r["steps"], r.get("guidance_scale")): r for r in results}

    def default_cell(r: dict[str, Any]) -> str:
        dev = "" if r["final_deviation"] in (None, 0.0) else f" / {plus_minus(r, 'final_deviation')}"
        return f"{plus_minus(r, 'fd')} / {r['class_accuracy']:.1%}{dev}"

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
    if r.get("pixel_fd") is None:
        return ""
    return (f"{r['pixel_fd']:.3f} / {r['precision']:.2f}, {r['recall']:.2f} / "
            f"{r['pixel_precision']:.2f}, {r['pixel_recall']:.2f}")


def distance_cell(r: dict[str, Any]) -> str:
    """RMS distance of the final samples to FP's under the same solver / to FP's DPM-Solver-2 samples."""
    if r.get("distance_to_fp_dpm2") is None:
        return ""
    same = "-" if r.get("final_deviation") is None else plus_minus(r, "final_deviation", ".4f")
    return f"{same} / {plus_minus(r, 'distance_to_fp_dpm2', '.4f')}"


def headline(results: list[dict[str, Any]]) -> str:
    """Student FD with DPM-Solver-1 at 10 steps over FP FD with DPM-Solver-2 at 10 steps, per W4A4
    row, CFG scale and feature space (classifier ``fd``, pixel ``pixel_fd``); then the PTQ rows'."""
    parts = []
    results = aggregate(results)
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
            cells.setdefault((r.get("train_seed"), *cell_key(r)), r)
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
               "guidance_scale": guidance, "seconds": seconds,
               "train_seeds": sorted({r["train_seed"] for r in results if r.get("train_seed") is not None}),
               "x_T_seed": getattr(args, "seed", 0), "results": results, "cells": aggregate(results),
               "ptq": {"iters": args.ptq_iters, "act_iters": args.ptq_act_iters, "samples": args.ptq_samples}}
    seeds = sorted({r["train_seed"] for r in results if r.get("train_seed") is not None})
    md = (f"Cells: FD / class accuracy / final-step RMS deviation from FP (same solver and steps); "
          f"trained rows: mean over training seeds {seeds} ± half their 95 % t interval (untrained rows: "
          f"one run); every row sampled from the same x_T (seed {getattr(args, 'seed', 0)}); "
          f"{args.samples} class-balanced samples, CFG {guidance:g}, {args.max_steps} training steps per "
          f"trained row, PTQ rows {args.ptq_iters} + {args.ptq_act_iters} iterations per block on "
          f"{args.ptq_samples} pairs, commit {commit}, {seconds / 60:.1f} min on this machine.\n\n"
          + markdown_table(results) + "\n\nSecond feature space: pixel-space FD / k-NN precision, recall "
          "(k = 3) in the classifier's feature space / in pixel space.\n\n"
          + markdown_table(results, spaces_cell) + "\n\nThe direct trajectory test: RMS distance of the final "
          "samples to FP's under the same solver / to FP's DPM-Solver-2 samples (same steps, same x_T).\n\n"
          + markdown_table(results, distance_cell) + "\n")
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
