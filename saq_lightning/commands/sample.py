"""``python -m saq_lightning sample``: N samples of the FP model or a quantized student, written in
the ADM format (``samples.npz``) with a PNG grid; resumable, and spread over ranks under torchrun or
srun (one task per device), or over the tasks of a SLURM job array (``--piece i/n``,
slurm/sample.sbatch).

    python -m saq_lightning sample --out runs/samples/fp                     # digits teacher
    python -m saq_lightning sample --out runs/samples/w4a4 --student runs/w4a4/last.ckpt --steps 10
    torchrun --nproc_per_node 8 -m saq_lightning sample --model configs/models/ldm4_imagenet.yaml \\
        --num_samples 50000 --steps 20 --guidance_scale 1.5 --out runs/samples/ldm4_fp
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist
from jsonargparse import auto_cli

from saq_lightning.commands.placement import requeue_on_sigusr1
from saq_lightning.devices import choose_device
from saq_lightning.distributed import environment_placement, init_process_group
from saq_lightning.metrics.evaluation import read_prompt_file
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.metrics.sampling_run import make_plan, run_sampling
from saq_lightning.models import ModelSpec
from saq_lightning.ranks import rank_world
from saq_lightning.students import StudentRef
from saq_lightning.students.trained_sampler import departure_line

DEFAULTS = SamplerSetting()


def _setting(defaults: dict, conditional: bool, solver: str | None, steps: int | None, spacing: str | None,
             guidance_scale: float | None, order: int | None, eta: float | None) -> SamplerSetting:
    def pick(value, key, fallback):
        return value if value is not None else defaults.get(key, fallback)

    guidance = pick(guidance_scale, "guidance_scale", DEFAULTS.guidance_scale if conditional else 1.0)
    if order is None and solver is None:  # the default solver comes with its order (a PLMS-3 student)
        order = defaults.get("order")
    return SamplerSetting(
        solver=pick(solver, "solver", DEFAULTS.solver), steps=int(pick(steps, "steps", DEFAULTS.steps)),
        spacing=pick(spacing, "spacing", DEFAULTS.spacing), guidance_scale=float(guidance), order=order,
        eta=float(pick(eta, "eta", 0.0)),
    )


def _piece(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(count) >= 1):
        raise ValueError(f"--piece must be i/n (e.g. 0/4), got {text!r}")
    return int(index), int(count)


def sample(
    out: str,
    model: ModelSpec | None = None,
    student: str | None = None,
    num_samples: int = 1000,
    solver: str | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    guidance_scale: float | None = None,
    order: int | None = None,
    eta: float | None = None,
    prompts: str | None = None,
    seed: int = 0,
    batch_size: int = 250,
    device: str = "auto",
    grid_size: int = 100,
    overwrite: bool = False,
    keep_parts: bool = False,
    runtime: str = "fake",
    piece: str | None = None,
) -> str:
    """Sample a model into an ADM-format .npz (arr_0 uint8 NHWC, arr_1 labels) plus grid.png.

    Unset sampler options come from what a ``.ckpt`` student was trained for (a ``fit`` checkpoint:
    its first phase's student solver and order and steps, the run's spacing and guidance; a ``ptq``
    checkpoint: the sampler its pairs were built for; an option that departs prints one line), then from the
    model spec's ``sampling:`` block, then from ddim / 50 steps / time_uniform / CFG 2 (1 for
    unconditional models).

    Args:
        out: output folder (samples.npz, samples.json, grid.png; parts/ while running).
        model: model spec (a configs/models/*.yaml file or inline fields); default: the digits teacher.
        student: None for the FP model; a training checkpoint (.ckpt); an integer export folder;
            or naive:<policy> (e.g. naive:w4a4, calibrated post-training quantization).
        num_samples: number of samples (labels cycle through the classes: 50000 on ImageNet = 50 per class).
        solver: ddim, plms, dpm1|2|3, dpm2m|3m, dpm++2s|2m|3m, ...
        steps: solver steps.
        spacing: time_uniform, logSNR, time_quadratic or leading.
        guidance_scale: classifier-free guidance scale.
        order: override of the solver's order (e.g. dpm3 with order 1 is DPM-Solver-1).
        eta: DDIM noise (ddim only).
        prompts: text file, one prompt per line, cycled over the samples (text-to-image models).
        seed: seed of the per-sample initial noise (sample i depends on (seed, i) only).
        batch_size: samples per model call and per chunk file (part of the run's identity).
        device: auto (cuda:LOCAL_RANK if available), cpu, cuda, ...
        grid_size: samples shown in grid.png (0: none).
        overwrite: discard chunks or samples of a different run in ``out``.
        keep_parts: keep the per-chunk files after merging.
        runtime: fake (the student as trained: fake-quant float), int (low-bit runtime: int8 arithmetic
            on packed integer weights) or weight_only (packed weights, float activations).
        piece: ``i/n``: sample only piece i of n (one task of a SLURM job array, see
            slurm/sample.sbatch); the piece that completes the set merges samples.npz.
    """
    model = model if model is not None else ModelSpec(kind="digits")
    ref = StudentRef.parse(student)
    ref.check_runtime(runtime)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    placement = environment_placement()  # torchrun or an srun step
    requeue_on_sigusr1()  # under srun: SIGUSR1 requeues the job, which resumes from the finished chunks
    dev = choose_device(device, placement.local_rank if placement else 0)
    created = init_process_group(placement, dev)
    try:
        net = ref.load(model, dev, runtime=runtime)
        trained = ref.trained_sampler()  # a checkpoint's student: the sampler it was trained for
        setting = _setting({**net.sampling_defaults, **trained}, net.conditioner is not None, solver,
                           steps, spacing, guidance_scale, order, eta)
        if (note := departure_line(trained, setting, str(student))) and rank_world()[0] == 0:
            print(note)
        prompt_list = read_prompt_file(prompts) if prompts else None
        identity = {"model": json.loads(json.dumps(vars(model), default=str)), "student": ref.identity()}
        if runtime != "fake":
            identity["runtime"] = runtime
        plan = make_plan(net, num_samples, setting, seed, batch_size, prompt_list, identity)
        info = {"model": model.name or model.kind, "student": student or "fp", "device": str(dev), "runtime": runtime}
        path = run_sampling(net, out, plan, overwrite=overwrite, grid_size=grid_size, keep_parts=keep_parts,
                            info=info, piece=_piece(piece))
        if piece is not None and not path.is_file():
            print(f"piece {piece} of {out} done; samples.npz is merged by the piece that completes the set")
        elif rank_world()[0] == 0:
            print(f"wrote {path} ({num_samples} samples, {setting.label()}) and {Path(out) / 'grid.png'}")
        return str(path)
    finally:
        if created:
            dist.destroy_process_group()


def main(args: list[str]) -> None:
    auto_cli(sample, args=args, as_positional=False, exit_on_error=False)
