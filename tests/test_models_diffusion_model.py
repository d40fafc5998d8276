"""The DiffusionModel interface: eps with classifier-free guidance, conditions, latents, schedule, with_unet."""

from __future__ import annotations

from typing import Any

import models_helpers as ref
import pytest
import torch
from torch import nn

from saq_lightning.models import DiffusionModel, ModelSpec, build_model


def tiny(family: str, **overrides: Any) -> DiffusionModel:
    """A random-weight model of a paper family at reduced size (8x8 latents)."""
    kw: dict[str, Any] = {"kind": "config_only", "name": family, "ldm": ref.TINY_LDM_FAMILIES[family]}
    if family == "sd_like":
        kw["text_encoder_config"] = ref.TINY_CLIP
    kw.update(overrides)
    model = build_model(ModelSpec(**kw))
    for p in model.parameters():  # output convs start at zero in some blocks: make eps depend on cond
        p.data.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def imagenet_like() -> DiffusionModel:
    torch.manual_seed(0)
    return tiny("imagenet_like")


@pytest.fixture(scope="module")
def sd_like() -> DiffusionModel:
    torch.manual_seed(0)
    return tiny("sd_like")


def test_guidance_scale_1_equals_the_conditional_prediction(imagenet_like: DiffusionModel) -> None:
    x, labels = torch.randn(2, 3, 8, 8), torch.tensor([1, 5])
    with torch.no_grad():
        guided = imagenet_like.eps(x, 400, labels, guidance_scale=1.0)
        conditional = imagenet_like.conditional_eps(x, torch.tensor([400, 400]), labels)
    torch.testing.assert_close(guided, conditional, rtol=0, atol=0)


def test_guidance_is_unconditional_plus_scale_times_the_difference(imagenet_like: DiffusionModel) -> None:
    x, labels, t = torch.randn(2, 3, 8, 8), torch.tensor([1, 5]), torch.tensor([400.0, 30.0])
    with torch.no_grad():
        guided = imagenet_like.eps(x, t, labels, guidance_scale=1.5)
        eps_c = imagenet_like.eps(x, t, labels)
        eps_u = imagenet_like.eps(x, t, imagenet_like.null_cond(2))
    assert not torch.allclose(eps_c, eps_u, atol=1e-3)  # the condition matters in this model
    torch.testing.assert_close(guided, eps_u + 1.5 * (eps_c - eps_u), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["imagenet_like", "sd_like"])
def test_prepared_condition_gives_the_same_guided_prediction_as_the_raw_one(family: str, request) -> None:
    model = request.getfixturevalue(family)
    cond = torch.tensor([1, 5]) if family == "imagenet_like" else torch.randint(0, 98, (2, 16))
    x = torch.randn(2, *model.sample_shape)
    with torch.no_grad():
        raw = model.eps(x, 700, cond, guidance_scale=3.0)
        prepared = model.eps(x, 700, model.prepare_cond(cond), guidance_scale=3.0)
    assert model.prepare_cond(cond).is_floating_point()
    torch.testing.assert_close(prepared, raw, rtol=1e-5, atol=1e-5)


def test_text_null_condition_is_the_empty_prompt(sd_like: DiffusionModel) -> None:
    ids = sd_like.null_cond(2)
    bos, eos, pad = ref.TINY_CLIP["bos_token_id"], ref.TINY_CLIP["eos_token_id"], ref.TINY_CLIP["pad_token_id"]
    assert ids.shape == (2, 16) and ids[:, :2].tolist() == [[bos, eos]] * 2 and bool((ids[:, 2:] == pad).all())


def test_prompt_strings_without_a_tokenizer_raise_with_the_fix(sd_like: DiffusionModel) -> None:
    with pytest.raises(RuntimeError, match="tokenizer"):
        sd_like.conditioner.tokenize(["a church"])


def test_scalar_timestep_is_broadcast_over_the_batch(imagenet_like: DiffusionModel) -> None:
    x, labels = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(imagenet_like.eps(x, 123.0, labels), imagenet_like.eps(x, torch.full((3,), 123.0), labels))


def test_timestep_of_the_wrong_length_raises(imagenet_like: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="timestep"):
        imagenet_like.eps(torch.randn(3, 3, 8, 8), torch.ones(2), torch.tensor([0, 1, 2]))


def test_conditional_model_without_a_condition_raises(imagenet_like: DiffusionModel) -> None:
    with pytest.raises(ValueError, match="null_cond"):
        imagenet_like.eps(torch.randn(1, 3, 8, 8), 5)


def test_unconditional_model_rejects_a_condition_and_guidance() -> None:
    model = tiny("bedrooms_like")
    x = torch.randn(1, 3, 8, 8)
    assert model.null_cond(1) is None
    with pytest.raises(ValueError, match="unconditional"):
        model.eps(x, 5, torch.tensor([1]))
    with pytest.raises(ValueError, match="guidance"):
        model.eps(x, 5, guidance_scale=2.0)


@pytest.mark.parametrize(("family", "latent_shape"), [("churches_like", (4, 8, 8)), ("bedrooms_like", (3, 8, 8))])
def test_latent_models_encode_to_the_unet_input_shape_and_decode_back_to_images(family: str, latent_shape: tuple) -> None:
    model = tiny(family)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = model.encode(images)
        decoded = model.decode(latents)
    assert latents.shape == (2, *latent_shape) == (2, *model.sample_shape)
    assert decoded.shape == images.shape and torch.isfinite(decoded).all()


def test_latent_scale_factor_scales_encoded_latents() -> None:
    scaled, unscaled = tiny("churches_like", latent_scale_factor=0.5), tiny("churches_like", latent_scale_factor=1.0)
    unscaled.load_state_dict(scaled.state_dict())
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(scaled.encode(images), 0.5 * unscaled.encode(images))


def test_pixel_space_model_encode_and_decode_are_the_identity() -> None:
    model = build_model(ModelSpec(kind="digits"), load_weights=False)
    x = torch.randn(2, 1, 8, 8)
    assert model.encode(x) is x and model.decode(x) is x


class TupleUNet(nn.Module):
    """A stand-in for the quantized student: same call signature, returns a tuple."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.inner = unet

    def forward(self, sample, timestep, **kwargs):
        return (2.0 * self.inner(sample, timestep, **kwargs).sample,)


def test_with_unet_swaps_only_the_noise_network(imagenet_like: DiffusionModel) -> None:
    student = imagenet_like.with_unet(TupleUNet(imagenet_like.unet))
    assert student.conditioner is imagenet_like.conditioner and student.autoencoder is imagenet_like.autoencoder
    assert student.schedule_config == imagenet_like.schedule_config and student.sample_shape == imagenet_like.sample_shape
    x, labels = torch.randn(2, 3, 8, 8), torch.tensor([3, 4])
    with torch.no_grad():
        torch.testing.assert_close(student.eps(x, 10, labels), 2.0 * imagenet_like.eps(x, 10, labels))


def test_noise_schedule_is_the_training_schedule(imagenet_like: DiffusionModel) -> None:
    schedule = imagenet_like.noise_schedule()
    betas = torch.linspace(0.0015**0.5, 0.0195**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(schedule.alphas_cumprod, torch.cumprod(1 - betas, 0), rtol=1e-10, atol=0)


def test_built_models_are_frozen_in_eval_mode_and_in_the_configured_dtype() -> None:
    model = build_model(ModelSpec(kind="digits", dtype="bfloat16"), load_weights=False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = model.eps(torch.randn(2, 1, 8, 8, dtype=torch.bfloat16), 3, torch.tensor([1, 2]), guidance_scale=2.0)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 1, 8, 8)
