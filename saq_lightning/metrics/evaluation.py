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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saq_lightning.devices import choose_device
from saq_lightning.files import sha256_file, write_text_atomic

from .clip_score import clip_score, load_clip, resolve_clip
from .digits_classifier import default_classifier_path, load_digits_classifier
from .digits_quality import class_accuracy, digits_fd
from .digits_spaces import fd_of, pixel_features
from .feature_stats import StatsAccumulator, frechet_distance
from .inception import resolve_inception_path
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

DIGITS_SHAPE = (8, 8, 1)
DIGITS_CLASSES = 10  # the digits classifier's classes: labels 0..9
BUILTIN_DIGITS = "digits"
SFID_NOTE = (
    "approximate: ADM's definition (first 7 channels of mixed_6/conv) on torch-fidelity's "
    "converted Inception, not yet compared with the reference TensorFlow evaluator"
)


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
        write_text_atomic(json_path, json.dumps(self.as_dict(), indent=2) + "\n")
        if markdown_path is not None:
            write_text_atomic(markdown_path, self.to_markdown())


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


def _reference_inception(ref: _Reference, extractor, s: EvaluationSettings,
                         device: torch.device) -> tuple[InceptionReference, str]:
    """The reference's Inception statistics (from its statistics file, the cache, or a pass) and a
    note on where they came from."""
    weights_sha = sha256_file(extractor.weights_path)
    if ref.stats is not None:
        if ref.stats.meta.get("weights_sha256") != weights_sha:
            raise ValueError(
                f"reference statistics {ref.name} were computed with other Inception weights "
                f"({ref.stats.meta.get('weights')}) than {extractor.weights_path}; recompute them from the images"
            )
        return ref.stats, ""
    settings = {"max_features": s.max_reference_features, "seed": s.seed}
    path = key = None
    if ref.images is not None:  # a file: cache its statistics (the built-in digits are cheap)
        key = cache_key(sha256_file(ref.images.path), weights_sha, settings)
        path = cache_path(ref.images.path, Path(s.stats_cache) if s.stats_cache else None, key)
        cached = load_cached(path, key)
        if cached is not None:
            return cached, f"cached {path}"
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
    return result, f"computed and cached at {stored}" if stored else "computed (not cached)"


# -- the metrics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    samples: SampleFile
    ref: _Reference | None
    prompts: list[str] | None
    settings: EvaluationSettings


class Score(NamedTuple):
    """What a metric computes: its values (one per result key, in order) and a note for the table."""

    values: float | tuple[float, ...]
    note: str = ""


REFERENCE_INPUTS = frozenset({"inception_reference", "inception_reference_features", "digits_reference"})


@dataclass(frozen=True, eq=False)
class Metric:
    """One metric, as torchmetrics and torch-fidelity model one: the name ``--metrics`` takes, its
    result keys (with their Markdown labels), and its ``inputs``: the arguments of ``compute`` by
    name (:func:`_gather` makes each once). What it needs of a request (a reference, labels,
    prompts, digit images, a weight file) follows from them; :meth:`check` refuses what is missing.
    """

    name: str
    keys: dict[str, str]
    inputs: tuple[str, ...]
    compute: Callable[..., Score]
    min_count: Callable[[EvaluationSettings], int] | None = None  # of samples and of reference images/features
    skip_setting: str | None = None  # set: short of min_count, the default drops it with a note naming this setting
    note_keys: int = 1  # how many of the keys carry the note

    @property
    def needs_reference(self) -> bool:
        return not REFERENCE_INPUTS.isdisjoint(self.inputs)

    def weights(self, s: EvaluationSettings) -> Path | str | None:
        """Its network's weight file; missing, a ``FileNotFoundError`` says where to get it."""
        if any(i.startswith("inception_") for i in self.inputs):
            return resolve_inception_path(s.inception_weights)
        if "digits_classifier" in self.inputs:
            return default_classifier_path()
        if "clip" in self.inputs:
            return resolve_clip(s.clip_model, s.clip_weights)[1] or s.clip_model
        return None

    def shortfall(self, req: _Request) -> str | None:
        """Why the samples or the reference are too few for this metric (``None``: enough)."""
        if self.min_count is None:
            return None
        need, n, ref = self.min_count(req.settings), req.samples.num_images, req.ref
        if n < need:
            return f"{self.name} needs at least {need} samples, {req.samples.path} has {n}"
        if self.needs_reference and ref is not None:
            features = "inception_reference_features" in self.inputs
            have = ref.feature_count(req.settings.max_reference_features) if features else ref.count
            if have < need:
                return f"{self.name} needs at least {need} reference images/features, {ref.name} has {have}"
        return None

    def skip_note(self, req: _Request) -> str | None:
        """Why the default leaves it out (``None``: it stays), for metrics with a ``skip_setting``."""
        if self.skip_setting is None or self.shortfall(req) is None:
            return None
        also = " and reference features" if self.needs_reference else ""
        return f"skipped: needs {self.min_count(req.settings)} samples{also} ({self.skip_setting})"

    def check(self, req: _Request) -> None:
        """Refuse a request this metric cannot serve, naming what is missing (before any network runs)."""
        samples, ref, n = req.samples, req.ref, req.samples.num_images
        if self.needs_reference and ref is not None and tuple(ref.image_shape) != tuple(samples.image_shape):
            raise SampleFormatError(
                f"reference {ref.name} has images of {'x'.join(map(str, ref.image_shape))} (HxWxC) but the samples "
                f"{samples.path} are {'x'.join(map(str, samples.image_shape))}: compare sets at the same resolution"
            )
        if "digits_samples" in self.inputs and samples.image_shape != DIGITS_SHAPE:
            raise SampleFormatError(f"{self.name} needs 8x8x1 digit images, got {samples.image_shape} in {samples.path}")
        if "digits_reference" in self.inputs and ref is not None and ref.stats is not None:
            raise ValueError(f"{self.name} needs reference images, not Inception statistics ({ref.name})")
        if "labels" in self.inputs and samples.labels is None:
            raise SampleFormatError(f"{self.name} needs class labels ({samples.path} has no arr_1)")
        if "labels" in self.inputs and "digits_classifier" in self.inputs:
            outside = np.unique(samples.labels[(samples.labels < 0) | (samples.labels >= DIGITS_CLASSES)])
            if outside.size:
                raise SampleFormatError(
                    f"{samples.path}: arr_1 holds labels {outside[:5].tolist()} outside the digits classifier's "
                    f"classes 0..{DIGITS_CLASSES - 1}: {self.name} would count those samples as wrong")
        if "prompts" in self.inputs and req.prompts is None:
            raise ValueError(f"{self.name} needs prompts: {samples.path} has none; pass --prompts <file>")
        if "prompts" in self.inputs and len(req.prompts) != n:
            raise ValueError(f"{self.name} needs one prompt per sample: {n} samples, {len(req.prompts)} prompts")
        if (short := self.shortfall(req)) is not None:
            raise ValueError(short)
        self.weights(req.settings)

    def score(self, inputs: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
        """``(values, notes)`` under this metric's result keys (the one place they are named)."""
        out = self.compute(*(inputs[i] for i in self.inputs))
        values = out.values if isinstance(out.values, tuple) else (out.values,)
        keys = list(self.keys)
        return dict(zip(keys, values, strict=True)), dict.fromkeys(keys[:self.note_keys], out.note) if out.note else {}


def _gather(needed: set[str], req: _Request, device: torch.device) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``needed`` inputs, each made once (the reference's Inception statistics before the
    samples' pass: a cache conflict or a corrupt reference fails first), and their notes."""
    s, samples, ref = req.settings, req.samples, req.ref
    got: dict[str, Any] = {"samples": samples, "prompts": req.prompts, "settings": s, "device": device}
    notes: dict[str, str] = {}
    if any(i.startswith("inception_") for i in needed):
        from .inception import InceptionExtractor

        extractor = InceptionExtractor(s.inception_weights).to(device)
        if needed & {"inception_reference", "inception_reference_features"}:
            stats, note = _reference_inception(ref, extractor, s, device)
            got.update(inception_reference=stats, inception_reference_features=stats.features)
            notes = {"reference_stats": note} if note else {}
        p = _inception_pass(extractor, samples.batches(s.batch_size), device, None, "inception_logits" in needed)
        got.update(inception_samples=p, inception_sample_features=np.concatenate(p.kept),
                   inception_logits=np.concatenate(p.logits) if p.logits else None)
    if "digits_classifier" in needed:
        got["digits_classifier"] = load_digits_classifier(device=device)[0]
    if "digits_samples" in needed:
        got["digits_samples"] = from_uint8_nhwc(np.concatenate(list(samples.batches(max(s.batch_size, 4096)))))
    if "digits_reference" in needed:
        got["digits_reference"] = from_uint8_nhwc(np.concatenate(list(ref.image_batches(4096))))
    if "labels" in needed:
        got["labels"] = torch.from_numpy(samples.labels)
    if "clip" in needed:
        got["clip"] = load_clip(s.clip_model, s.clip_weights, device)
    return got, notes


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", {"fid": "FID"}, ("inception_reference", "inception_samples"),
           lambda ref, p: Score(frechet_distance(p.pool.stats("sample pool features"), ref.pool)), lambda s: 2),
    Metric("sfid", {"sfid_approx": "sFID (approx.)"}, ("inception_reference", "inception_samples"),
           lambda ref, p: Score(frechet_distance(p.spatial.stats("sample spatial features"), ref.spatial), SFID_NOTE),
           lambda s: 2),
    Metric("is", {"inception_score": "Inception Score", "inception_score_std": "IS std over splits"},
           ("inception_logits", "settings"),
           lambda logits, s: Score(inception_score(logits, s.is_splits), f"{s.is_splits} splits"),
           lambda s: s.is_splits, skip_setting="is_splits"),
    Metric("kid", {"kid": "KID", "kid_std": "KID std over subsets"},
           ("inception_reference_features", "inception_sample_features", "settings"),
           lambda ref, fake, s: Score(kernel_inception_distance(ref, fake, s.kid_subsets, s.kid_subset_size, seed=s.seed),
                                      f"{s.kid_subsets} subsets of {s.kid_subset_size}"),
           lambda s: s.kid_subset_size, skip_setting="kid_subset_size"),
    Metric("precision_recall", {"precision": "precision (k-NN)", "recall": "recall (k-NN)"},
           ("inception_reference_features", "inception_sample_features", "device", "settings"),
           lambda ref, fake, device, s: Score(
               precision_recall(torch.from_numpy(ref).to(device), torch.from_numpy(fake).to(device), s.pr_k),
               f"k={s.pr_k}, {ref.shape[0]} reference features"),
           lambda s: s.pr_k + 1, note_keys=2),
    Metric("digits_fd", {"digits_fd": "FD (digits classifier)"},
           ("digits_classifier", "digits_samples", "digits_reference"),
           lambda classifier, fake, real: Score(digits_fd(classifier, fake, real)), lambda s: 2),
    Metric("digits_accuracy", {"digits_class_accuracy": "class accuracy (digits classifier)"},
           ("digits_classifier", "digits_samples", "labels"),
           lambda classifier, fake, labels: Score(class_accuracy(classifier, fake, labels))),
    Metric("digits_precision_recall", {"digits_precision": "precision (digits features)",
                                       "digits_recall": "recall (digits features)"},
           ("digits_classifier", "digits_samples", "digits_reference", "device", "settings"),
           lambda c, fake, real, device, s: Score(  # frozen classifier: no autograd graph
               precision_recall(c.features(real.to(device)), c.features(fake.to(device)), s.pr_k)),
           lambda s: s.pr_k + 1),
    Metric("digits_pixel_fd", {"digits_pixel_fd": "FD (pixel space)"}, ("digits_samples", "digits_reference"),
           lambda fake, real: Score(fd_of(pixel_features(fake), pixel_features(real))), lambda s: 2),
    Metric("digits_pixel_precision_recall", {"digits_pixel_precision": "precision (pixel space)",
                                             "digits_pixel_recall": "recall (pixel space)"},
           ("digits_samples", "digits_reference", "settings"),
           lambda fake, real, s: Score(precision_recall(pixel_features(real), pixel_features(fake), s.pr_k)), lambda s: s.pr_k + 1),
    Metric("clip_score", {"clip_score": "CLIP score"}, ("clip", "samples", "prompts", "settings"),
           lambda clip, samples, prompts, s: Score(clip_score(clip, samples.batches(s.batch_size), prompts),
                                                   f"max(0, mean 100*cos), {clip.name}")),
)}
ALL_METRICS = tuple(METRICS)
LABELS = {key: label for m in METRICS.values() for key, label in m.keys.items()}


# -- main entry ----------------------------------------------------------------------------------


def default_metrics(samples: SampleFile, reference: str | None, has_prompts: bool) -> list[str]:
    """Every metric of the samples' kind (digits for 8x8x1, Inception and CLIP otherwise) whose
    reference, labels and prompts are at hand. Metrics the sample count cannot support are then
    dropped from the default (and noted); asked for explicitly they are an error."""
    one_channel = samples.image_shape[-1] == 1
    if (reference == "digits" or one_channel and reference is None) and samples.image_shape != DIGITS_SHAPE:
        raise SampleFormatError(
            f"{samples.path}: images of {'x'.join(map(str, samples.image_shape))} (HxWxC), but the digits "
            f"reference and metrics compare {'x'.join(map(str, DIGITS_SHAPE))} digit images (to score other "
            f"single-channel images with Inception metrics, name them: --metrics '[is]')")
    have = {"labels": samples.labels is not None, "prompts": has_prompts}
    return [m.name for m in METRICS.values()
            if ("digits_samples" in m.inputs) == (samples.image_shape == DIGITS_SHAPE) and (reference is not None or not m.needs_reference)
            and all(have.get(i, True) for i in m.inputs)]


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
    auto = metrics == "auto"
    if auto:
        names = default_metrics(sample_file, reference, prompt_list is not None)
    else:
        names = list(dict.fromkeys([metrics] if isinstance(metrics, str) else metrics))
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    chosen = [METRICS[n] for n in names]
    ref = _open_reference(reference) if any(m.needs_reference for m in chosen) else None
    req = _Request(sample_file, ref, prompt_list, s)
    skipped = {m: note for m in chosen if auto and (note := m.skip_note(req))}
    notes = {next(iter(m.keys)): note for m, note in skipped.items()}
    chosen = [m for m in chosen if m not in skipped]
    needs_ref = [m.name for m in chosen if m.needs_reference]
    if needs_ref and ref is None:
        raise ValueError(f"{needs_ref} need a reference (--reference <real images .npz | statistics .npz | digits>)")
    for m in chosen:
        m.check(req)
    device = choose_device(s.device)
    inputs, input_notes = _gather({i for m in chosen for i in m.inputs}, req, device)
    notes.update(input_notes)
    values: dict[str, float] = {}
    for m in METRICS.values():  # in the registry's order, whatever the request's
        if m in chosen:
            v, n = m.score(inputs)
            values.update(v)
            notes.update(n)
    info = {
        "samples": str(sample_file.path),
        "num_samples": sample_file.num_images,
        "image_shape": list(sample_file.image_shape),
        "reference": ref.name if ref is not None else None,
        "reference_count": ref.count if ref is not None else None,
        "requested": [m.name for m in chosen],
        "settings": dict(vars(s)),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    meta = sample_file.path.with_name("samples.json")
    if meta.is_file():
        try:
            info["sampling"] = json.loads(meta.read_text()).get("settings")
        except json.JSONDecodeError:
            pass
    return EvaluationResult(values, notes, info)


__all__ = ["ALL_METRICS", "METRICS", "EvaluationResult", "EvaluationSettings", "Metric", "Score",
           "default_metrics", "evaluate_samples", "read_prompt_file"]
