"""A resumable, multi-rank sampling run that ends in an ADM ``.npz`` plus a PNG grid.

Layout of ``out``::

    samples.npz     arr_0 uint8 [N, H, W, C], arr_1 int64 labels (class-conditional), prompts (text)
    samples.json    the run's settings, counts, timing
    grid.png        the first ``grid_size`` samples
    parts/          while running: run.json (the run's fingerprint) and chunk_XXXXXX.npz files

Chunk ``c`` holds samples ``[c * B, (c + 1) * B)`` (``B`` = batch size) and belongs to rank
``c % world_size`` (``torch.distributed`` when initialised, e.g. under ``torchrun``). A chunk file
appears atomically when its batch is done, so an interrupted run restarted with the same settings
only samples the missing chunks; other settings in the same folder are an error (or, with
``overwrite``, a fresh start). Rank 0 merges the chunks in index order, streaming, and removes
``parts/`` unless ``keep_parts``.

A *piece* ``(i, n)`` is one process of a job array (no process group): it samples the chunks
``c % n == i``, and the piece that finds every chunk written merges (one claim file decides which).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from saq_lightning.errors import UserError
from saq_lightning.files import atomic_path, write_text_atomic
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.ranks import rank_world
from saq_lightning.seeding import evaluation_labels, evaluation_noise, evaluation_sample_seed

from .grids import save_grid
from .npz_format import write_samples_npz
from .sample_generation import (
    SamplerSetting,
    condition_classes,
    generate_images,
    is_text_model,
)

log = logging.getLogger(__name__)

RUN_FORMAT = "saq_lightning.sampling_run/1"
SAMPLES_FILE = "samples.npz"
META_FILE = "samples.json"
GRID_FILE = "grid.png"
PARTS = "parts"


class SampleRequestError(UserError, ValueError):
    """A sampling request the model cannot serve (counts, prompts, guidance without conditions)."""


class RunMismatchError(UserError, RuntimeError):
    """The output folder holds (part of) a run with other settings."""


class NonFiniteSamplesError(RunMismatchError):
    """The model produced NaN or infinite images (a broken student): never written as black images."""


#: results ``evaluate`` writes beside the samples by default: they scored the samples a new merge replaces
RESULT_FILES = ("eval.json", "eval.md")


@dataclass(frozen=True)
class SamplingPlan:
    """What a run produces; its fingerprint decides whether existing chunks can be reused."""

    num_samples: int
    setting: SamplerSetting
    seed: int
    batch_size: int
    sample_shape: tuple[int, ...]
    classes: list[int] | None
    prompts: list[str] | None
    identity: dict[str, Any]  # model and student description (anything that changes the output)

    def fingerprint(self) -> dict[str, Any]:
        prompts_sha = None
        if self.prompts is not None:
            prompts_sha = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
        return {
            "format": RUN_FORMAT,
            "num_samples": self.num_samples,
            "setting": self.setting.as_dict(),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "sample_shape": list(self.sample_shape),
            "num_classes": None if self.classes is None else len(self.classes),
            "prompts_sha256": prompts_sha,
            "identity": self.identity,
        }

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def chunk_indices(self, chunk: int) -> range:
        return range(chunk * self.batch_size, min((chunk + 1) * self.batch_size, self.num_samples))

    def labels(self, indices: Sequence[int]) -> torch.Tensor | None:
        return None if self.classes is None else evaluation_labels(indices, self.classes)

    def prompt_list(self, indices: Sequence[int]) -> list[str] | None:
        return None if self.prompts is None else [self.prompts[i % len(self.prompts)] for i in indices]


def make_plan(
    model: DiffusionModel,
    num_samples: int,
    setting: SamplerSetting,
    seed: int = 0,
    batch_size: int = 100,
    prompts: Sequence[str] | None = None,
    identity: dict[str, Any] | None = None,
) -> SamplingPlan:
    """Check the request against the model (conditioning, counts) and fix what will be sampled."""
    if num_samples < 1 or batch_size < 1:
        raise SampleRequestError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}")
    if is_text_model(model):
        if not prompts:
            raise SampleRequestError(f"{model.name or 'this model'} is text-to-image: give prompts (--prompts <file>)")
    elif prompts:
        raise SampleRequestError(f"{model.name or 'this model'} is not text-conditioned; prompts are not used")
    if setting.guidance_scale != 1.0 and model.conditioner is None:
        raise SampleRequestError("classifier-free guidance needs a conditional model (guidance_scale must be 1)")
    return SamplingPlan(num_samples, setting, seed, batch_size, tuple(model.sample_shape),
                        condition_classes(model), list(prompts) if prompts else None, dict(identity or {}))


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _chunk_path(parts: Path, chunk: int) -> Path:
    return parts / f"chunk_{chunk:06d}.npz"


def _chunk_ok(path: Path, plan: SamplingPlan, chunk: int, image_shape: tuple[int, ...] | None) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            images, index = data["arr_0"], data["index"]
    except Exception:  # noqa: BLE001 - any unreadable chunk is simply redone
        log.warning("chunk file %s is unreadable; sampling it again", path)
        return False
    want = plan.chunk_indices(chunk)
    ok = images.dtype == np.uint8 and images.ndim == 4 and list(index) == list(want)
    if ok and image_shape is not None:
        ok = tuple(images.shape[1:]) == tuple(image_shape)
    if not ok:
        log.warning("chunk file %s does not match the run; sampling it again", path)
    return ok


def _write_chunk(path: Path, images: np.ndarray, indices: range) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, arr_0=images, index=np.asarray(list(indices), dtype=np.int64))


def _check_folder(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> bool:
    """Read-only checks every rank makes alike (so that an error stops all of them, not only
    rank 0 with the others waiting at a barrier); returns whether ``parts/`` must be cleared."""
    run_file = out / PARTS / "run.json"
    done = out / META_FILE
    finished = done.is_file() and (out / SAMPLES_FILE).is_file() and not overwrite
    if finished and json.loads(done.read_text()).get("fingerprint") != fingerprint:
        raise RunMismatchError(
            f"{out} already holds samples of another run ({done}); use another folder or --overwrite true"
        )
    if run_file.is_file() and json.loads(run_file.read_text()) != fingerprint:
        if not overwrite:
            raise RunMismatchError(
                f"{out / PARTS} holds chunks of a run with other settings (see {run_file}); "
                "use another --out folder, or --overwrite true to discard them"
            )
        return True
    return overwrite and (out / PARTS).exists() and not run_file.is_file()


def _prepare_parts(out: Path, plan: SamplingPlan, overwrite: bool, rank: int) -> Path:
    parts = out / PARTS
    fingerprint = plan.fingerprint()
    clear = _check_folder(out, fingerprint, overwrite)
    _barrier()  # every rank has read the folder before rank 0 changes it
    if rank == 0:
        if clear:
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        (parts / "run.json").write_text(json.dumps(fingerprint, indent=2) + "\n")
    _barrier()
    return parts


def _prepare_piece_parts(out: Path, plan: SamplingPlan) -> Path:
    """``parts/`` for concurrent pieces: nothing is cleared, ``run.json`` is written atomically."""
    fingerprint = plan.fingerprint()
    _check_folder(out, fingerprint, overwrite=False)
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    run_file = parts / "run.json"
    if not run_file.is_file():
        write_text_atomic(run_file, json.dumps(fingerprint, indent=2) + "\n")
    return parts


def _claim_merge(parts: Path) -> bool:
    """True for exactly one of the pieces that find every chunk written."""
    try:
        os.close(os.open(parts / "merge.claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _piece_world(piece: tuple[int, int] | None, overwrite: bool) -> tuple[int, int]:
    if piece is None:
        return rank_world()
    index, count = piece
    if not 0 <= index < count:
        raise ValueError(f"piece {index}/{count}: the index must be in [0, {count})")
    if dist.is_available() and dist.is_initialized():
        raise ValueError("a piece of a job array is one process; do not combine it with torchrun/srun ranks")
    if overwrite:
        raise ValueError("overwrite cannot be combined with a piece: the pieces run at the same time")
    return index, count


def run_sampling(
    model: DiffusionModel,
    out: str | os.PathLike,
    plan: SamplingPlan,
    *,
    overwrite: bool = False,
    grid_size: int = 100,
    keep_parts: bool = False,
    info: dict[str, Any] | None = None,
    progress: bool = True,
    piece: tuple[int, int] | None = None,
) -> Path:
    """Sample ``plan`` with ``model`` (already on its device) into ``out``; returns the ``.npz`` path.

    Every rank calls this; rank 0 merges. Already finished runs with the same fingerprint return at
    once. With ``piece=(i, n)`` only that piece's chunks are sampled; the ``.npz`` exists once every
    piece is done (the last one merges).
    """
    out = Path(out)
    rank, world = _piece_world(piece, overwrite)
    fingerprint = plan.fingerprint()
    final = out / SAMPLES_FILE
    meta_file = out / META_FILE
    finished = final.is_file() and meta_file.is_file() and not overwrite
    if finished and json.loads(meta_file.read_text()).get("fingerprint") == fingerprint:
        return final
    parts = _prepare_parts(out, plan, overwrite, rank) if piece is None else _prepare_piece_parts(out, plan)
    mine = [c for c in range(plan.num_chunks) if c % world == rank]
    t0, sampled = time.perf_counter(), 0
    image_shape = None
    for k, chunk in enumerate(mine):
        path = _chunk_path(parts, chunk)
        if _chunk_ok(path, plan, chunk, image_shape):
            continue
        idx = plan.chunk_indices(chunk)
        cond = plan.labels(idx)
        if plan.prompts is not None:
            cond = model.conditioner.tokenize(plan.prompt_list(idx))
        generator = None
        if plan.setting.eta:
            device = next(model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(evaluation_sample_seed(plan.seed, -1 - chunk))
        images = generate_images(model, evaluation_noise(plan.seed, idx, plan.sample_shape), cond, plan.setting,
                                 generator)
        bad = (~torch.isfinite(images)).flatten(1).any(1)
        if bool(bad.any()):
            raise NonFiniteSamplesError(
                f"{out}: the model produced NaN/inf in {int(bad.sum())} of the {len(idx)} samples of chunk "
                f"{chunk} (samples {idx.start}..{idx.stop - 1}); nothing of that chunk is written (as uint8 "
                f"they would be black images); check the student ({(info or {}).get('student', 'fp')})")
        arr = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        image_shape = arr.shape[1:]
        _write_chunk(path, arr, idx)
        sampled += len(idx)
        if progress:
            log.info("rank %d: chunk %d (%d/%d of this rank)", rank, chunk, k + 1, len(mine))
    seconds = time.perf_counter() - t0
    info = {**(info or {}), "seconds_rank0": round(seconds, 3), "sampled_rank0": sampled, "world_size": world}
    if piece is not None:
        if all(_chunk_ok(_chunk_path(parts, c), plan, c, None) for c in range(plan.num_chunks)) \
                and _claim_merge(parts):
            _merge(out, parts, plan, fingerprint, grid_size, keep_parts, {**info, "merged_by_piece": rank})
            (parts / "merge.claim").unlink(missing_ok=True)
        else:
            log.info("piece %d/%d: %d chunk(s) sampled; another piece merges", rank, world, sampled)
        return final
    _barrier()
    if rank == 0:
        _merge(out, parts, plan, fingerprint, grid_size, keep_parts, info)
    _barrier()
    return final


def _merge(out: Path, parts: Path, plan: SamplingPlan, fingerprint: dict[str, Any], grid_size: int,
           keep_parts: bool, info: dict[str, Any]) -> None:
    missing = [c for c in range(plan.num_chunks) if not _chunk_ok(_chunk_path(parts, c), plan, c, None)]
    if missing:
        raise RuntimeError(f"chunks {missing[:5]} of {plan.num_chunks} are missing in {parts}; run again to resume")

    def chunks():
        for c in range(plan.num_chunks):
            with np.load(_chunk_path(parts, c), allow_pickle=False) as data:
                yield data["arr_0"]

    for stale in (out / name for name in RESULT_FILES):
        if stale.is_file():
            stale.unlink()
            log.warning("removed %s: it scored the samples this run replaces", stale)
    all_idx = range(plan.num_samples)
    labels = plan.labels(all_idx)
    write_samples_npz(out / SAMPLES_FILE, chunks(), plan.num_samples,
                      labels=None if labels is None else labels.numpy(), prompts=plan.prompt_list(all_idx))
    if grid_size > 0:
        head, got = [], 0
        for arr in chunks():
            head.append(arr[: grid_size - got])
            got += head[-1].shape[0]
            if got >= grid_size:
                break
        nrow = 10 if plan.classes is None else min(len(plan.classes), 10)
        cols = None if labels is None else [f"class {int(v)}" if nrow <= 5 else str(int(v))
                                            for v in labels[:nrow]]
        save_grid(np.concatenate(head), out / GRID_FILE, nrow=nrow, col_labels=cols,
                  title=f"{info.get('student', 'fp') if info else 'fp'}: {plan.setting.label()}")
    meta = {"fingerprint": fingerprint, "settings": {**plan.setting.as_dict(), "label": plan.setting.label()},
            "num_samples": plan.num_samples, "seed": plan.seed, **info}
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2) + "\n")
    if not keep_parts:
        shutil.rmtree(parts)
