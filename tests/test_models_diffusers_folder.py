"""Folders written by diffusers ``save_pretrained`` load through the same spec path as real models."""

from __future__ import annotations

import json
from pathlib import Path

import models_helpers as ref
import pytest
import torch
from conftest import make_tiny_unet2d, make_tiny_unet2d_condition

from saq_lightning.models import ModelSpec, build_model

DDPM_SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


def test_unet_folder_from_save_pretrained_loads_and_predicts_like_the_saved_unet(tmp_path: Path) -> None:
    unet = make_tiny_unet2d().eval()
    unet.save_pretrained(tmp_path / "unet")
    spec = ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "unet"), schedule=DDPM_SCHEDULE,
                     conditioning={"type": "class_labels", "null_class": 10})
    model = build_model(spec)
    x, labels = torch.randn(2, 1, 8, 8), torch.tensor([3, 10])
    with torch.no_grad():
        expected = unet(x, torch.tensor([20, 20]), class_labels=labels).sample
        torch.testing.assert_close(model.eps(x, 20, labels), expected, rtol=0, atol=0)
    assert model.sample_shape == (1, 8, 8) and model.null_cond(1).tolist() == [10]


def test_bare_unet_folder_without_a_schedule_asks_for_one(tmp_path: Path) -> None:
    make_tiny_unet2d(num_class_embeds=None).save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="schedule"):
        build_model(ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "unet")))


def test_class_conditional_unet_folder_without_a_null_class_asks_for_one(tmp_path: Path) -> None:
    make_tiny_unet2d().save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="null_class"):
        build_model(ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "unet"), schedule=DDPM_SCHEDULE))


def test_folder_that_is_no_diffusers_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        build_model(ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "empty")))


def test_fixed_head_unet_keeps_its_heads_through_save_pretrained(tmp_path: Path) -> None:
    from diffusers.models.attention_processor import Attention

    spec = ModelSpec(kind="config_only", ldm=ref.TINY_LDM_FAMILIES["churches_like"])
    original = build_model(spec)
    original.unet.save_pretrained(tmp_path / "unet")
    loaded = build_model(ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "unet"), schedule=DDPM_SCHEDULE))
    assert {m.heads for m in loaded.unet.modules() if isinstance(m, Attention)} == {2}
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eps(x, 7), original.eps(x, 7), rtol=1e-5, atol=1e-5)


def write_tiny_clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIP tokenizer with no merges (every character is a token), written offline."""
    from transformers import CLIPTokenizer

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    chars = [chr(c) for c in cs]
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>").save_pretrained(folder)


def test_stable_diffusion_pipeline_folder_loads_unet_vae_text_encoder_tokenizer_and_schedule(tmp_path: Path) -> None:
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    write_tiny_clip_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(str(tmp_path / "tok"))
    text_encoder = CLIPTextModel(CLIPTextConfig(**dict(ref.TINY_CLIP, vocab_size=514, bos_token_id=512, eos_token_id=513,
                                                       pad_token_id=513, max_position_embeddings=77))).eval()
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1, sample_size=16)
    scheduler = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True)
    unet = make_tiny_unet2d_condition(cross_attention_dim=32).eval()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp_path / "sd")

    model = build_model(ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "sd")))
    assert model.schedule_config == {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                     "num_train_timesteps": 1000}
    assert model.latent_scale_factor == pytest.approx(vae.config.scaling_factor)
    ids = model.conditioner.tokenize(["a church", ""])
    assert ids.shape == (2, 77) and torch.equal(ids[1], model.null_cond(1)[0])
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        context = text_encoder(input_ids=ids).last_hidden_state
        expected = unet(x, torch.tensor([999, 999]), encoder_hidden_states=context).sample
        torch.testing.assert_close(model.eps(x, 999, ids), expected, rtol=1e-5, atol=1e-5)
        assert model.decode(model.encode(torch.zeros(1, 3, 16, 16))).shape == (1, 3, 16, 16)


def test_folder_architecture_builds_on_meta_without_reading_weights(tmp_path: Path) -> None:
    make_tiny_unet2d().save_pretrained(tmp_path / "unet")
    (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    spec = ModelSpec(kind="diffusers_folder", weights=str(tmp_path / "unet"), schedule=DDPM_SCHEDULE,
                     conditioning={"type": "class_labels", "null_class": 10})
    with torch.device("meta"):
        model = build_model(spec, load_weights=False)
    assert sum(p.numel() for p in model.unet.parameters()) == sum(p.numel() for p in make_tiny_unet2d().parameters())
    with pytest.raises(FileNotFoundError, match="unet"):
        build_model(spec)
