"""``python -m saq_lightning export``: a student as an integer export folder, the folder that
``sample --runtime int`` and ``quant.runtime.load_runtime`` read (``quant/export.py`` writes it).

    python -m saq_lightning export --student runs/w4a4/ckpt/last.ckpt --out exports/w4a4
    python -m saq_lightning export --student runs/ptq/student.ckpt --out exports/w8a8_ptq
    python -m saq_lightning export --student naive:w4a4 --model configs/models/ldm4_imagenet.yaml \\
        --out exports/ldm4_naive_w4a4

Prints the policy, what it covers (parameter, MAC and BOPs shares per precision) and the runtime
report (which arithmetic each layer runs on this machine). An existing ``--out`` is refused unless
``--overwrite true``; then the old folder is set aside until the new export is complete, and
removed only then.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

from jsonargparse import auto_cli

from saq_lightning.devices import choose_device
from saq_lightning.models import ModelSpec
from saq_lightning.outputs import OutputExistsError
from saq_lightning.quant import QuantizedUNet, export_student
from saq_lightning.quant.runtime import load_runtime
from saq_lightning.quant.runtime.report import RuntimeReport
from saq_lightning.students import NaiveCalibration, StudentRef
from saq_lightning.students.coverage import coverage_report
from saq_lightning.students.ref import StudentRefError


def export(
    student: str,
    out: str,
    model: ModelSpec | None = None,
    calibration_samples: int = 64,
    calibration_seed: int = 12345,
    calibration_method: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
) -> str:
    """Write ``student`` as an integer export folder ``out`` (config.json, manifest.json,
    weights.safetensors) and print its policy, coverage and runtime report.

    Args:
        student: a training (``fit``) or PTQ (``ptq``) checkpoint, or naive:<policy> (e.g.
            naive:w4a4: calibrated post-training quantization of ``model``).
        out: the export folder to write.
        model: model spec of a naive student (a configs/models/*.yaml file or inline fields);
            default: the digits teacher. A checkpoint names its own teacher.
        calibration_samples: FP trajectories a naive student is calibrated on.
        calibration_seed: seed of those trajectories.
        calibration_method: lp or minmax (default: the policy's).
        device: where the student is loaded and the runtime report is made: auto, cpu, cuda, ...
        overwrite: replace an existing ``out`` (set aside until the new export is complete).
    """
    ref = StudentRef.parse(student)
    if ref.kind not in ("checkpoint", "naive"):
        what = "the FP model" if ref.kind == "fp" else "already an export folder"
        raise StudentRefError(f"export --student {ref.text!r}: {what}; give a training or PTQ checkpoint "
                               f"or naive:<policy>")
    folder = Path(out).expanduser()
    refuse_existing_export(folder, overwrite)
    if model is not None and ref.kind == "checkpoint":
        print(f"note: --model is not used: {ref.text} names its teacher ({ref.model_spec(model).name or 'its spec'})")
    spec = ref.model_spec(model if model is not None else ModelSpec(kind="digits"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dev = choose_device(device)
    net = ref.load(spec, dev, calibration=NaiveCalibration(calibration_samples, calibration_seed, calibration_method))
    write_export(net.unet, folder)
    report = coverage_report(spec, net.unet.policy)
    print(f"wrote {folder}: {ref.kind} student {ref.text}, policy {net.unet.policy.name!r}")
    print(f"{len(report.quantized)} quantized layers, {len(report.rows) - len(report.quantized)} kept FP")
    print("\n".join(report.coverage_lines()))
    runtime = load_runtime(folder, arithmetic="int8", device=dev, allow_fallback=True)
    print("\n".join(runtime_lines(runtime.runtime_report)))
    if trained := ref.trained_sampler():
        print(f"note: trained for {trained_label(trained)}; the export does not record it: give these to "
              f"`sample --student {folder}`")
    return str(folder)


def refuse_existing_export(folder: Path, overwrite: bool) -> None:
    """An existing ``--out`` (a file, or a folder that is not empty) is refused unless ``overwrite``."""
    if not overwrite and (folder.is_file() or (folder.is_dir() and any(folder.iterdir()))):
        raise OutputExistsError(f"export: {folder} already exists; use another --out, or pass --overwrite "
                                f"true to replace it")


def write_export(unet: QuantizedUNet, folder: Path) -> None:
    """Export ``unet`` to ``folder``; an existing one is set aside, replaced by the complete new
    export, and only then removed (on any error it is put back)."""
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        export_student(unet, folder)
        return
    tag = uuid.uuid4().hex[:8]
    staging = folder.with_name(f".{folder.name}.export-{tag}")
    aside = folder.with_name(f".{folder.name}.overwritten-{tag}")
    try:
        export_student(unet, staging)
        os.replace(folder, aside)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


def runtime_lines(report: RuntimeReport) -> list[str]:
    """The runtime report in a few lines: its summary and notes, then one line per (bits, storage,
    arithmetic, kernel) with its layer count (``str(report)`` is the per-layer table)."""
    groups: Counter[tuple[str, str, str, str]] = Counter(
        (r.bits, r.weight_storage, r.arithmetic, r.kernel) for r in report.layers)
    lines = [report.summary(), *report.notes]
    for (bits, storage, arithmetic, kernel), n in groups.items():
        lines.append(f"  {n:4d} layers {bits:<6} {storage:<8} -> {arithmetic}{f' [{kernel}]' if kernel else ''}")
    return lines


def trained_label(trained: dict) -> str:
    """``dpm1, 10 steps (trained: [5, 10]), logSNR, guidance 2.0`` from a trained-sampler dict."""
    parts = [str(trained.get("solver", "?"))]
    if "order" in trained:
        parts[0] += f" order {trained['order']}"
    if "steps" in trained:
        parts.append(f"--steps {trained['steps']} (trained: {trained.get('trained_steps')})")
    for key in ("spacing", "guidance_scale"):
        if key in trained:
            parts.append(f"--{key} {trained[key]}")
    return "--solver " + ", ".join(parts)


def main(args: list[str]) -> None:
    auto_cli(export, args=args, as_positional=False, exit_on_error=False)
