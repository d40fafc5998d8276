"""Recipe ablations on the embedded digits default (issue 22): the MOTA loss balance and CFG.

``--study balance``: three cos:MSE balances at equal budget, written in the resolution-independent
mean form (``w_cos`` against a per-element mean MSE; the author's summed form ``100 * sum(1 - cos) +
sum (pred - target)^2`` is ``w_cos = 100 / D`` there, and Adam removes the overall factor):

* ``w_cos = 1``: the shipped default;
* ``w_cos = 100 / 64 = 1.5625``: the author's balance at the digits' D = 64;
* ``w_cos = 100 / 12288 = 0.0081``: the author's balance at LDM-4's D = 12,288 (what the author
  recipe means there), trained on digits so that the two balances meet on one model.

``--size 16`` runs the same study at a second resolution, D = 256 (the author's balance there is
``100 / 256``): the digits upsampled bilinearly to 16x16, a teacher of the same UNet trained on them
(``benchmarks/digits_size.py``; ``--teacher_steps``, into ``runs/digits16_teacher/``, reused once
trained), the same student config and phases. Samples are scored by
:mod:`saq_lightning.metrics.digits_resized`: average-pooled to 8x8 for the classifier FD and
accuracy against the real digits through the same upsample -> pool round trip, and pixel FD at
16x16 against the upsampled real digits.

``--study cfg``: students trained at CFG 2 with ``guidance_alignment: combined`` (the guided
directions: one combination of the branches) and ``branches`` (conditional and unconditional
outputs aligned separately), each sampled at CFG 1 and 2.

Every trained row: ``configs/digits_w4a4.yaml``'s student (W4A4) and data, one 10-step phase
against the DPM-Solver-2 teacher, ``--max_steps`` optimizer steps, the same seeds; the callbacks
that only watch training (sample grids, FD, trajectory deviation) are left out. Each row is
sampled with DPM-Solver-1 and -2 at 10 steps from ``--seeds`` noise seeds (FD against the real
digits, class accuracy, final-step RMS deviation from FP under the same sampler); the spread over
sample seeds is the interval a difference must leave to count (one training seed: training noise
is not in it).

    python benchmarks/recipe_ablation_digits.py --study balance --out runs/ablation_balance
    python benchmarks/recipe_ablation_digits.py --study cfg --out runs/ablation_cfg
    python benchmarks/recipe_ablation_digits.py --study balance --size 16 --teacher_steps 1200 \
        --max_steps 200 --solvers dpm1 dpm2                      # ablation_balance_digits16.*

Writes ``<name>.json`` + ``<name>.md`` to ``--out`` and ``--results`` (``benchmarks/results/``) and
ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from digits_size import model_spec, train_teacher
from quality_digits import FIXED_10, Row, row_config, source_commit
from rich.console import Console

from saq_lightning.commands.demo import resolve_config, train
from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.digits_resized import resized_digits_quality, resized_references
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.students import load_student

LDM4_D = 3 * 64 * 64


def balances(d: int) -> dict[str, float]:
    """The three mean-form ``w_cos`` rows at the digits' ``D = d`` (64 at 8x8, 256 at 16x16)."""
    return {"w_cos 1 (default)": 1.0, f"w_cos 100/{d} (author at D={d})": 100.0 / d,
            f"w_cos 100/{LDM4_D} (author at LDM-4 D)": 100.0 / LDM4_D}


CFG_ROWS = {"combined": "combined", "branches": "branches"}
#: callbacks that only watch training: left out so that every row spends its budget on training
WATCHERS = ("SampleGridCallback", "TrajectoryDeviationCallback", "DigitsFDCallback")


def study_rows(study: str, size: int = 8) -> list[Row]:
    if study == "balance":
        return [Row(f"W4A4 {name}", "w4a4", "mixed_order", FIXED_10, init={"loss": {"w_mse": 1.0, "w_cos": w}})
                for name, w in balances(size * size).items()]
    return [Row(f"W4A4 {name}", "w4a4", "mixed_order", FIXED_10, init={"guidance_alignment": mode})
            for name, mode in CFG_ROWS.items()]


def lean_config(path: Path, trajectories: int | None) -> None:
    """Drop the watcher callbacks; ``trajectories``: fewer trajectories per phase (smoke runs)."""
    cfg = yaml.safe_load(path.read_text())
    cbs = cfg["trainer"]["callbacks"]
    cfg["trainer"]["callbacks"] = [c for c in cbs if not c["class_path"].endswith(WATCHERS)]
    if trajectories is not None:
        gen = cfg["model"]["init_args"].setdefault("generation", {})
        gen.update(trajectories_per_phase=trajectories, trajectories_per_shard=trajectories)
        cfg["data"]["init_args"]["shards"] += f"_n{trajectories}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def build(row: Row, base: Path, out: Path, args: argparse.Namespace, console: Console):
    """The row's model (FP: the teacher) and its training seconds; trained rows train (or, done,
    are reused) in ``out/<row key>``."""
    if row.policy is None:
        return load_run_parts(["--config", str(base)]).setup.teacher, 0.0
    config = row_config(base, out / row.key, row, args.max_steps)
    lean_config(config, args.trajectories)
    t0 = time.perf_counter()
    checkpoint = train(config, out / row.key, retrain=False, console=console)
    return load_student(checkpoint).eval(), time.perf_counter() - t0


def summarise(results: list[dict[str, Any]], study: str) -> str:
    """One line: FD at 10 steps, mean ± half the seed range per row, CFG scale and sampler."""
    groups: dict[tuple[str, float, str], list[float]] = {}
    for r in results:
        groups.setdefault((r["row"], r["guidance_scale"], r["solver"]), []).append(r["fd"])

    def cell(row: str, g: float, solver: str) -> str:
        v = groups.get((row, g, solver), [])
        if not v:
            return "-"
        return f"{statistics.fmean(v):.3f}±{(max(v) - min(v)) / 2:.3f}"

    rows = list(dict.fromkeys(r["row"] for r in results))
    scales = sorted({r["guidance_scale"] for r in results})
    solvers = list(dict.fromkeys(r["solver"] for r in results))
    parts = [f"{row} " + " ".join(f"cfg{g:g} {s} {cell(row, g, s)}" for g in scales for s in solvers)
             for row in rows]
    return f"{study}: FD at 10 steps (mean ± half-range over sample seeds): " + "; ".join(parts)


def sized_base(base: Path, size: int, teacher_steps: int | None, out: Path,
               teacher_root: Path = Path("runs")) -> tuple[Path, dict[str, Any]]:
    """``base`` with the ``size`` teacher (trained first when missing) and that teacher's record."""
    if teacher_steps is None:
        raise SystemExit(f"--size {size} needs --teacher_steps (the {size}x{size} teacher's optimizer steps)")
    weights = train_teacher(size, teacher_steps, teacher_root)
    meta = json.loads(weights.with_suffix(".json").read_text())
    cfg = yaml.safe_load(base.read_text())
    cfg["model"]["init_args"]["teacher"] = str(model_spec(size, weights).resolve())
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{base.stem}_{size}{base.suffix}"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, {"weights": str(weights), "steps": meta["training"]["global_step"],
                  "train_seconds": meta["training"].get("seconds"), "recipe": "configs/digits_teacher.yaml's "
                  "lr/warmup/cfg_dropout/EMA/batch/clip, bilinear-upsampled digits"}


def scorer(size: int, classifier):
    """``score(samples, labels) -> DigitsQuality`` at ``size`` (8: the native digits metrics)."""
    if size == 8:
        real, _ = digits_split("all")
        return lambda samples, labels: digits_quality(classifier, samples, labels, real)
    upsampled, _ = resized_references(size)
    return lambda samples, labels: resized_digits_quality(classifier, samples, labels, upsampled)


def fp_fd(results: list[dict[str, Any]]) -> dict[str, float]:
    """The FP teacher's FD per CFG scale and sampler, mean over sample seeds."""
    groups: dict[str, list[float]] = {}
    for r in results:
        if r["row"] == "FP":
            groups.setdefault(f"cfg{r['guidance_scale']:g} {r['solver']}", []).append(r["fd"])
    return {k: statistics.fmean(v) for k, v in groups.items()}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| row | CFG | solver | seed | FD | accuracy | pixel FD | deviation from FP |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in results:
        dev = "-" if r["final_deviation"] is None else f"{r['final_deviation']:.4f}"
        lines.append(f"| {r['row']} | {r['guidance_scale']:g} | {r['solver']} | {r['seed']} | {r['fd']:.3f} | "
                     f"{r['class_accuracy']:.1%} | {r['pixel_fd']:.3f} | {dev} |")
    return "\n".join(lines)


def write_outputs(args: argparse.Namespace, name: str, out: Path, teacher: dict[str, Any] | None, commit: str,
                  results: list[dict[str, Any]], seconds: float, final: bool) -> None:
    """``<name>.json`` + ``.md`` into ``out`` and ``--results``; ``final``: also print table and summary."""
    summary = summarise(results, args.study)
    payload = {"commit": commit, "command": " ".join(["python", *sys.argv]), "study": args.study,
               "size": args.size, "D": args.size * args.size, "teacher": teacher, "teacher_fd": fp_fd(results),
               "max_steps": args.max_steps, "samples": args.samples, "seeds": args.seeds, "solvers": args.solvers,
               "trajectories": args.trajectories, "torch_threads": torch.get_num_threads(), "seconds": seconds,
               "complete": final, "rows": [r.name for r in study_rows(args.study, args.size)],
               "results": results, "summary": summary}
    where = "8x8 digits (D = 64)" if teacher is None else (
        f"{args.size}x{args.size} upsampled digits (D = {args.size ** 2}), teacher trained {teacher['steps']} steps; "
        f"FD/accuracy of samples pooled to 8x8 against the real digits' upsample -> pool round trip, "
        f"pixel FD at {args.size}x{args.size}")
    md = (f"{args.study} ablation on the {where}, commit {commit}: {args.max_steps} training steps per row, "
          f"{args.samples} samples per cell, sample seeds {args.seeds}, {seconds / 60:.1f} min"
          f"{'' if final else ' (INCOMPLETE: rows still to run)'}.\n`{payload['command']}`\n\n"
          + markdown(results) + "\n")
    for folder in (out, args.results):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
        (folder / f"{name}.md").write_text(md)
    if final:
        print(md, flush=True)
        print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["balance", "cfg"], required=True)
    parser.add_argument("--out", default=None, help="default runs/ablation_<study>")
    parser.add_argument("--config", default="configs/digits_w4a4.yaml")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampling noise seeds")
    parser.add_argument("--solvers", nargs="+", default=["dpm1", "dpm2"], choices=["dpm1", "dpm2"],
                        help="samplers (10 steps each)")
    parser.add_argument("--trajectories", type=int, default=None,
                        help="trajectories per phase (default: the config's; smoke runs use fewer)")
    parser.add_argument("--size", type=int, default=8, choices=[8, 16, 32],
                        help="image size: 8 the shipped digits; 16/32 the upsampled digits and their own teacher")
    parser.add_argument("--teacher_steps", type=int, default=None,
                        help="optimizer steps of the --size teacher (trained once into <teacher_root>/digits<size>_teacher)")
    parser.add_argument("--teacher_root", type=Path, default=Path("runs"))
    parser.add_argument("--row_order", type=int, nargs="+", default=None,
                        help="the study rows to train, by index, in this order (default: all, as listed)")
    parser.add_argument("--name", default=None,
                        help="results file stem (default ablation_<study>_digits, + <size> when not 8)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="second folder the JSON and table are copied to")
    args = parser.parse_args()
    suffix = "" if args.size == 8 else str(args.size)
    name = args.name or f"ablation_{args.study}_digits{suffix}"
    out = Path(args.out or f"runs/ablation_{args.study}{suffix}")
    console = Console()
    base = resolve_config(args.config)
    teacher = None
    if args.size != 8:
        base, teacher = sized_base(base, args.size, args.teacher_steps, out, args.teacher_root)
    trained_cfg = float(yaml.safe_load(base.read_text())["model"]["init_args"].get("guidance_scale", 1.0))
    scales = [1.0, trained_cfg] if args.study == "cfg" else [trained_cfg]
    classifier, _ = load_digits_classifier()
    score = scorer(args.size, classifier)
    commit = source_commit()
    t_start = time.perf_counter()
    results: list[dict[str, Any]] = []
    fp_final: dict[tuple, torch.Tensor] = {}
    study = study_rows(args.study, args.size)
    rows = [Row("FP"), *(study if args.row_order is None else [study[i] for i in args.row_order])]
    last = rows[-1]
    for row in rows:
        console.rule(row.name)
        model, train_seconds = build(row, base, out, args, console)
        for g in scales:
            for solver in args.solvers:
                for seed in args.seeds:
                    setting = SamplerSetting(solver, 10, "time_uniform", g)
                    samples, labels = sample_class_balanced(model, args.samples, setting, seed)
                    q = score(samples, labels)
                    key = (solver, g, seed)
                    if row.policy is None:
                        fp_final[key] = samples
                    dev = None if row.policy is None else float((samples - fp_final[key]).pow(2).mean().sqrt())
                    results.append({"row": row.name, "guidance_scale": g, "solver": solver, "steps": 10,
                                    "seed": seed, **q.as_dict(), "final_deviation": dev,
                                    "train_seconds": train_seconds})
                    console.print(f"  cfg {g:g} {solver} seed {seed}: FD {q.fd:.3f} acc {q.class_accuracy:.1%}")
        # after every row: a run stopped part-way leaves the finished rows (``complete: false``)
        write_outputs(args, name, out, teacher, commit, results, time.perf_counter() - t_start, final=row is last)


if __name__ == "__main__":
    main()
