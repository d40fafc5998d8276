"""CLIP score through open_clip from a tiny random local checkpoint (offline, the real code path)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saq_lightning.metrics.clip_score import clip_score, clip_scores, load_clip
from saq_lightning.metrics.evaluation import EvaluationSettings, evaluate_samples
from saq_lightning.metrics.npz_format import write_samples_npz

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
PROMPTS = ["a red car", "a small dog", "two apples", "a church at night"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """An open_clip model folder (config + safetensors) with random weights."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny_clip")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in CLIP(**TINY_CLIP).state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (len(PROMPTS), 24, 24, 3), dtype=np.uint8)


def test_local_folder_model_loads_offline_with_its_saved_weights(clip_dir):
    from safetensors.torch import load_file

    clip = load_clip(f"local-dir:{clip_dir}")
    saved = load_file(str(clip_dir / "open_clip_model.safetensors"))
    torch.testing.assert_close(clip.model.state_dict()["text_projection"], saved["text_projection"])


def test_per_pair_score_is_100_times_the_cosine_of_the_embeddings(clip_dir, images):
    from PIL import Image

    clip = load_clip(f"local-dir:{clip_dir}")
    with torch.no_grad():
        img = clip.model.encode_image(torch.stack([clip.preprocess(Image.fromarray(i)) for i in images]))
        txt = clip.model.encode_text(clip.tokenizer(PROMPTS))
    expected = 100 * torch.nn.functional.cosine_similarity(img.double(), txt.double())
    torch.testing.assert_close(clip_scores(clip, images, PROMPTS), expected, rtol=1e-5, atol=1e-4)


def test_clip_score_is_the_mean_clamped_at_zero_over_batches(clip_dir, images):
    clip = load_clip(f"local-dir:{clip_dir}")
    per_pair = clip_scores(clip, images, PROMPTS)
    batched = clip_score(clip, [images[:3], images[3:]], PROMPTS)
    assert batched == pytest.approx(max(0.0, float(per_pair.mean())), abs=1e-4)  # float32 batches


def test_clip_score_of_a_sample_file_with_prompts_through_evaluate(clip_dir, images, tmp_path):
    path = write_samples_npz(tmp_path / "s.npz", [images], len(PROMPTS), prompts=PROMPTS)
    result = evaluate_samples(path, None, ["clip_score"], EvaluationSettings(clip_model=f"local-dir:{clip_dir}",
                                                                             device="cpu"))
    clip = load_clip(f"local-dir:{clip_dir}")
    assert result.metrics["clip_score"] == pytest.approx(clip_score(clip, [images], PROMPTS), abs=1e-9)


def test_missing_clip_weights_name_the_path_and_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"CLIP weights not found at {tmp_path}/w.safetensors.*huggingface"):
        load_clip("ViT-B-32", tmp_path / "w.safetensors")


def test_a_clip_folder_without_weights_is_an_error(tmp_path):
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    with pytest.raises(FileNotFoundError, match="holds no weight file"):
        load_clip(f"local-dir:{tmp_path}")


def test_clip_score_needs_one_prompt_per_image(clip_dir, images):
    with pytest.raises(ValueError, match="one prompt per image: 4 images, 3 prompts"):
        clip_scores(load_clip(f"local-dir:{clip_dir}"), images, PROMPTS[:3])
