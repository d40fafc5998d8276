"""Original CompVis checkpoints -> diffusers modules, on small synthetic checkpoints of each family.

Each synthetic checkpoint is the state dict of a reference re-implementation of the original
modules (tests/models_helpers.py, reduced channel counts, random weights) saved like a
PyTorch-Lightning checkpoint. Loading it must account for every key, and the converted model must
compute what the original computes (fp32, tolerance 1e-4).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import models_helpers as ref
import pytest
import torch
from safetensors.torch import save_file

from saq_lightning.models import CheckpointKeyError, ModelSpec, build_model

TOL = {"rtol": 1e-4, "atol": 1e-4}

KL_F2, VQ_F2, TINY_CLIP, FAMILIES = ref.KL_F2, ref.VQ_F2, ref.TINY_CLIP, ref.TINY_LDM_FAMILIES


class Original:
    """The reference modules of one family and the checkpoint made from them."""

    def __init__(self, family: str, seed: int = 0, ema: bool = False) -> None:
        self.params = copy.deepcopy(FAMILIES[family])
        p = self.params
        self.unet = ref.randomize(ref.UNetModel(**p["unet_config"]["params"]), seed).eval()
        fs = p["first_stage_config"]["params"]
        kind = "kl" if p["first_stage_config"]["target"].endswith("AutoencoderKL") else "vq"
        self.first_stage = ref.randomize(ref.FirstStage(kind, fs["embed_dim"], fs["ddconfig"], fs.get("n_embed")), seed + 1).eval()
        self.cond = None
        cond_state = None
        cs = p["cond_stage_config"]
        if isinstance(cs, dict) and cs["target"].endswith("ClassEmbedder"):
            self.cond = ref.randomize(ref.ClassEmbedder(cs["params"]["embed_dim"], cs["params"]["n_classes"]), seed + 2)
            cond_state = dict(self.cond.state_dict())
        elif isinstance(cs, dict):
            from transformers import CLIPTextConfig, CLIPTextModel

            torch.manual_seed(seed + 2)
            self.cond = CLIPTextModel(CLIPTextConfig(**TINY_CLIP)).eval()
            cond_state = ref.clip_cond_stage(self.cond, cs["params"]["max_length"])
        self.ema = ref.randomize(ref.UNetModel(**p["unet_config"]["params"]), seed + 3).eval() if ema else None
        self.scale_factor = 0.3 if p.get("scale_by_std") else None
        self.state_dict = ref.ldm_state_dict(p, self.unet, self.first_stage, cond_state, self.ema, self.scale_factor)

    def save(self, path: Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        ref.save_lightning_checkpoint(self.state_dict if state_dict is None else state_dict, path)
        return path

    def spec(self, path: Path, **overrides: Any) -> ModelSpec:
        kw: dict[str, Any] = {"kind": "compvis_ldm", "name": "tiny", "weights": str(path), "ldm": self.params}
        if "FrozenCLIPEmbedder" in str(self.params["cond_stage_config"]):
            kw["text_encoder_config"] = TINY_CLIP
        kw.update(overrides)
        return ModelSpec(**kw)

    def context(self, cond: torch.Tensor) -> torch.Tensor | None:
        if self.cond is None:
            return None
        if isinstance(self.cond, ref.ClassEmbedder):
            return self.cond(cond)
        return self.cond(input_ids=cond).last_hidden_state


def _condition(model, batch: int) -> torch.Tensor | None:
    if model.conditioner is None:
        return None
    if hasattr(model.conditioner, "embedding"):
        return torch.tensor([3, 7])[:batch]
    return torch.randint(0, 98, (batch, 16))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_conversion_accounts_for_every_key_and_matches_the_original_unet(family: str, tmp_path: Path) -> None:
    original = Original(family)
    model = build_model(original.spec(original.save(tmp_path / "model.ckpt")))

    report = model.conversion_report
    converted = sum(report.converted.values())
    discarded = len(report.discarded)
    # every original key is converted or set aside for a stated reason (none silently dropped);
    # only the text encoder's position_ids buffer is a non-parameter that does not come through
    assert converted + discarded == len(original.state_dict)

    x = torch.randn(2, *model.sample_shape)
    t = torch.tensor([10.0, 900.0])
    cond = _condition(model, 2)
    with torch.no_grad():
        expected = original.unet(x, t, original.context(cond) if cond is not None else None)
        got = model.eps(x, t, cond)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("family", ["churches_like", "bedrooms_like"])
def test_converted_first_stage_matches_the_original_encoder_and_decoder(family: str, tmp_path: Path) -> None:
    original = Original(family)
    model = build_model(original.spec(original.save(tmp_path / "model.ckpt")))
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    scale = original.scale_factor or 1.0
    with torch.no_grad():
        latents = model.encode(images)
        torch.testing.assert_close(latents, original.first_stage.encode(images) * scale, **TOL)
        torch.testing.assert_close(model.decode(latents), original.first_stage.decode(latents / scale), **TOL)
    assert latents.shape == (2, *model.sample_shape)


def test_scale_factor_buffer_of_a_scale_by_std_checkpoint_becomes_the_latent_scale(tmp_path: Path) -> None:
    original = Original("churches_like")
    model = build_model(original.spec(original.save(tmp_path / "model.ckpt")))
    assert model.latent_scale_factor == pytest.approx(0.3, rel=1e-6)


def test_use_ema_loads_the_ema_copy_of_the_unet(tmp_path: Path) -> None:
    original = Original("churches_like", ema=True)
    path = original.save(tmp_path / "model.ckpt")
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    with torch.no_grad():
        ema = build_model(original.spec(path, use_ema=True)).eps(x, t)
        raw = build_model(original.spec(path, use_ema=False)).eps(x, t)
        torch.testing.assert_close(ema, original.ema(x, t), **TOL)
        torch.testing.assert_close(raw, original.unet(x, t), **TOL)


def test_safetensors_checkpoint_loads_like_the_pickled_one(tmp_path: Path) -> None:
    original = Original("bedrooms_like")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in original.state_dict.items()}, str(path))
    model = build_model(original.spec(path))
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([3.0])
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, t), original.unet(x, t), **TOL)


@pytest.mark.parametrize(
    ("extra_key", "named_as"),
    [
        ("model.diffusion_model.input_blocks.1.0.extra.weight", r"resnets\.0\.extra\.weight"),  # renamed, then unmatched
        ("first_stage_model.loss.logvar", r"does not know: loss\.logvar"),
        ("cond_ids", r"does not know: cond_ids"),
    ],
)
def test_a_key_the_converter_does_not_know_raises(extra_key: str, named_as: str, tmp_path: Path) -> None:
    original = Original("imagenet_like")
    state = dict(original.state_dict, **{extra_key: torch.zeros(3)})
    with pytest.raises(CheckpointKeyError, match=named_as):
        build_model(original.spec(original.save(tmp_path / "model.ckpt", state)))


def test_a_missing_key_raises(tmp_path: Path) -> None:
    original = Original("churches_like")
    state = {k: v for k, v in original.state_dict.items() if k != "model.diffusion_model.middle_block.1.qkv.weight"}
    with pytest.raises(CheckpointKeyError, match="middle_block.1.qkv.weight"):
        build_model(original.spec(original.save(tmp_path / "model.ckpt", state)))


def test_checkpoint_of_another_architecture_raises(tmp_path: Path) -> None:
    bedrooms = Original("bedrooms_like")
    path = bedrooms.save(tmp_path / "model.ckpt")
    churches_params = copy.deepcopy(FAMILIES["churches_like"])
    churches_params.update(linear_end=0.0195, first_stage_config=VQ_F2, scale_by_std=False)
    with pytest.raises(CheckpointKeyError):
        build_model(ModelSpec(kind="compvis_ldm", weights=str(path), ldm=churches_params))


def test_checkpoint_trained_with_another_schedule_raises(tmp_path: Path) -> None:
    original = Original("bedrooms_like")
    path = original.save(tmp_path / "model.ckpt")
    params = dict(original.params, linear_end=0.012)
    with pytest.raises(ValueError, match="betas do not match"):
        build_model(ModelSpec(kind="compvis_ldm", weights=str(path), ldm=params))


def test_missing_checkpoint_file_names_the_path_and_where_to_get_it(tmp_path: Path) -> None:
    spec = ModelSpec(kind="compvis_ldm", weights=str(tmp_path / "nowhere.ckpt"), ldm=FAMILIES["bedrooms_like"],
                     weights_source="https://example.org/lsun_bedrooms.zip")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.ckpt.*https://example\.org/lsun_bedrooms\.zip"):
        build_model(spec)
