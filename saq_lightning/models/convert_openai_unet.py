"""openaimodel ``UNetModel`` with ``AttentionBlock`` (LDM LSUN-Churches, LSUN-Bedrooms) -> ``UNet2DModel``.

diffusers' single-file helpers only cover the SpatialTransformer (Stable Diffusion) layout. This
module writes the mapping for the self-attention layout, including what those models add:
scale-shift norm (``emb_layers`` output of width 2C, same parameter names), residual-block
up/down-sampling (``ResBlock(up/down=True)`` -> ``ResnetBlock2D(up/down=True)`` in
``downsamplers``/``upsamplers``) and the fused ``qkv`` 1-D convolution, which is split into
``to_q``/``to_k``/``to_v``. With the default ("legacy") attention order openaimodel reshapes
``qkv`` per head *before* splitting q, k and v, so the 3C output channels are laid out
``[head][q|k|v][head width]``; the split has to follow that layout.

The plan is generated from the architecture (``unet_config.params``), not from the checkpoint's
keys, so an unexpected or missing key in the checkpoint is reported by
:func:`.key_accounting.apply_plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .key_accounting import Plan, Rule
from .ldm_config import heads_at, unet_params


def _same(plan: Plan, src: str, dst: str, names: tuple[str, ...] = ("weight", "bias")) -> None:
    for n in names:
        plan[f"{dst}.{n}"] = Rule((f"{src}.{n}",))


def _resblock(plan: Plan, src: str, dst: str, c_in: int, c_out: int) -> None:
    _same(plan, f"{src}.in_layers.0", f"{dst}.norm1")
    _same(plan, f"{src}.in_layers.2", f"{dst}.conv1")
    _same(plan, f"{src}.emb_layers.1", f"{dst}.time_emb_proj")
    _same(plan, f"{src}.out_layers.0", f"{dst}.norm2")
    _same(plan, f"{src}.out_layers.3", f"{dst}.conv2")
    if c_in != c_out:
        _same(plan, f"{src}.skip_connection", f"{dst}.conv_shortcut")


def _qkv_part(index: int, heads: int, legacy_order: bool):
    """Transform picking q (0), k (1) or v (2) out of a fused ``qkv`` weight [3C, C, 1] or bias [3C]."""

    def pick(tensors: list[Tensor]) -> Tensor:
        w = tensors[0]
        three_c = w.shape[0]
        c = three_c // 3
        rest = w.shape[1:]
        if legacy_order:  # [head][q|k|v][width]
            part = w.reshape(heads, 3, c // heads, *rest)[:, index].reshape(c, *rest)
        else:  # [q|k|v][head][width]
            part = w.reshape(3, c, *rest)[index]
        return part.reshape(c, -1) if part.dim() > 1 else part  # conv1d kernel -> linear weight

    return pick


def _attention(plan: Plan, src: str, dst: str, heads: int, legacy_order: bool) -> None:
    _same(plan, f"{src}.norm", f"{dst}.group_norm")
    for index, name in enumerate(("to_q", "to_k", "to_v")):
        for n in ("weight", "bias"):
            plan[f"{dst}.{name}.{n}"] = Rule((f"{src}.qkv.{n}",), _qkv_part(index, heads, legacy_order))
    _same(plan, f"{src}.proj_out", f"{dst}.to_out.0")


def openai_unet_plan(params: Mapping[str, Any]) -> Plan:
    """``{UNet2DModel key: Rule(openaimodel keys)}`` for the UNet described by ``params`` (``model.params``)."""
    up = unet_params(params)
    mc, mult = up["model_channels"], list(up["channel_mult"])
    attn_ds, nrb = set(up["attention_resolutions"]), up["num_res_blocks"]
    updown, legacy_order = bool(up["resblock_updown"]), not up["use_new_attention_order"]
    levels = len(mult)
    plan: Plan = {}
    _same(plan, "time_embed.0", "time_embedding.linear_1")
    _same(plan, "time_embed.2", "time_embedding.linear_2")
    _same(plan, "input_blocks.0.0", "conv_in")

    ch, index, skip_chans = mc, 1, [mc]
    for level in range(levels):
        out = mc * mult[level]
        attn = 2**level in attn_ds
        for j in range(nrb):
            _resblock(plan, f"input_blocks.{index}.0", f"down_blocks.{level}.resnets.{j}", ch, out)
            ch = out
            if attn:
                _attention(plan, f"input_blocks.{index}.1", f"down_blocks.{level}.attentions.{j}", heads_at(up, ch), legacy_order)
            skip_chans.append(ch)
            index += 1
        if level != levels - 1:
            dst = f"down_blocks.{level}.downsamplers.0"
            if updown:
                _resblock(plan, f"input_blocks.{index}.0", dst, ch, ch)
            else:
                _same(plan, f"input_blocks.{index}.0.op", f"{dst}.conv")
            skip_chans.append(ch)
            index += 1

    _resblock(plan, "middle_block.0", "mid_block.resnets.0", ch, ch)
    _attention(plan, "middle_block.1", "mid_block.attentions.0", heads_at(up, ch), legacy_order)
    _resblock(plan, "middle_block.2", "mid_block.resnets.1", ch, ch)

    index = 0
    for u, level in enumerate(reversed(range(levels))):
        out = mc * mult[level]
        attn = 2**level in attn_ds
        for j in range(nrb + 1):
            c_in = ch + skip_chans.pop()
            _resblock(plan, f"output_blocks.{index}.0", f"up_blocks.{u}.resnets.{j}", c_in, out)
            ch = out
            layer = 1
            if attn:
                _attention(plan, f"output_blocks.{index}.1", f"up_blocks.{u}.attentions.{j}", heads_at(up, ch), legacy_order)
                layer = 2
            if level > 0 and j == nrb:
                dst = f"up_blocks.{u}.upsamplers.0"
                if updown:
                    _resblock(plan, f"output_blocks.{index}.{layer}", dst, ch, ch)
                else:
                    _same(plan, f"output_blocks.{index}.{layer}.conv", f"{dst}.conv")
            index += 1

    _same(plan, "out.0", "conv_norm_out")
    _same(plan, "out.2", "conv_out")
    return plan
