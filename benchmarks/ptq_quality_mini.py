"""Reduced PTQ quality check on digits: FP vs naive vs finished ``ptq`` students, same x_T.

For when ``quality_digits.py``'s PTQ rows do not fit the time available: takes ``ptq`` output
folders (same policy and calibration settings), rebuilds the naive student from the first one's
``ptq_state/calibration.pt`` (the L_p calibration every PTQ row starts from, nearest rounding),
samples each with the given solvers from the same x_T and prints FD (classifier space) / pixel FD /
class accuracy / final-step RMS deviation from FP. Writes ``benchmarks/results/ptq_quality_mini.json``.

    python benchmarks/ptq_quality_mini.py runs/mini/brecq runs/mini/saptq1 --samples 100 --solvers dpm1@10
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.quant import load_trainable_state_dict
from saq_lightning.quant.layers import QuantLayer
from saq_lightning.students import load_student


def naive_from(folder: Path):
    model = load_student(folder / "student.ckpt")
    for m in model.unet.modules():
        if isinstance(m, QuantLayer):
            m.rounding = None
    load_trainable_state_dict(model.unet, torch.load(folder / "ptq_state" / "calibration.pt", weights_only=True))
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--solvers", nargs="+", default=["dpm1@10"])
    p.add_argument("--guidance", type=float, default=2.0)
    args = p.parse_args()
    classifier, _ = load_digits_classifier()
    real, _ = digits_split("all")
    from saq_lightning.models import ModelSpec, build_model

    ckpt = torch.load(args.folders[0] / "student.ckpt", weights_only=True)
    teacher = build_model(ModelSpec(**ckpt["saq"]["teacher"])).eval()
    rows = [("FP", teacher), ("naive (calibration only)", naive_from(args.folders[0]))]
    for f in args.folders:
        settings = json.loads((f / "ptq_results.json").read_text())["settings"]
        rows.append((f"{settings['objective']}/{settings['pair_roles']} ({f.name})", load_student(f / "student.ckpt").eval()))
    results, fp = [], {}
    for solver in args.solvers:
        name, steps = solver.split("@")
        setting = SamplerSetting(name, int(steps), "time_uniform", args.guidance)
        for row, model in rows:
            samples, labels = sample_class_balanced(model, args.samples, setting, 0)
            q = digits_quality(classifier, samples, labels, real)
            fp.setdefault(solver, samples)
            dev = float((samples - fp[solver]).pow(2).mean().sqrt())
            results.append({"row": row, "solver": solver, "fd": q.fd, "pixel_fd": q.pixel_fd, "acc": q.class_accuracy,
                            "deviation": dev})
            print(f"| {row} | {solver} | {q.fd:.3f} | {q.pixel_fd:.3f} | {q.class_accuracy:.1%} | {dev:.4f} |",
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                            text=True).stdout.strip()
    out = Path(__file__).resolve().parent / "results" / "ptq_quality_mini.json"
    out.write_text(json.dumps({"commit": commit, "samples": args.samples, "guidance": args.guidance,
                               "folders": [str(f) for f in args.folders], "results": results}, indent=1) + "\n")
    naive = {r["solver"]: r["deviation"] for r in results if r["row"].startswith("naive")}
    print(" ".join(f"{r['row'].split(' ')[0]}@{r['solver']}_dev_over_naive={r['deviation'] / naive[r['solver']]:.2f}"
                   for r in results if r["row"] not in ("FP",) and not r["row"].startswith("naive")))


if __name__ == "__main__":
    main()
