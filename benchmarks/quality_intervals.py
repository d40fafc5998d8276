"""Paired confidence intervals for the differences the README states, from a quality_digits run.

``quality_digits.py`` keeps every cell's samples (``<out>/samples/<row>/<seed>/<cell>.safetensors``)
and writes each cell's mean and 95 % interval over training seeds. This script takes the stated
comparisons (row A under one solver against row B under one solver, at each step count and CFG
scale both have) and bootstraps each difference over the shared x_T (paired) and the training
seeds (:func:`saq_lightning.metrics.intervals.paired_bootstrap_difference`), for the digits FD, the
pixel-space FD and the RMS distance to FP's DPM-Solver-2 samples. A difference whose interval
contains 0 is a tie.

    python benchmarks/quality_intervals.py runs/q25/quality_digits_seeds.json --samples_dir runs/q25a runs/q25b

Writes ``<name>_intervals.json`` + ``.md`` next to the results (and to ``benchmarks/results/``) and
ends with one summary line (wins and ties per comparison at 10 steps).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from quality_digits import Row, aggregate, markdown_table, plus_minus, samples_path

from saq_lightning.metrics.feature_stats import FeatureStats, feature_stats, frechet_distance
from saq_lightning.metrics.intervals import paired_bootstrap_difference


@dataclass(frozen=True)
class Comparison:
    """``a`` minus ``b``: (row, solver) each; ``claim`` is the README's reading when A is lower."""

    claim: str
    a: tuple[str, str]
    b: tuple[str, str]


MOTA, MIXSTEP = "W4A4 mixed-order", "W4A4 mixed-order + mixstep"
BRANCHES = "W4A4 mixed-order, branches aligned"
ANCHORED = "W4A4 solver-aware DPM-2, grid anchor"


def _ptq_comparisons(policy: str) -> list[Comparison]:
    """The PTQ claims for one policy; W4A4's keep their unprefixed names (the README cites them)."""
    P, tag = policy.upper(), "" if policy == "w4a4" else f"{policy.upper()} "
    naive, brecq, gi = f"{P} PTQ naive", f"{P} BRECQ", f"{P} BRECQ (grid + intermediate)"
    fp1, fp2, qlora = f"{P} SA-PTQ (fp first-order)", f"{P} SA-PTQ (fp second-order)", f"{P} SA-QLoRA from SA-PTQ"
    return [
        Comparison(f"{tag}BRECQ beats naive PTQ (DPM-1)", (brecq, "dpm1"), (naive, "dpm1")),
        Comparison(f"{tag}SA-PTQ fp_second_order beats BRECQ (DPM-1)", (fp2, "dpm1"), (brecq, "dpm1")),
        Comparison(f"{tag}SA-PTQ fp_second_order (DPM-1) beats FP DPM-1", (fp2, "dpm1"), ("FP", "dpm1")),
        Comparison(f"{tag}SA-PTQ fp_second_order (DPM-1) matches FP DPM-2", (fp2, "dpm1"), ("FP", "dpm2")),
        Comparison(f"{tag}SA-PTQ fp_first_order beats BRECQ (DPM-1)", (fp1, "dpm1"), (brecq, "dpm1")),
        Comparison(f"{tag}SA-PTQ fp_first_order beats BRECQ (DPM-2)", (fp1, "dpm2"), (brecq, "dpm2")),
        Comparison(f"{tag}SA-PTQ fp_first_order beats BRECQ on grid + intermediate points (DPM-2)",
                   (fp1, "dpm2"), (gi, "dpm2")),
        Comparison(f"{tag}BRECQ on grid + intermediate points beats BRECQ on the grid (DPM-2)",
                   (gi, "dpm2"), (brecq, "dpm2")),
        Comparison(f"{tag}SA-QLoRA from SA-PTQ beats its SA-PTQ start (DPM-1)", (qlora, "dpm1"), (fp1, "dpm1")),
        Comparison(f"{tag}SA-QLoRA from SA-PTQ (DPM-1) matches FP DPM-2", (qlora, "dpm1"), ("FP", "dpm2")),
    ]


COMPARISONS = [
    Comparison("MOTA student (DPM-1) beats FP DPM-1", (MOTA, "dpm1"), ("FP", "dpm1")),
    Comparison("MOTA student (DPM-1) matches FP DPM-2 (dual acceleration)", (MOTA, "dpm1"), ("FP", "dpm2")),
    Comparison("MOTA beats naive W4A4 (DPM-1)", (MOTA, "dpm1"), ("W4A4 naive", "dpm1")),
    Comparison("MOTA beats same-input (DPM-1)", (MOTA, "dpm1"), ("W4A4 same-input (cos, 2nd-order points)", "dpm1")),
    Comparison("MOTA beats faithful EfficientDM (DPM-1)", (MOTA, "dpm1"), ("W4A4 EfficientDM (DDIM points, MSE)", "dpm1")),
    Comparison("mixstep beats a fixed 10-step grid (DPM-1)", (MIXSTEP, "dpm1"), (MOTA, "dpm1")),
    Comparison("solver-aware DPM-2 student matches FP DPM-2", ("W4A4 solver-aware DPM-2", "dpm2"), ("FP", "dpm2")),
    Comparison("solver-aware DPM-2 beats naive W4A4 (DPM-2)", ("W4A4 solver-aware DPM-2", "dpm2"), ("W4A4 naive", "dpm2")),
    Comparison("W4A8 MOTA (DPM-1) matches FP DPM-2", ("W4A8 mixed-order", "dpm1"), ("FP", "dpm2")),
    Comparison("W4A8 MOTA beats W4A8 naive (DPM-1)", ("W4A8 mixed-order", "dpm1"), ("W4A8 naive", "dpm1")),
    # the grid anchor (loss.grid_anchor) against the solver-aware DPM-2 student without it
    *[Comparison(f"grid-anchored solver-aware DPM-2 beats the unanchored one ({s.upper()})", (ANCHORED, s),
                 ("W4A4 solver-aware DPM-2", s)) for s in ("dpm1", "dpm2", "dpm3")],
    Comparison("grid-anchored solver-aware DPM-2 matches FP DPM-2", (ANCHORED, "dpm2"), ("FP", "dpm2")),
    Comparison("grid-anchored solver-aware DPM-2 under DPM-1 beats FP DPM-1", (ANCHORED, "dpm1"), ("FP", "dpm1")),
    Comparison("grid-anchored solver-aware DPM-2 under DPM-3 matches FP DPM-3", (ANCHORED, "dpm3"), ("FP", "dpm3")),
    # both CFG branches aligned instead of their guided combination (the CFG 1 failure)
    Comparison("aligning the branches beats the combined loss (DPM-1)", (BRANCHES, "dpm1"), (MOTA, "dpm1")),
    Comparison("branches-aligned MOTA student (DPM-1) beats FP DPM-1", (BRANCHES, "dpm1"), ("FP", "dpm1")),
    Comparison("branches-aligned MOTA student (DPM-1) matches FP DPM-2", (BRANCHES, "dpm1"), ("FP", "dpm2")),
    # PTQ (reconstruction seeds)
    *_ptq_comparisons("w4a4"),
    *_ptq_comparisons("w4a8"),
]
#: figures bootstrapped per comparison (all: lower is better)
FIGURES = ("fd", "pixel_fd", "distance_to_fp_dpm2")


def load_cell(dirs: list[Path], row: str, seed: int | None, cell: str) -> torch.Tensor:
    """The samples ``quality_digits.py`` kept for (row, seed, cell), from the first folder holding them."""
    from safetensors.torch import load_file

    for d in dirs:
        path = samples_path(d, Row(row).key, seed, cell)
        if path.is_file():
            return load_file(str(path))["samples"]
    raise FileNotFoundError(f"no samples of row {row!r}, training seed {seed}, cell {cell} under "
                            f"{[str(d) for d in dirs]} (run quality_digits.py with this commit: it keeps every "
                            "cell's samples)")


class RowFigures:
    """Per-seed features of one (row, cell) and the set statistics the bootstrap calls."""

    def __init__(self, samples: list[torch.Tensor], classifier: Any, fp2: torch.Tensor | None):
        from saq_lightning.metrics.digits_spaces import classifier_features, pixel_features

        self.pixels = [pixel_features(s).numpy() for s in samples]
        self.features = [classifier_features(classifier, s).numpy() for s in samples]
        self.sq_to_fp2 = (None if fp2 is None else
                          [(s - fp2).pow(2).flatten(1).mean(1).double().numpy() for s in samples])

    def statistic(self, figure: str, reference: dict[str, FeatureStats]) -> Callable[[int, np.ndarray], float]:
        if figure == "fd":
            return lambda k, idx: frechet_distance(feature_stats(self.features[k][idx]), reference["fd"])
        if figure == "pixel_fd":
            return lambda k, idx: frechet_distance(feature_stats(self.pixels[k][idx]), reference["pixel_fd"])
        if self.sq_to_fp2 is None:
            raise ValueError("no FP DPM-Solver-2 samples for the distance")
        return lambda k, idx: float(np.sqrt(self.sq_to_fp2[k][idx].mean()))


def check_same_x_T(a: dict[str, Any], b: dict[str, Any], a_path: Path, b_path: Path) -> None:
    """Refuse to pair result files sampled from other x_T or another sample count (names ``b_path``)."""
    for field in ("samples", "x_T_seed"):
        if a.get(field) != b.get(field):
            raise ValueError(f"{b_path}: {field} {b.get(field)!r}, but {a_path} has {a.get(field)!r}: "
                             "paired intervals need the same x_T and sample count")


def reference_statistics() -> tuple[Any, dict[str, FeatureStats]]:
    """The digits classifier and the real digits' feature statistics in both spaces (FD references)."""
    from saq_lightning.data.digits import digits_split
    from saq_lightning.metrics.digits_classifier import load_digits_classifier
    from saq_lightning.metrics.digits_spaces import classifier_features, pixel_features

    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    return classifier, {"fd": feature_stats(classifier_features(classifier, real).numpy()),
                        "pixel_fd": feature_stats(pixel_features(real).numpy())}


def joined(payloads: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """The first payload with the (row, training seed) pairs of the others that it lacks (same x_T
    seed and samples per cell, else an error naming the file): a row's seeds may come from several
    files, a pair in several is the first file's. ``commits`` lists each file's commit and
    ``row_commits`` the commits each row's seeds come from."""
    first = dict(payloads[0])
    results = list(first["results"])
    for payload, path in zip(payloads[1:], paths[1:]):
        check_same_x_T(first, payload, paths[0], path)
        have = {(r["row"], r.get("train_seed")) for r in results}
        results += [dict(r, commit=payload["commit"]) for r in payload["results"]
                    if (r["row"], r.get("train_seed")) not in have]
    first["results"] = [r if "commit" in r else dict(r, commit=first["commit"]) for r in results]
    first["commits"] = [p["commit"] for p in payloads]
    first["row_commits"] = {row: sorted({r["commit"] for r in first["results"] if r["row"] == row})
                            for row in dict.fromkeys(r["row"] for r in first["results"])}
    first["train_seeds"] = sorted({s for p in payloads for s in p.get("train_seeds", [])})
    return first


def seeds_of(results: list[dict[str, Any]], row: str) -> list[int | None]:
    return sorted({r.get("train_seed") for r in results if r["row"] == row}, key=lambda s: -1 if s is None else s)


def compare_all(payload: dict[str, Any], dirs: list[Path], draws: int,
                claims: list[str] | None = None) -> list[dict[str, Any]]:
    """Every comparison whose rows the payload has (``claims``: only those whose claim contains one
    of these strings)."""
    classifier, reference = reference_statistics()
    results = payload["results"]
    have = {(r["row"], r["solver"], r["steps"], r.get("guidance_scale")) for r in results}
    out = []
    for comp in COMPARISONS:
        if claims and not any(c in comp.claim for c in claims):
            continue
        for steps in sorted({r["steps"] for r in results}):
            for g in sorted({r.get("guidance_scale") for r in results}):
                if (*comp.a, steps, g) not in have or (*comp.b, steps, g) not in have:
                    continue
                fp2 = load_cell(dirs, "FP", None, f"dpm2@{steps}@cfg{g:g}") if ("FP", "dpm2", steps, g) in have else None
                sides = []
                for row, solver in (comp.a, comp.b):
                    seeds = seeds_of(results, row)
                    cell = f"{solver}@{steps}@cfg{g:g}"
                    sides.append((RowFigures([load_cell(dirs, row, s, cell) for s in seeds], classifier, fp2),
                                  len(seeds)))
                n = sides[0][0].pixels[0].shape[0]
                entry = {"claim": comp.claim, "a": list(comp.a), "b": list(comp.b), "steps": steps,
                         "guidance_scale": g}
                for figure in FIGURES:
                    if figure == "distance_to_fp_dpm2" and (fp2 is None or comp.b == ("FP", "dpm2")):
                        continue  # FP DPM-2's distance to itself is 0 by construction: no comparison
                    diff = paired_bootstrap_difference(sides[0][0].statistic(figure, reference), sides[0][1],
                                                       sides[1][0].statistic(figure, reference), sides[1][1],
                                                       n, draws=draws, seed=0)
                    entry[figure] = diff.as_dict()
                out.append(entry)
    return out


def rerun_check(results: list[dict[str, Any]], rerun: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cell of an independent rerun (trained rows at training seeds the table did not use)
    against the table's prediction interval for one new seed, per figure. Where the table's seeds
    agree exactly (two seeds of equal class accuracy), the interval has zero width and predicts
    nothing: such a cell is no check (``inside: None``), not a miss."""
    from saq_lightning.metrics.intervals import seed_interval

    out = []
    for r in rerun:
        if r.get("train_seed") is None:
            continue
        same = [x for x in results if (x["row"], x["solver"], x["steps"], x.get("guidance_scale"))
                == (r["row"], r["solver"], r["steps"], r.get("guidance_scale")) and x.get("train_seed") is not None]
        if r["train_seed"] in {x["train_seed"] for x in same} or len(same) < 2:
            continue
        for figure in ("fd", "pixel_fd", "class_accuracy", "distance_to_fp_dpm2"):
            if r.get(figure) is None:
                continue
            iv = seed_interval([x[figure] for x in same])
            out.append({"row": r["row"], "solver": r["solver"], "steps": r["steps"],
                        "guidance_scale": r.get("guidance_scale"), "figure": figure, "seed": r["train_seed"],
                        "value": r[figure], "table_seeds": [x["train_seed"] for x in same],
                        "pred_lo": iv.pred_lo, "pred_hi": iv.pred_hi,
                        "inside": iv.pred_lo <= r[figure] <= iv.pred_hi if iv.sd > 0 else None})
    return out


def verdict(d: dict[str, Any]) -> str:
    """``A lower`` / ``B lower`` / ``tie`` from the interval of A - B (every figure here: lower is better)."""
    if d["lo"] <= 0.0 <= d["hi"]:
        return "tie"
    return "A lower" if d["hi"] < 0 else "B lower"


def markdown(entries: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| claim | steps | CFG | FD: A - B [95 %] | pixel FD: A - B [95 %] | distance to FP DPM-2: A - B [95 %] |",
             "|---|---:|---:|---|---|---|"]

    def cell(e: dict[str, Any], figure: str) -> str:
        d = e.get(figure)
        if d is None:
            return "-"
        return f"{d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {verdict(d)}"

    for e in entries:
        lines.append(f"| {e['claim']} | {e['steps']} | {e['guidance_scale']:g} | {cell(e, 'fd')} | "
                     f"{cell(e, 'pixel_fd')} | {cell(e, 'distance_to_fp_dpm2')} |")
    return "\n".join(lines) + "\n"


def summary_line(entries: list[dict[str, Any]]) -> str:
    parts = []
    for e in entries:
        if e["steps"] == 10 and "fd" in e:
            parts.append(f"cfg{e['guidance_scale']:g} {Row(e['claim']).key}: {verdict(e['fd'])}")
    return "paired FD verdicts at 10 steps: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="(merged) quality_digits JSONs from the same x_T: (row, training seed) pairs of the "
                             "later files join the first's (a pair in several: the first file's); each "
                             "keeps its own commit")
    parser.add_argument("--samples_dir", type=Path, nargs="+", required=True,
                        help="the --out folders of the quality_digits runs (their samples/ folders)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--claims", nargs="+", default=None, metavar="TEXT",
                        help="only the comparisons whose claim contains one of these (e.g. 'grid-anchored')")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: beside the results)")
    parser.add_argument("--name", default=None,
                        help="output file stem (default: the first result file's stem + '_intervals')")
    parser.add_argument("--rerun", type=Path, default=None, metavar="JSON",
                        help="an independent rerun at other training seeds, checked against the prediction "
                             "intervals for one new seed")
    args = parser.parse_args()
    payload = joined([json.loads(p.read_text()) for p in args.results], args.results)
    t0 = time.perf_counter()
    entries = compare_all(payload, args.samples_dir, args.draws, args.claims)
    rerun = rerun_check(payload["results"], json.loads(args.rerun.read_text())["results"]) if args.rerun else []
    seeds = payload.get("train_seeds", [])
    sources = ", ".join(f"{p.name} (commit {c})" for p, c in zip(args.results, payload["commits"]))
    header = (f"Paired bootstrap ({args.draws} draws) over the shared x_T and the training seeds {seeds} of "
              f"{sources}, {payload['samples']} samples per cell. "
              "A - B < 0: A is lower (better). `tie`: the 95 % interval contains 0.")
    mixed = rows_of_several_commits(payload)
    if mixed:
        header += " Seeds of one row from several commits: " + "; ".join(
            f"{row} ({', '.join(c)})" for row, c in mixed.items()) + "."
    stem = args.name or args.results[0].stem + "_intervals"
    counts = rerun_counts(rerun)
    means, means_text = joined_means(payload)
    doc = {"source": [str(p) for p in args.results], "commit": payload["commit"], "commits": payload["commits"],
           "row_commits": payload.get("row_commits"), "draws": args.draws, "train_seeds": seeds,
           "seconds": time.perf_counter() - t0, "comparisons": entries, "joined_means": means,
           "rerun": {"source": str(args.rerun) if args.rerun else None, "cells": rerun, **counts}}
    text = markdown(entries, header) + means_text + rerun_markdown(rerun)
    for folder in output_folders(args.out, args.results):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (folder / f"{stem}.md").write_text(text)
    print(text, flush=True)
    print(summary_line(entries) + (f"; rerun inside the one-new-seed interval: {counts['inside']}/{counts['total']}"
                                   f" ({counts['no_spread']} cells without spread, not checked)" if rerun else ""))


def output_folders(out: Path | None, results: list[Path]) -> set[Path]:
    """Where the intervals go: ``out`` (default: beside the first result file) and benchmarks/results."""
    return {out or results[0].parent, Path(__file__).resolve().parent / "results"}


def rows_of_several_commits(payload: dict[str, Any]) -> dict[str, list[str]]:
    """Rows of a :func:`joined` payload whose seeds come from more than one commit, with those commits."""
    return {row: c for row, c in payload.get("row_commits", {}).items() if len(c) > 1}


def joined_means(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """Seed means (± half the 95 % t interval) of the rows whose seeds come from several files:
    no single quality_digits file holds them. The cells and a markdown table (FD / pixel FD /
    distance to FP DPM-2)."""
    mixed = rows_of_several_commits(payload)
    results = [r for r in payload["results"] if r["row"] in mixed]
    if not results:
        return [], ""

    def cell_of(c: dict[str, Any]) -> str:
        return " / ".join("-" if c.get(m) is None else plus_minus(c, m, fmt)
                          for m, fmt in (("fd", ".3f"), ("pixel_fd", ".3f"), ("distance_to_fp_dpm2", ".4f")))

    text = ("\nSeed means of the rows whose seeds come from several files (FD / pixel FD / distance to "
            "FP DPM-2, ± half the 95 % t interval over the seeds):\n\n" + markdown_table(results, cell_of) + "\n")
    return aggregate(results), text


def rerun_counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    """Cells inside their interval, cells checked, and cells whose table seeds had no spread."""
    checked = [c for c in cells if c["inside"] is not None]
    return {"inside": sum(c["inside"] for c in checked), "total": len(checked),
            "no_spread": len(cells) - len(checked)}


def rerun_markdown(cells: list[dict[str, Any]]) -> str:
    if not cells:
        return ""
    counts = rerun_counts(cells)
    lines = ["", (f"Independent rerun: {counts['inside']} of {counts['total']} cells inside the table's 95 % "
                  "prediction interval for one new training seed"
                  + (f"; {counts['no_spread']} cells not checked (the table's seeds agree exactly, a "
                     "zero-width interval)." if counts["no_spread"] else ".")), "",
             "| row | solver | steps | CFG | figure | seed | value | interval | inside |", "|---|---|---:|---:|---|---:|---:|---|---|"]
    for c in cells:
        lines.append(f"| {c['row']} | {c['solver']} | {c['steps']} | {c['guidance_scale']:g} | {c['figure']} | "
                     f"{c['seed']} | {c['value']:.3f} | [{c['pred_lo']:.3f}, {c['pred_hi']:.3f}] | "
                     f"{ {True: 'yes', False: 'NO', None: 'no spread'}[c['inside']]} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

