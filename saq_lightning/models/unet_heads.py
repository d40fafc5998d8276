"""A fixed number of attention heads at every level of a diffusers ``UNet2DModel``.

openaimodel's ``AttentionBlock`` with ``num_heads=8`` uses 8 heads at every resolution, so the
head width follows the channel count (24, 48, 96 ... for LDM-8 LSUN-Churches). ``UNet2DModel``
only knows a single head *width* (``attention_head_dim``). The model is built with one head per
attention layer and the head count is then set on each ``Attention`` module - the layer weights
are the same, only how the channels are split into heads changes. The count is recorded in the
model config under :data:`FIXED_HEADS_CONFIG_KEY`, so ``save_pretrained`` keeps it and
:func:`apply_config_heads` restores it when such a folder is loaded through this package
(plain ``UNet2DModel.from_pretrained`` would ignore the key with a warning).
"""

from __future__ import annotations

from diffusers.models.attention_processor import Attention
from torch import nn

FIXED_HEADS_CONFIG_KEY = "saq_fixed_attention_heads"


def set_attention_heads(unet: nn.Module, num_heads: int) -> None:
    """Use ``num_heads`` heads in every self-attention layer of ``unet`` and record it in its config."""
    found = 0
    for name, module in unet.named_modules():
        if isinstance(module, Attention):
            inner = module.to_q.out_features
            if inner % num_heads:
                raise ValueError(f"{name}: {inner} channels do not split into {num_heads} heads")
            module.heads = num_heads
            module.sliceable_head_dim = num_heads
            module.scale = (inner // num_heads) ** -0.5 if module.scale_qk else 1.0
            found += 1
    if not found:
        raise ValueError("the UNet has no attention layers to set heads on")
    if hasattr(unet, "register_to_config"):
        unet.register_to_config(**{FIXED_HEADS_CONFIG_KEY: num_heads})


def apply_config_heads(unet: nn.Module) -> nn.Module:
    """Re-apply a recorded fixed head count (no-op for models without one)."""
    config = getattr(unet, "config", None)
    num_heads = config.get(FIXED_HEADS_CONFIG_KEY) if config is not None else None
    if num_heads:
        set_attention_heads(unet, int(num_heads))
    return unet
