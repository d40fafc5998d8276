"""Shared fixtures: tiny diffusers UNets (a few hundred thousand parameters, 8x8) and seeding.

Area-specific fixtures live next to their tests; models that several areas use live here.
"""

from __future__ import annotations

import os

import pytest
import torch

# pytest -n 2 on a 2-core machine: one intra-op thread per worker avoids oversubscription.
torch.set_num_threads(int(os.environ.get("SAQ_TEST_THREADS", "1")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_tiny_unet2d(num_class_embeds: int | None = 11):
    """Class-conditional UNet2DModel on 8x8x1 inputs (~0.2M parameters)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )


def make_tiny_unet2d_condition(cross_attention_dim: int = 16):
    """Cross-attention UNet2DConditionModel (LDM-4 ImageNet / SD layout) on 8x8x4 latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=cross_attention_dim,
    )


@pytest.fixture
def tiny_unet():
    return make_tiny_unet2d().eval()


@pytest.fixture
def tiny_cond_unet():
    return make_tiny_unet2d_condition().eval()


@pytest.fixture(scope="module")
def cond_w4a8_export(tmp_path_factory):
    """The tiny cross-attention UNet exported W4A8 (packed int4 weights, 8-bit activations with
    offsets, conv_in at 8 bits): the runtime kernels' tests (Triton, oneDNN) run it."""
    from quant_helpers import calibrated_cond_student, perturb_lora

    from saq_lightning.quant import export_student

    torch.manual_seed(0)
    _, student = calibrated_cond_student("w4a8")
    perturb_lora(student)
    return export_student(student, tmp_path_factory.mktemp("cond_w4a8") / "export")
