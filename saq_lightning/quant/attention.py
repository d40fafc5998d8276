"""Optional quantization of the attention score and value matmuls (off by default).

Implemented as a diffusers attention *processor* (``Attention.set_processor``), because inside
diffusers' ``Attention`` the matmuls happen in the processor. Being an ``nn.Module`` it is
registered as a submodule of the ``Attention`` module, so its quantizer tables are ordinary
student parameters. The scores use an explicit ``softmax(q k^T * scale)`` (no fused SDPA: the
probabilities must be quantized before they meet ``v``).

Quantized operands, each with its own per-timestep table: ``q`` and ``k`` (score matmul),
the softmax probabilities and ``v`` (value matmul).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import FakeQuantize
from .policy import QuantPolicy
from .timestep_quantizer import TimestepActQuantizer, TimestepContext


class QuantAttnProcessor(nn.Module):
    """Attention processor with fake-quantized ``q``, ``k``, ``softmax(qk^T)`` and ``v``."""

    OPERANDS = ("q", "k", "probs", "v")

    def __init__(self, context: TimestepContext, policy: QuantPolicy, name: str = "") -> None:
        """Operands at ``policy.attn_bits`` (default ``act_bits``), with the activation settings."""
        super().__init__()
        self.name = name
        self.quant_act = True
        self.quantizers = nn.ModuleDict()
        for op in self.OPERANDS:
            sym = policy.act_symmetric and op != "probs"  # probabilities are >= 0: unsigned codes
            qz = TimestepActQuantizer(policy.n_buckets, policy.attn_bits or policy.act_bits, context,
                                      symmetric=sym, init=policy.act_init, p=policy.lp_p)
            qz.name = f"{name}.processor.quantizers.{op}"
            self.quantizers[op] = qz

    def _fq(self, op: str, x: Tensor) -> Tensor:
        qz: TimestepActQuantizer = self.quantizers[op]  # type: ignore[assignment]
        qz.observe(x)
        if not self.quant_act:
            return x
        s, z, gf = qz.params_for(x)
        return FakeQuantize.apply(x, s, z, qz.qmin, qz.qmax, gf)

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        # explicit signature: diffusers' Attention inspects it to decide which kwargs to pass
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

    def forward(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        temb: Tensor | None = None,
        *args,
        **kwargs,
    ) -> Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)

        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)

        q, k, v = self._fq("q", q), self._fq("k", k), self._fq("v", v)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask.float()
        probs = self._fq("probs", scores.softmax(dim=-1))
        out = torch.matmul(probs.to(v.dtype), v)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def extra_repr(self) -> str:
        return f"quant_act={self.quant_act}"


def is_diffusers_attention(module: nn.Module) -> bool:
    """True for diffusers ``Attention`` modules (the ones that take processors)."""
    try:
        from diffusers.models.attention_processor import Attention
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return False
    return isinstance(module, Attention)
