"""Score a sample ``.npz`` (ADM format) against a reference: FID, sFID, IS, KID, precision/recall,
CLIP score, and for the embedded digits default FD / class accuracy / precision-recall in the
digits classifier's feature space. ``python -m saq_lightning evaluate`` is a thin wrapper.

Every check that can fail cheaply (file format, resolution, counts, weight files, prompts)
runs before any network does.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saq_lightning.files import sha256_file

from .feature_stats import StatsAccumulator, frechet_distance
from .inception_score import inception_score
from .kid import kernel_inception_distance
from .npz_format import (
    SampleFile,
    SampleFormatError,
    from_uint8_nhwc,
    read_samples_npz,
    to_uint8_nhwc,
)
from .precision_recall import precision_recall
from .reference_stats import (
    InceptionReference,
    cache_key,
    cache_path,
    is_stats_file,
    load_cached,
    store_cached,
)

INCEPTION_METRICS = ("fid", "sfid", "is", "kid", "precision_recall")
DIGITS_METRICS = ("digits_fd", "digits_accuracy", "digits_precision_recall", "digits_pixel_fd",
                  "digits_pixel_precision_recall")
CLIP_METRICS = ("clip_score",)
ALL_METRICS = INCEPTION_METRICS + DIGITS_METRICS + CLIP_METRICS
REFERENCE_FREE = ("is", "clip_score", "digits_accuracy")
DIGITS_SHAPE = (8, 8, 1)
BUILTIN_DIGITS = "digits"

SFID_NOTE = (
    "approximate: ADM's definition (first 7 channels of mixed_6/conv) on torch-fidelity's "
    "converted Inception, not yet compared with the reference TensorFlow evaluator"
)
LABELS = {
    "fid": "FID", "sfid_approx": "sFID (approx.)", "inception_score": "Inception Score",
    "inception_score_std": "IS std over splits", "kid": "KID", "kid_std": "KID std over subsets",
    "precision": "precision (k-NN)", "recall": "recall (k-NN)", "clip_score": "CLIP score",
    "digits_fd": "FD (digits classifier)", "digits_class_accuracy": "class accuracy (digits classifier)",
    "digits_precision": "precision (digits features)", "digits_recall": "recall (digits features)",
    "digits_pixel_fd": "FD (pixel space)", "digits_pixel_precision": "precision (pixel space)",
    "digits_pixel_recall": "recall (pixel space)",
}


@dataclass
class EvaluationSettings:
    """How metrics are computed (all recorded in the result).

    Attributes:
        inception_weights: torch-fidelity's FID Inception file (``None``: ``$SAQ_INCEPTION_WEIGHTS``
            or ``checkpoints/inception/weights-inception-2015-12-05-6726825d.pth``).
        clip_model: open_clip architecture name, or ``local-dir:<folder>``.
        clip_weights: weight file for ``clip_model`` (``None``: ``$SAQ_CLIP_WEIGHTS`` or the default
            path under ``checkpoints/clip``).
        batch_size: images per network call.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        kid_subsets / kid_subset_size: KID averaging (torch-fidelity's defaults 100 x 1000).
        is_splits: Inception Score splits (10 as in the literature).
        pr_k: neighbourhood size of the precision/recall manifolds (3).
        max_reference_features: reference pool features kept for KID and precision/recall (a
            seeded random subset of larger references; ADM's reference batches have 10k).
        stats_cache: folder of cached reference statistics (default: the reference's folder).
        seed: seeds KID subsets and the reference feature subset.
    """

    inception_weights: str | None = None
    clip_model: str = "ViT-L-14-quickgelu"
    clip_weights: str | None = None
    batch_size: int = 100
    device: str = "auto"
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    pr_k: int = 3
    max_reference_features: int = 10000
    stats_cache: str | None = None
    seed: int = 0


@dataclass
class EvaluationResult:
    metrics: dict[str, float]
    notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "notes": self.notes, **self.info}

    def to_markdown(self) -> str:
        info = self.info
        shape = "x".join(str(s) for s in info.get("image_shape", []))
        ref_count = f" ({info['reference_count']} images)" if info.get("reference_count") else ""
        lines = [
            f"**samples** `{info.get('samples')}` ({info.get('num_samples')} images, {shape})  ",
            f"**reference** `{info.get('reference')}`{ref_count}",
            "",
            "| metric | value | note |",
            "|---|---:|---|",
        ]
        for key, value in self.metrics.items():
            note = self.notes.get(key, "").replace("|", "/")
            lines.append(f"| {LABELS.get(key, key)} | {value:.4g} | {note} |")
        return "\n".join(lines) + "\n"

    def write(self, json_path: str | os.PathLike, markdown_path: str | os.PathLike | None = None) -> None:
        Path(json_path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        if markdown_path is not None:
            Path(markdown_path).write_text(self.to_markdown())


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_metrics(samples: SampleFile, reference: str | None, has_prompts: bool) -> list[str]:
    """Digits-shaped samples: the digits metrics; others: the Inception metrics (only IS without a
    reference) plus CLIP score when prompts are known. Metrics the sample count cannot support are
    dropped from the default (and noted); asked for explicitly they are an error."""
    if samples.image_shape == DIGITS_SHAPE:
        return (["digits_fd", "digits_precision_recall", "digits_pixel_fd", "digits_pixel_precision_recall"]
                + (["digits_accuracy"] if samples.labels is not None else []))
    chosen = list(INCEPTION_METRICS) if reference is not None else ["is"]
    return chosen + (["clip_score"] if has_prompts else [])


def _affordable(metrics: list[str], n: int, ref_features: int, s: EvaluationSettings,
                notes: dict[str, str]) -> list[str]:
    kept = []
    for m in metrics:
        if m == "kid" and min(n, ref_features) < s.kid_subset_size:
            notes["kid"] = f"skipped: needs {s.kid_subset_size} samples and reference features (kid_subset_size)"
        elif m == "is" and n < s.is_splits:
            notes["inception_score"] = f"skipped: needs {s.is_splits} samples (is_splits)"
        else:
            kept.append(m)
    return kept


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """One prompt per non-empty line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {p} not found")
    prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {p} has no prompts")
    return prompts


# -- the reference -------------------------------------------------------------------------------


@dataclass
class _Reference:
    name: str
    images: SampleFile | None = None  # an ADM image file
    stats: InceptionReference | None = None  # a statistics file
    digits: np.ndarray | None = None  # the built-in real digits, uint8 NHWC

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.images is not None:
            return self.images.image_shape
        if self.stats is not None:
            return self.stats.image_shape
        return DIGITS_SHAPE

    @property
    def count(self) -> int:
        if self.images is not None:
            return self.images.num_images
        if self.stats is not None:
            return self.stats.pool.n
        return 0 if self.digits is None else self.digits.shape[0]

    def feature_count(self, max_features: int) -> int:
        if self.stats is not None:
            return self.stats.features.shape[0]
        return min(self.count, max_features)

    def image_batches(self, batch_size: int) -> Iterator[np.ndarray]:
        if self.images is not None:
            yield from self.images.batches(batch_size)
        elif self.digits is not None:
            for i in range(0, self.digits.shape[0], batch_size):
                yield self.digits[i:i + batch_size]
        else:
            raise ValueError(f"reference {self.name} holds statistics only, not images")


def _open_reference(reference: str | None) -> _Reference | None:
    if reference is None:
        return None
    if reference == BUILTIN_DIGITS:
        from saq_lightning.data.digits import digits_split

        real, _ = digits_split("all")
        return _Reference("builtin:digits (all 1,797 scikit-learn digits)", digits=to_uint8_nhwc(real))
    path = Path(reference).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reference file {path} not found (an ADM .npz of real images or a statistics .npz)")
    if is_stats_file(path):
        return _Reference(str(path), stats=InceptionReference.load(path))
    return _Reference(str(path), images=read_samples_npz(path))


# -- checks --------------------------------------------------------------------------------------


def _check_request(metrics: Sequence[str], samples: SampleFile, ref: _Reference | None,
                   prompts: list[str] | None, s: EvaluationSettings) -> None:
    unknown = sorted(set(metrics) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    n = samples.num_images
    needs_ref = [m for m in metrics if m not in REFERENCE_FREE]
    if needs_ref and ref is None:
        raise ValueError(f"{needs_ref} need a reference (--reference <real images .npz | statistics .npz | digits>)")
    if ref is not None and needs_ref and tuple(ref.image_shape) != tuple(samples.image_shape):
        raise SampleFormatError(
                f"reference {ref.name} has images of {'x'.join(map(str, ref.image_shape))} (HxWxC) but the samples "
                f"{samples.path} are {'x'.join(map(str, samples.image_shape))}: compare sets at the same resolution"
            )
    digits = [m for m in metrics if m in DIGITS_METRICS]
    if digits and samples.image_shape != DIGITS_SHAPE:
        raise SampleFormatError(f"{digits} need 8x8x1 digit images, got {samples.image_shape} in {samples.path}")
    if digits and ref is not None and ref.stats is not None and needs_ref:
        raise ValueError(f"{digits} need reference images, not Inception statistics ({ref.name})")
    if "digits_accuracy" in metrics and samples.labels is None:
        raise SampleFormatError(f"digits_accuracy needs class labels ({samples.path} has no arr_1)")
    if "clip_score" in metrics:
        if prompts is None:
            raise ValueError(f"clip_score needs prompts: {samples.path} has none; pass --prompts <file>")
        if len(prompts) != n:
            raise ValueError(f"clip_score needs one prompt per sample: {n} samples, {len(prompts)} prompts")
    ref_n = ref.feature_count(s.max_reference_features) if ref is not None else 0
    need = {
        "fid": 2, "sfid": 2, "digits_fd": 2, "is": s.is_splits, "kid": s.kid_subset_size,
        "precision_recall": s.pr_k + 1, "digits_precision_recall": s.pr_k + 1,
        "digits_pixel_fd": 2, "digits_pixel_precision_recall": s.pr_k + 1,
    }
    for m in metrics:
        if m in need and n < need[m]:
            raise ValueError(f"{m} needs at least {need[m]} samples, {samples.path} has {n}")
        if m in need and m not in REFERENCE_FREE and ref is not None:
            have = ref_n if m in ("kid", "precision_recall") else ref.count
            if have < need[m]:
                raise ValueError(f"{m} needs at least {need[m]} reference images/features, {ref.name} has {have}")


# -- Inception -----------------------------------------------------------------------------------


@dataclass
class _InceptionPass:
    pool: StatsAccumulator
    spatial: StatsAccumulator
    kept: list[np.ndarray]
    logits: list[np.ndarray]


def _inception_pass(extractor, batches: Iterator[np.ndarray], device: torch.device, keep: np.ndarray | None,
                    want_logits: bool) -> _InceptionPass:
    """One pass: running pool/spatial statistics, the pool features of rows ``keep`` (all if
    ``None``), and logits if wanted."""
    out = _InceptionPass(StatsAccumulator(), StatsAccumulator(), [], [])
    start = 0
    for batch in batches:
        x = torch.from_numpy(np.array(batch)).to(device).permute(0, 3, 1, 2)  # a writable copy
        feats = extractor(x)
        out.pool.update(feats.pool)
        out.spatial.update(feats.spatial)
        rows = feats.pool.cpu().numpy()
        if keep is not None:
            sel = keep[(keep >= start) & (keep < start + len(batch))] - start
            rows = rows[sel]
        out.kept.append(rows)
        if want_logits:
            out.logits.append(feats.logits.cpu().numpy())
        start += len(batch)
    return out


def _reference_inception(ref: _Reference, extractor, s: EvaluationSettings, device: torch.device,
                         notes: dict[str, str]) -> InceptionReference:
    weights_sha = sha256_file(extractor.weights_path)
    if ref.stats is not None:
        if ref.stats.meta.get("weights_sha256") != weights_sha:
            raise ValueError(
                f"reference statistics {ref.name} were computed with other Inception weights "
                f"({ref.stats.meta.get('weights')}) than {extractor.weights_path}; recompute them from the images"
            )
        return ref.stats
    settings = {"max_features": s.max_reference_features, "seed": s.seed}
    path = key = None
    if ref.images is not None:  # a file: cache its statistics (the built-in digits are cheap)
        key = cache_key(sha256_file(ref.images.path), weights_sha, settings)
        path = cache_path(ref.images.path, Path(s.stats_cache) if s.stats_cache else None, key)
        cached = load_cached(path, key)
        if cached is not None:
            notes["reference_stats"] = f"cached {path}"
            return cached
    n = ref.count
    keep = None
    if n > s.max_reference_features:
        rng = np.random.default_rng(s.seed)
        keep = np.sort(rng.choice(n, s.max_reference_features, replace=False))
    p = _inception_pass(extractor, ref.image_batches(s.batch_size), device, keep, want_logits=False)
    result = InceptionReference(
        p.pool.stats("reference pool features"), p.spatial.stats("reference spatial features"),
        np.concatenate(p.kept).astype(np.float32), tuple(ref.image_shape),
        {"key": key, "reference": ref.name, "weights": str(extractor.weights_path),
         "weights_sha256": weights_sha, **settings},
    )
    stored = store_cached(result, path) if path is not None else None
    notes["reference_stats"] = f"computed and cached at {stored}" if stored else "computed (not cached)"
    return result


# -- main entry ----------------------------------------------------------------------------------


def evaluate_samples(
    samples: str | os.PathLike | SampleFile,
    reference: str | None = None,
    metrics: Sequence[str] | str = "auto",
    settings: EvaluationSettings | None = None,
    prompts: Sequence[str] | None = None,
) -> EvaluationResult:
    """Compute ``metrics`` of an ADM sample file against ``reference``.

    Args:
        samples: the sample ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1`` labels, ``prompts``).
        reference: an ADM ``.npz`` of real images, a statistics ``.npz`` written by this module,
            ``"digits"`` (the built-in real digits), or ``None`` (reference-free metrics only).
            Default for 8x8x1 samples: ``"digits"``.
        metrics: ``"auto"`` (:func:`default_metrics`) or names from ``ALL_METRICS``.
        settings: :class:`EvaluationSettings`.
        prompts: prompts of the samples for ``clip_score`` (default: the file's ``prompts``).
    """
    t0 = time.perf_counter()
    s = settings or EvaluationSettings()
    sample_file = samples if isinstance(samples, SampleFile) else read_samples_npz(samples)
    if reference is None and sample_file.image_shape == DIGITS_SHAPE:
        reference = BUILTIN_DIGITS
    prompt_list = list(prompts) if prompts is not None else sample_file.prompts
    notes: dict[str, str] = {}
    auto = metrics == "auto"
    if auto:
        chosen = default_metrics(sample_file, reference, prompt_list is not None)
    else:
        chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    ref = _open_reference(reference) if any(m not in REFERENCE_FREE for m in chosen) else None
    if auto:
        ref_features = ref.feature_count(s.max_reference_features) if ref is not None else 0
        chosen = _affordable(chosen, sample_file.num_images, ref_features, s, notes)
    _check_request(chosen, sample_file, ref, prompt_list, s)
    device = resolve_device(s.device)
    values: dict[str, float] = {}

    inception_wanted = [m for m in chosen if m in INCEPTION_METRICS]
    if inception_wanted:
        _inception_metrics(inception_wanted, sample_file, ref, s, device, values, notes)
    digits_wanted = [m for m in chosen if m in DIGITS_METRICS]
    if digits_wanted:
        _digits_metrics(digits_wanted, sample_file, ref, s, device, values)
    if "clip_score" in chosen:
        from .clip_score import clip_score, load_clip

        clip = load_clip(s.clip_model, s.clip_weights, device)
        values["clip_score"] = clip_score(clip, sample_file.batches(s.batch_size), prompt_list or [])
        notes["clip_score"] = f"max(0, mean 100*cos), {clip.name}"
    info = {
        "samples": str(sample_file.path),
        "num_samples": sample_file.num_images,
        "image_shape": list(sample_file.image_shape),
        "reference": ref.name if ref is not None else None,
        "reference_count": ref.count if ref is not None else None,
        "requested": chosen,
        "settings": {k: v for k, v in vars(s).items()},
        "seconds": round(time.perf_counter() - t0, 3),
    }
    meta = sample_file.path.with_name("samples.json")
    if meta.is_file():
        try:
            info["sampling"] = json.loads(meta.read_text()).get("settings")
        except json.JSONDecodeError:
            pass
    return EvaluationResult(values, notes, info)


def _inception_metrics(wanted: list[str], samples: SampleFile, ref: _Reference | None, s: EvaluationSettings,
                       device: torch.device, values: dict[str, float], notes: dict[str, str]) -> None:
    from .inception import InceptionExtractor

    extractor = InceptionExtractor(s.inception_weights).to(device)
    reference = None  # first: a cache conflict or a corrupt reference fails before the samples' pass
    if ref is not None and set(wanted) - {"is"}:
        reference = _reference_inception(ref, extractor, s, device, notes)
    p = _inception_pass(extractor, samples.batches(s.batch_size), device, None, want_logits="is" in wanted)
    fake = np.concatenate(p.kept)
    if "fid" in wanted:
        values["fid"] = frechet_distance(p.pool.stats("sample pool features"), reference.pool)
    if "sfid" in wanted:
        values["sfid_approx"] = frechet_distance(p.spatial.stats("sample spatial features"), reference.spatial)
        notes["sfid_approx"] = SFID_NOTE
    if "is" in wanted:
        values["inception_score"], values["inception_score_std"] = inception_score(np.concatenate(p.logits), s.is_splits)
        notes["inception_score"] = f"{s.is_splits} splits"
    if "kid" in wanted:
        values["kid"], values["kid_std"] = kernel_inception_distance(
            reference.features, fake, s.kid_subsets, s.kid_subset_size, seed=s.seed)
        notes["kid"] = f"{s.kid_subsets} subsets of {s.kid_subset_size}"
    if "precision_recall" in wanted:
        feats = torch.from_numpy(reference.features).to(device)
        values["precision"], values["recall"] = precision_recall(feats, torch.from_numpy(fake).to(device), s.pr_k)
        notes["precision"] = notes["recall"] = f"k={s.pr_k}, {reference.features.shape[0]} reference features"


def _digits_metrics(wanted: list[str], samples: SampleFile, ref: _Reference | None, s: EvaluationSettings,
                    device: torch.device, values: dict[str, float]) -> None:
    from .digits_classifier import load_digits_classifier
    from .digits_quality import class_accuracy, digits_fd

    classifier, _ = load_digits_classifier(device=device)
    fake = from_uint8_nhwc(np.concatenate(list(samples.batches(max(s.batch_size, 4096)))))
    real = None
    if ref is not None and set(wanted) - {"digits_accuracy"}:
        real = from_uint8_nhwc(np.concatenate(list(ref.image_batches(4096))))
    if "digits_fd" in wanted:
        values["digits_fd"] = digits_fd(classifier, fake, real)
    if "digits_accuracy" in wanted:
        values["digits_class_accuracy"] = class_accuracy(classifier, fake, torch.from_numpy(samples.labels))
    if "digits_precision_recall" in wanted:
        with torch.no_grad():
            f_real = classifier.features(real.to(device))
            f_fake = classifier.features(fake.to(device))
        values["digits_precision"], values["digits_recall"] = precision_recall(f_real, f_fake, s.pr_k)
    if {"digits_pixel_fd", "digits_pixel_precision_recall"} & set(wanted):
        from .digits_spaces import fd_of, pixel_features

        p_real, p_fake = pixel_features(real), pixel_features(fake)
        if "digits_pixel_fd" in wanted:
            values["digits_pixel_fd"] = fd_of(p_fake, p_real)
        if "digits_pixel_precision_recall" in wanted:
            values["digits_pixel_precision"], values["digits_pixel_recall"] = precision_recall(
                p_real, p_fake, s.pr_k)


__all__ = [
    "ALL_METRICS",
    "EvaluationResult",
    "EvaluationSettings",
    "default_metrics",
    "evaluate_samples",
    "read_prompt_file",
]
