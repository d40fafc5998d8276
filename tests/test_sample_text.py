"""Text-to-image sampling: prompts from a file, cycled over the samples, stored next to the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_unet2d_condition
from models_helpers import TINY_CLIP

from saq_lightning.metrics.evaluation import read_prompt_file
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.metrics.sampling_run import make_plan, run_sampling
from saq_lightning.models import DiffusionModel, TextConditioner

SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


class WordTokenizer:
    """Stands in for a CLIP tokenizer: one id per word (the HF call signature TextConditioner uses)."""

    pad_token_id = 99

    def __call__(self, prompts, padding, max_length, truncation, return_tensors):
        rows = [[98] + [3 + sum(map(ord, w)) % 90 for w in p.split()][: max_length - 2] + [99] for p in prompts]
        ids = torch.tensor([r + [99] * (max_length - len(r)) for r in rows])
        return type("Encoding", (), {"input_ids": ids})()


@pytest.fixture(scope="module")
def text_model() -> DiffusionModel:
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).eval()
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        sample_size=16).eval()
    return DiffusionModel(make_tiny_unet2d_condition(cross_attention_dim=32).eval(), SCHEDULE, (4, 8, 8),
                          conditioner=TextConditioner(encoder, max_length=16, tokenizer=WordTokenizer()),
                          autoencoder=vae, latent_scale_factor=0.18215)


def test_prompts_are_cycled_and_stored_with_the_decoded_images(text_model, tmp_path):
    (tmp_path / "prompts.txt").write_text("a red car\n\na church at night\n")
    prompts = read_prompt_file(tmp_path / "prompts.txt")
    assert prompts == ["a red car", "a church at night"]  # empty lines are skipped
    plan = make_plan(text_model, 5, SamplerSetting("ddim", steps=2, guidance_scale=3.0), prompts=prompts,
                     batch_size=2)
    run_sampling(text_model, tmp_path / "out", plan, grid_size=0)
    with np.load(tmp_path / "out" / "samples.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "prompts"]
        assert data["arr_0"].shape == (5, 16, 16, 3) and data["arr_0"].dtype == np.uint8
        assert list(data["prompts"]) == ["a red car", "a church at night"] * 2 + ["a red car"]


def test_a_text_model_without_prompts_is_refused(text_model):
    with pytest.raises(ValueError, match="is text-to-image: give prompts"):
        make_plan(text_model, 2, SamplerSetting("ddim", steps=2, guidance_scale=3.0))


def test_the_prompt_steers_the_sample(text_model):
    from saq_lightning.metrics.sample_generation import generate_images

    x_T = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1)
    ids = text_model.conditioner.tokenize(["a red car", "a church at night"])
    images = generate_images(text_model, x_T, ids, SamplerSetting("ddim", steps=2, guidance_scale=3.0))
    assert (images[0] - images[1]).abs().max() > 1e-3
