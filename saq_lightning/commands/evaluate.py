"""``python -m saq_lightning evaluate``: metrics of an ADM sample file against a reference, as JSON
and a Markdown table.

    python -m saq_lightning evaluate --samples runs/samples/fp/samples.npz          # digits: FD, accuracy
    python -m saq_lightning evaluate --samples runs/samples/ldm4_fp/samples.npz \\
        --reference data/VIRTUAL_imagenet256_labeled.npz \\
        --inception_weights checkpoints/inception/weights-inception-2015-12-05-6726825d.pth
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from jsonargparse import auto_cli

from saq_lightning.metrics.evaluation import EvaluationSettings, evaluate_samples, read_prompt_file
from saq_lightning.outputs import clear_outputs, recorded_settings, refuse_existing


def evaluate(
    samples: str,
    reference: str | None = None,
    metrics: list[str] | None = None,
    out: str | None = None,
    prompts: str | None = None,
    inception_weights: str | None = None,
    clip_model: str = "ViT-L-14-quickgelu",
    clip_weights: str | None = None,
    batch_size: int = 100,
    device: str = "auto",
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_splits: int = 10,
    pr_k: int = 3,
    max_reference_features: int = 10000,
    stats_cache: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Score a sample .npz (ADM format) and write <out>.json and <out>.md.

    Args:
        samples: the sample file (arr_0 uint8 [N, H, W, C], optional arr_1 labels, prompts).
        reference: real images (ADM .npz), reference statistics (.npz written by evaluate), or
            "digits" (the built-in real digits; the default for 8x8x1 samples).
        metrics: subset of fid, sfid, is, kid, precision_recall, clip_score, digits_fd,
            digits_accuracy, digits_precision_recall, digits_pixel_fd,
            digits_pixel_precision_recall; default: all that apply.
        out: output path without suffix (default: <samples folder>/eval).
        prompts: prompt file (one per line, one per sample) for clip_score, if the samples lack them.
        inception_weights: torch-fidelity's FID Inception weights file (default: $SAQ_INCEPTION_WEIGHTS
            or checkpoints/inception/weights-inception-2015-12-05-6726825d.pth).
        clip_model: open_clip architecture (e.g. ViT-L-14-quickgelu) or local-dir:<folder>.
        clip_weights: weights of clip_model (default: $SAQ_CLIP_WEIGHTS or
            checkpoints/clip/ViT-L-14-openai/open_clip_model.safetensors).
        batch_size: images per network call.
        device: auto, cpu, cuda, ...
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size.
        is_splits: Inception Score splits.
        pr_k: k of the precision/recall k-NN manifolds.
        max_reference_features: reference features kept for KID and precision/recall.
        stats_cache: folder for cached reference statistics (default: next to the reference).
        seed: seed of KID subsets and of the reference feature subset.
        overwrite: replace an earlier <out>.json / <out>.md (otherwise an existing one is refused).
    """
    run_settings = {k: v for k, v in locals().items() if k not in ("out", "overwrite")}
    stem = Path(out) if out else Path(samples).with_name("eval")
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    refuse_existing("evaluate", [json_path, md_path], run_settings, recorded_settings(json_path), overwrite)
    settings = EvaluationSettings(**{f.name: run_settings[f.name] for f in fields(EvaluationSettings)})
    result = evaluate_samples(samples, reference, metrics or "auto", settings,
                              read_prompt_file(prompts) if prompts else None)
    stem.parent.mkdir(parents=True, exist_ok=True)
    result.info["settings"] = run_settings
    clear_outputs([json_path, md_path])
    result.write(json_path, md_path)
    print(result.to_markdown())
    print(f"wrote {json_path} and {md_path}")
    return result.as_dict()


def main(args: list[str]) -> None:
    auto_cli(evaluate, args=args, as_positional=False, exit_on_error=False)
