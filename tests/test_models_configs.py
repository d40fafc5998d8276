"""Every model YAML in configs/models/ parses the way LightningCLI parses it and builds its model.

The paper's models are built on the ``meta`` device (no memory, no weights needed); the exact
parameter counts pin the architectures (the LDM papers report ~400M for the LDM-4 ImageNet UNet,
274M for LSUN-Bedrooms, 294M for LSUN-Churches; Stable Diffusion v1's UNet has 859,520,964), and
they are cross-checked against reference re-implementations of the original CompVis modules.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from saq_lightning.models import DiffusionModel, ModelSpec, build_model, load_model_spec

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "models"


def n_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def build_on_meta(name: str) -> DiffusionModel:
    spec = load_model_spec(CONFIGS / name)
    with torch.device("meta"):
        return build_model(spec, load_weights=False)


def test_every_model_yaml_is_covered_by_these_tests() -> None:
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(
        ["digits.yaml", "ldm4_imagenet.yaml", "ldm8_churches.yaml", "ldm4_bedrooms.yaml", "sd14.yaml"]
    )


# file, UNet class, UNet / autoencoder / conditioner parameters, UNet input (C, H, W), latent scale
PAPER_MODELS = [
    ("ldm4_imagenet.yaml", "UNet2DConditionModel", 400_920_579, 55_322_782, 512_512, (3, 64, 64), 1.0),
    ("ldm8_churches.yaml", "UNet2DModel", 294_966_916, 83_653_863, 0, (4, 32, 32), 1.0),
    ("ldm4_bedrooms.yaml", "UNet2DModel", 274_056_163, 55_322_782, 0, (3, 64, 64), 1.0),
    ("sd14.yaml", "UNet2DConditionModel", 859_520_964, 83_653_863, 123_060_480, (4, 64, 64), 0.18215),
]


@pytest.mark.parametrize(("name", "unet_class", "unet", "ae", "cond", "shape", "scale"), PAPER_MODELS)
def test_paper_model_builds_on_meta_with_its_exact_parameter_count(
    name: str, unet_class: str, unet: int, ae: int, cond: int, shape: tuple[int, int, int], scale: float
) -> None:
    model = build_on_meta(name)
    assert type(model.unet).__name__ == unet_class
    assert (n_params(model.unet), n_params(model.autoencoder), n_params(model.conditioner)) == (unet, ae, cond)
    assert model.sample_shape == shape
    assert model.latent_scale_factor == scale  # churches: the real value comes from the checkpoint


@pytest.mark.parametrize("name", ["ldm4_imagenet.yaml", "ldm8_churches.yaml", "ldm4_bedrooms.yaml", "sd14.yaml"])
def test_built_architecture_has_as_many_parameters_as_the_original_modules(name: str) -> None:
    import models_helpers as ref

    params = load_model_spec(CONFIGS / name).ldm
    fs = params["first_stage_config"]
    kind = "kl" if fs["target"].endswith("AutoencoderKL") else "vq"
    with torch.device("meta"):
        unet = ref.UNetModel(**params["unet_config"]["params"])
        first_stage = ref.FirstStage(kind, fs["params"]["embed_dim"], fs["params"]["ddconfig"], fs["params"].get("n_embed"))
    model = build_on_meta(name)
    assert (n_params(model.unet), n_params(model.autoencoder)) == (n_params(unet), n_params(first_stage))


@pytest.mark.parametrize(
    ("name", "schedule", "sampling"),
    [
        ("ldm4_imagenet.yaml", ("scaled_linear", 0.0015, 0.0195), {"steps": 20, "guidance_scale": 1.5}),
        ("ldm8_churches.yaml", ("scaled_linear", 0.0015, 0.0155), {"steps": 50, "guidance_scale": 1.0}),
        ("ldm4_bedrooms.yaml", ("scaled_linear", 0.0015, 0.0195), {"steps": 50, "guidance_scale": 1.0}),
        ("sd14.yaml", ("scaled_linear", 0.00085, 0.012), {"solver": "plms", "steps": 50, "guidance_scale": 7.5}),
        ("digits.yaml", ("linear", 1e-4, 0.02), {"guidance_scale": 1.0}),
    ],
)
def test_model_yaml_carries_its_training_schedule_and_sampling_defaults(name: str, schedule: tuple, sampling: dict) -> None:
    model = build_on_meta(name)
    cfg = model.schedule_config
    assert (cfg["beta_schedule"], cfg["beta_start"], cfg["beta_end"], cfg["num_train_timesteps"]) == (*schedule, 1000)
    assert sampling.items() <= model.sampling_defaults.items()


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_model_yaml_names_a_solver_the_sampling_library_has(name: str) -> None:
    from saq_lightning.sampling import SOLVER_NAMES

    assert load_model_spec(CONFIGS / name).sampling["solver"] in SOLVER_NAMES


def test_imagenet_model_guides_with_null_class_1000() -> None:
    model = build_on_meta("ldm4_imagenet.yaml")
    assert model.null_cond(2, device="cpu").tolist() == [1000, 1000]


def test_churches_unet_uses_8_heads_at_every_level() -> None:
    from diffusers.models.attention_processor import Attention

    model = build_on_meta("ldm8_churches.yaml")
    heads = {m.heads for m in model.unet.modules() if isinstance(m, Attention)}
    widths = {m.to_q.out_features // m.heads for m in model.unet.modules() if isinstance(m, Attention)}
    assert heads == {8} and widths == {24, 48, 96}


def test_digits_yaml_builds_the_class_conditional_digits_model_from_a_weights_file(tmp_path: Path) -> None:
    from saq_lightning.models.digits import (
        DIGITS_SCHEDULE_CONFIG,
        DIGITS_UNET_CONFIG,
        NULL_CLASS,
        build_digits_unet,
        save_weights_with_sidecar,
    )

    unet = build_digits_unet()
    path = save_weights_with_sidecar(
        unet.state_dict(), tmp_path / "digits.safetensors",
        {"unet_config": DIGITS_UNET_CONFIG, "schedule_config": DIGITS_SCHEDULE_CONFIG},
    )
    spec = load_model_spec(CONFIGS / "digits.yaml")
    spec.weights = str(path)
    model = build_model(spec)
    assert model.sample_shape == (1, 8, 8)
    assert model.null_cond(3).tolist() == [NULL_CLASS] * 3
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    with torch.no_grad():
        torch.testing.assert_close(model.eps(x, 250, labels), unet(x, torch.full((3,), 250), class_labels=labels).sample)


def test_digits_spec_without_a_weights_file_names_where_it_comes_from(tmp_path: Path) -> None:
    spec = ModelSpec(kind="digits", weights=str(tmp_path / "missing.safetensors"))
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_model(spec)


def test_sd14_yaml_without_the_checkpoint_says_which_file_and_where_it_is_obtained() -> None:
    spec = load_model_spec(CONFIGS / "sd14.yaml")
    spec.weights = "/nonexistent/sd-v1-4.ckpt"
    spec.tokenizer = None
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/sd-v1-4\.ckpt.*CompVis/stable-diffusion-v-1-4-original"):
        build_model(spec)


def test_a_spec_parses_from_lightningcli_style_yaml_with_overrides() -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--teacher", type=ModelSpec)
    cfg = parser.parse_args(["--teacher", str(CONFIGS / "ldm4_bedrooms.yaml"), "--teacher.use_ema", "true"])
    spec = parser.instantiate_classes(cfg).teacher
    assert isinstance(spec, ModelSpec) and spec.kind == "compvis_ldm" and spec.use_ema is True
