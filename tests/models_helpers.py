"""Reference re-implementations of the original CompVis modules, for conversion tests.

These are written from the *original* architecture (ldm/modules/diffusionmodules/openaimodel.py,
ldm/modules/attention.py, ldm/modules/diffusionmodules/model.py, taming's VectorQuantizer,
LDM's ClassEmbedder), module for module, so that their ``state_dict`` has the original key layout
and their forward pass is the original computation. They know nothing of diffusers or of the
converters under test: a synthetic checkpoint made from them checks the converters' key mapping
(every key) *and* the numerics (e.g. the per-head ``qkv`` layout), at reduced channel counts.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights everywhere (the originals zero-initialise output convs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return module


# --------------------------------------------------------------------------- openaimodel UNet
def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def norm32(c: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=eps)


class Downsample(nn.Module):
    def __init__(self, c: int, use_conv: bool) -> None:
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1) if use_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c: int, use_conv: bool) -> None:
        super().__init__()
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    def __init__(self, c: int, emb: int, out: int, scale_shift: bool, up: bool = False, down: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(norm32(c), nn.SiLU(), nn.Conv2d(c, out, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(c, False), Upsample(c, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(c, False), Downsample(c, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if scale_shift else out))
        self.out_layers = nn.Sequential(norm32(out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if out == c else nn.Conv2d(c, out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h, x = self.h_upd(h), self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb)[..., None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over a fused qkv 1-D conv; ``legacy``: heads split before q/k/v."""

    def __init__(self, c: int, heads: int, legacy: bool = True) -> None:
        super().__init__()
        self.heads, self.legacy = heads, legacy
        self.norm = norm32(c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        length, ch = qkv.shape[-1], c // self.heads
        if self.legacy:
            q, k, v = qkv.reshape(b * self.heads, 3 * ch, length).split(ch, dim=1)
        else:
            q, k, v = (t.reshape(b * self.heads, ch, length) for t in qkv.chunk(3, dim=1))
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        h = torch.einsum("bts,bcs->bct", w, v).reshape(b, -1, length)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int | None, heads: int, dim_head: int) -> None:
        super().__init__()
        inner, context_dim = heads * dim_head, context_dim or dim
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        h = self.heads

        def split(t: Tensor) -> Tensor:
            b, n, d = t.shape
            return t.reshape(b, n, h, d // h).permute(0, 2, 1, 3).reshape(b * h, n, d // h)

        q, k, v = split(self.to_q(x)), split(self.to_k(context)), split(self.to_v(context))
        attn = (torch.einsum("bid,bjd->bij", q, k) * self.scale).softmax(dim=-1)
        out = torch.einsum("bij,bjd->bid", attn, v)
        b = x.shape[0]
        out = out.reshape(b, h, -1, out.shape[-1]).permute(0, 2, 1, 3).reshape(b, -1, h * out.shape[-1])
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, c: int, heads: int, dim_head: int, depth: int, context_dim: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = norm32(c, eps=1e-6)
        self.proj_in = nn.Conv2d(c, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)]
        )
        self.proj_out = nn.Conv2d(inner, c, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, _, h, w = x.shape
        y = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        return self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w)) + x


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None) -> Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """openaimodel.UNetModel for the options the paper's models use (2-D, no label_emb)."""

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: list[int],
        channel_mult: list[int],
        num_heads: int = -1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: int | None = None,
        **_ignored: Any,
    ) -> None:
        super().__init__()
        mc, emb = model_channels, model_channels * 4
        self.model_channels = mc

        def attention(ch: int) -> nn.Module:
            heads = num_heads if num_head_channels == -1 else ch // num_head_channels
            if use_spatial_transformer:
                return SpatialTransformer(ch, heads, ch // heads, transformer_depth, context_dim)  # type: ignore[arg-type]
            return AttentionBlock(ch, heads, legacy=not use_new_attention_order)

        def res(c: int, out: int, **kw: bool) -> ResBlock:
            return ResBlock(c, emb, out, use_scale_shift_norm, **kw)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_channels, mc, 3, padding=1))])
        chans, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, True)
                self.input_blocks.append(TimestepEmbedSequential(down))
                chans.append(ch)
                ds *= 2
        self.middle_block = TimestepEmbedSequential(res(ch, ch), attention(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, True))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(norm32(ch), nn.SiLU(), nn.Conv2d(mc, out_channels, 3, padding=1))

    def forward(self, x: Tensor, timesteps: Tensor, context: Tensor | None = None) -> Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


# --------------------------------------------------------------------------- first stages
class AEResnetBlock(nn.Module):
    def __init__(self, c: int, out: int) -> None:
        super().__init__()
        self.norm1 = norm32(c, 1e-6)
        self.conv1 = nn.Conv2d(c, out, 3, padding=1)
        self.norm2 = norm32(out, 1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        if c != out:
            self.nin_shortcut = nn.Conv2d(c, out, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AEAttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = norm32(c, 1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        attn = torch.softmax(torch.bmm(q.reshape(b, c, -1).permute(0, 2, 1), k.reshape(b, c, -1)) * c**-0.5, dim=2)
        out = torch.bmm(v.reshape(b, c, -1), attn.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class AEDownsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class AEUpsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = AEResnetBlock(c, c), AEAttnBlock(c), AEResnetBlock(c, c)
    return mid


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], num_res_blocks: int, in_channels: int, z_channels: int, double_z: bool, **_: Any) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        in_mult = [1] + list(ch_mult)
        self.down = nn.ModuleList()
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            block_in, block_out = ch * in_mult[i], ch * m
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(AEResnetBlock(block_in, block_out))
                block_in = block_out
            level.attn = nn.ModuleList()
            if i != len(ch_mult) - 1:
                level.downsample = AEDownsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in)
        self.norm_out = norm32(block_in, 1e-6)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, out_ch: int, ch_mult: list[int], num_res_blocks: int, z_channels: int, **_: Any) -> None:
        super().__init__()
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(AEResnetBlock(block_in, ch * ch_mult[i]))
                block_in = ch * ch_mult[i]
            level.attn = nn.ModuleList()
            if i != 0:
                level.upsample = AEUpsample(block_in)
            self.up.insert(0, level)
        self.norm_out = norm32(block_in, 1e-6)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, n_e: int, e_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z: Tensor) -> Tensor:
        zf = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        d = (zf**2).sum(1, keepdim=True) + (self.embedding.weight**2).sum(1) - 2 * zf @ self.embedding.weight.t()
        zq = self.embedding(d.argmin(1)).reshape(z.shape[0], z.shape[2], z.shape[3], -1)
        return zq.permute(0, 3, 1, 2)


class FirstStage(nn.Module):
    """ldm.models.autoencoder.AutoencoderKL (``kind="kl"``) or VQModelInterface (``kind="vq"``)."""

    def __init__(self, kind: str, embed_dim: int, ddconfig: dict[str, Any], n_embed: int | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.encoder, self.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
        z = ddconfig["z_channels"]
        if kind == "kl":
            self.quant_conv = nn.Conv2d(2 * z, 2 * embed_dim, 1)
        else:
            self.quant_conv = nn.Conv2d(z, embed_dim, 1)
            self.quantize = VectorQuantizer(n_embed, embed_dim)  # type: ignore[arg-type]
        self.post_quant_conv = nn.Conv2d(embed_dim, z, 1)

    def encode(self, x: Tensor) -> Tensor:
        h = self.quant_conv(self.encoder(x))
        return h.chunk(2, dim=1)[0] if self.kind == "kl" else h  # KL: posterior mean

    def decode(self, z: Tensor) -> Tensor:
        if self.kind == "vq":
            z = self.quantize(z)
        return self.decoder(self.post_quant_conv(z))


class ClassEmbedder(nn.Module):
    def __init__(self, embed_dim: int, n_classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels: Tensor) -> Tensor:
        return self.embedding(labels[:, None])


# --------------------------------------------------------------------------- tiny configs
KL_F2 = {
    "target": "ldm.models.autoencoder.AutoencoderKL",
    "params": {"embed_dim": 4, "ddconfig": {"double_z": True, "z_channels": 4, "resolution": 16, "in_channels": 3,
                                            "out_ch": 3, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 1,
                                            "attn_resolutions": [], "dropout": 0.0}},
}
VQ_F2 = {
    "target": "ldm.models.autoencoder.VQModelInterface",
    "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": {"double_z": False, "z_channels": 3, "resolution": 16,
                                                           "in_channels": 3, "out_ch": 3, "ch": 32, "ch_mult": [1, 2],
                                                           "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}},
}
TINY_CLIP = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 16, "hidden_act": "quick_gelu",
             "bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99}

# `model.params` of each paper family, with reduced channel counts (8x8 latents).
TINY_LDM_FAMILIES: dict[str, dict[str, Any]] = {
    # LDM-4 ImageNet (cin256-v2): SpatialTransformer UNet, 1 head, attention only below the top
    # level (as the real model), class embedder with a null class, VQ.
    "imagenet_like": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 8,
        "conditioning_key": "crossattn",
        "unet_config": {"params": {"in_channels": 3, "out_channels": 3, "model_channels": 32,
                                   "attention_resolutions": [2], "num_res_blocks": 1, "channel_mult": [1, 2],
                                   "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1,
                                   "context_dim": 16}},
        "first_stage_config": VQ_F2,
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                              "params": {"n_classes": 11, "embed_dim": 16, "key": "class_label"}},
    },
    # LDM-8 LSUN-Churches: AttentionBlock UNet with 2 heads at every level, scale-shift norm,
    # resblock up/down, levels without attention in the middle and at the bottom (as the real
    # model's last level), KL, scale_by_std.
    "churches_like": {
        "linear_start": 0.0015, "linear_end": 0.0155, "timesteps": 1000, "image_size": 8, "scale_by_std": True,
        "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 32,
                                   "attention_resolutions": [1, 4], "num_res_blocks": 1, "channel_mult": [1, 2, 2, 2],
                                   "num_heads": 2, "use_scale_shift_norm": True, "resblock_updown": True}},
        "first_stage_config": KL_F2,
        "cond_stage_config": "__is_unconditional__",
    },
    # LDM-4 LSUN-Bedrooms: AttentionBlock UNet with 16 channels per head, conv resampling, VQ.
    "bedrooms_like": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 8, "scale_factor": 1.0,
        "unet_config": {"params": {"in_channels": 3, "out_channels": 3, "model_channels": 32,
                                   "attention_resolutions": [2, 4], "num_res_blocks": 1, "channel_mult": [1, 2, 2],
                                   "num_head_channels": 16}},
        "first_stage_config": VQ_F2,
        "cond_stage_config": "__is_unconditional__",
    },
    # Stable Diffusion v1: SpatialTransformer UNet (2 heads), KL, CLIP text encoder.
    "sd_like": {
        "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "image_size": 8, "scale_factor": 0.18215,
        "conditioning_key": "crossattn",
        "unet_config": {"params": {"in_channels": 4, "out_channels": 4, "model_channels": 32,
                                   "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2],
                                   "num_heads": 2, "use_spatial_transformer": True, "transformer_depth": 1,
                                   "context_dim": 32, "legacy": False}},
        "first_stage_config": KL_F2,
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"max_length": 16}},
    },
}


# --------------------------------------------------------------------------- LatentDiffusion checkpoints
class FakeModelCheckpoint:
    """Stands for the pytorch_lightning callback objects pickled into real CompVis checkpoints."""

    def __init__(self) -> None:
        self.best_model_path = "/somewhere/last.ckpt"
        self.monitor = len  # a callable global, as pickled objects may reference


def ldm_betas(linear_start: float, linear_end: float, n: int) -> Tensor:
    """ldm.modules.diffusionmodules.util.make_beta_schedule("linear", ...)."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, n, dtype=torch.float64) ** 2


def ddpm_buffers(linear_start: float, linear_end: float, n: int) -> dict[str, Tensor]:
    """The schedule buffers ``DDPM.register_schedule`` stores in every checkpoint (a subset of them)."""
    betas = ldm_betas(linear_start, linear_end, n)
    ac = torch.cumprod(1 - betas, 0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    buffers = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": betas * (1 - prev) / (1 - ac),
        "posterior_log_variance_clipped": (betas * (1 - prev) / (1 - ac)).clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - ac),
    }
    return {k: v.float() for k, v in buffers.items()}


def ldm_state_dict(
    params: dict[str, Any],
    unet: nn.Module,
    first_stage: nn.Module | None,
    cond_stage: dict[str, Tensor] | None,
    ema_unet: nn.Module | None = None,
    scale_factor: float | None = None,
) -> dict[str, Tensor]:
    """A ``LatentDiffusion.state_dict()`` in the original layout (prefixes, EMA naming, buffers)."""
    sd: dict[str, Tensor] = {}
    sd.update({f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()})
    if first_stage is not None:
        sd.update({f"first_stage_model.{k}": v for k, v in first_stage.state_dict().items()})
    if cond_stage is not None:
        sd.update({f"cond_stage_model.{k}": v for k, v in cond_stage.items()})
    if ema_unet is not None:  # LitEma: names without dots, plus two counters
        sd.update({"model_ema." + f"diffusion_model.{k}".replace(".", ""): v for k, v in ema_unet.state_dict().items()})
        sd["model_ema.decay"] = torch.tensor(0.9999)
        sd["model_ema.num_updates"] = torch.tensor(1234, dtype=torch.int32)
    if scale_factor is not None:
        sd["scale_factor"] = torch.tensor(scale_factor)
    sd.update(ddpm_buffers(params["linear_start"], params["linear_end"], params.get("timesteps", 1000)))
    return sd


def save_lightning_checkpoint(state_dict: dict[str, Tensor], path: Any) -> None:
    """Saved like a PyTorch Lightning checkpoint, with a pickled callback object next to the weights."""
    torch.save(
        {"state_dict": state_dict, "epoch": 3, "global_step": 1000, "callbacks": {"ModelCheckpoint": FakeModelCheckpoint()}},
        path,
    )


def clip_cond_stage(text_model: nn.Module, max_length: int) -> dict[str, Tensor]:
    """``FrozenCLIPEmbedder`` keys: ``transformer.text_model.*`` plus the ``position_ids`` buffer of
    transformers 4.x (the transformers version SD v1 was saved with)."""
    out = {}
    for k, v in text_model.state_dict().items():
        inner = k if k.startswith("text_model.") else f"text_model.{k}"
        out[f"transformer.{inner}"] = v
    out["transformer.text_model.embeddings.position_ids"] = torch.arange(max_length)[None]
    return out


def touch(path: str) -> None:
    """A side effect a malicious checkpoint could trigger while being unpickled."""
    with open(path, "w") as f:
        f.write("pickled code ran")


class PickleTrap:
    """Unpickles by calling :func:`touch` - unless the loader refuses to run pickled callables."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (touch, (self.marker,))
