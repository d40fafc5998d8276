"""One row of the quality table from two runs (another commit, a fix, a diagnostic), paired.

``quality_intervals.py`` compares rows of one table; this compares *the same row* made twice from
the same x_T (same ``--samples`` and x_T seed), e.g. a recipe before and after a fix. Each cell the
row has in both result files (solver, steps, CFG) gets the paired bootstrap of A - B over the
shared x_T and each side's training seeds, for the digits FD and the pixel-space FD (lower is
better; a 95 % interval containing 0 is a tie).

    python benchmarks/quality_versions.py "W4A4 SA-PTQ (fp first-order)" \\
        --a runs/new/quality_digits.json --a_dir runs/new --b runs/old/quality_digits.json --b_dir runs/old \\
        --name fp1_calibration

Writes ``quality_versions_<name>.json`` + ``.md`` to ``--out`` (default: beside ``--a``) and
``benchmarks/results/``, and ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from quality_digits import source_commit
from quality_intervals import (
    RowFigures,
    check_same_x_T,
    load_cell,
    reference_statistics,
    seeds_of,
    verdict,
)

from saq_lightning.metrics.intervals import paired_bootstrap_difference

FIGURES = ("fd", "pixel_fd")


def cells_of(results: list[dict[str, Any]], row: str) -> set[tuple[str, int, float]]:
    return {(r["solver"], r["steps"], r.get("guidance_scale")) for r in results if r["row"] == row}


def compare_versions(row: str, a: dict[str, Any], a_dir: Path, b: dict[str, Any], b_dir: Path,
                     draws: int) -> list[dict[str, Any]]:
    """A - B for every cell of ``row`` in both runs (samples from each run's ``samples/`` folder)."""
    classifier, reference = reference_statistics()
    shared = sorted(cells_of(a["results"], row) & cells_of(b["results"], row), key=lambda c: (c[2] or 0, c[1], c[0]))
    if not shared:
        raise ValueError(f"row {row!r} has no cell in both result files")
    out = []
    for solver, steps, g in shared:
        cell = f"{solver}@{steps}@cfg{g:g}"
        sides = []
        for payload, folder in ((a, a_dir), (b, b_dir)):
            seeds = seeds_of(payload["results"], row)
            sides.append((RowFigures([load_cell([folder], row, s, cell) for s in seeds], classifier, None), seeds))
        n = sides[0][0].pixels[0].shape[0]
        entry: dict[str, Any] = {"solver": solver, "steps": steps, "guidance_scale": g,
                                 "a_seeds": sides[0][1], "b_seeds": sides[1][1]}
        for figure in FIGURES:
            diff = paired_bootstrap_difference(sides[0][0].statistic(figure, reference), len(sides[0][1]),
                                               sides[1][0].statistic(figure, reference), len(sides[1][1]),
                                               n, draws=draws, seed=0)
            entry[figure] = diff.as_dict()
        out.append(entry)
    return out


def markdown(entries: list[dict[str, Any]], header: str) -> str:
    def cell(d: dict[str, Any]) -> str:
        return f"{d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {verdict(d)}"

    lines = [header, "", "| solver | steps | CFG | seeds A / B | FD: A - B [95 %] | pixel FD: A - B [95 %] |",
             "|---|---:|---:|---|---|---|"]
    for e in entries:
        lines.append(f"| {e['solver']} | {e['steps']} | {e['guidance_scale']:g} | {e['a_seeds']} / {e['b_seeds']} "
                     f"| {cell(e['fd'])} | {cell(e['pixel_fd'])} |")
    return "\n".join(lines) + "\n"


def summary_line(row: str, entries: list[dict[str, Any]]) -> str:
    parts = [f"{e['solver']}@{e['steps']}@cfg{e['guidance_scale']:g} {verdict(e['fd'])}/{verdict(e['pixel_fd'])}"
             for e in entries]
    return f"{row}, A vs B (FD/pixel FD): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("row", help="the row's name in both result files")
    parser.add_argument("--a", type=Path, required=True, help="quality_digits JSON of run A")
    parser.add_argument("--a_dir", type=Path, required=True, help="run A's --out folder (its samples/)")
    parser.add_argument("--b", type=Path, required=True, help="quality_digits JSON of run B")
    parser.add_argument("--b_dir", type=Path, required=True, help="run B's --out folder")
    parser.add_argument("--name", required=True, help="output stem: quality_versions_<name>")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None, help="folder (default: beside --a)")
    args = parser.parse_args()
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    check_same_x_T(a, b, args.a, args.b)
    t0 = time.perf_counter()
    entries = compare_versions(args.row, a, args.a_dir, b, args.b_dir, args.draws)
    header = (f"{args.row}: A = {args.a.name} (commit {a['commit']}), B = {args.b.name} (commit {b['commit']}); "
              f"paired bootstrap ({args.draws} draws) over the shared x_T and each side's seeds, {a['samples']} "
              "samples per cell. A - B < 0: A is lower (better). `tie`: the 95 % interval contains 0.")
    doc = {"row": args.row, "a": str(args.a), "b": str(args.b), "a_commit": a["commit"], "b_commit": b["commit"],
           "commit": source_commit(), "draws": args.draws, "seconds": time.perf_counter() - t0, "cells": entries}
    text = markdown(entries, header)
    for folder in {args.out or args.a.parent, Path(__file__).resolve().parent / "results"}:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"quality_versions_{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (folder / f"quality_versions_{args.name}.md").write_text(text)
    print(text, flush=True)
    print(summary_line(args.row, entries))


if __name__ == "__main__":
    main()
