"""Conditioners: raw condition -> what the noise network takes, plus the null condition for CFG.

Every conditioner has

* ``unet_argument``: the keyword the UNet takes it as (``class_labels`` for ``UNet2DModel`` class
  embeddings, ``encoder_hidden_states`` for cross-attention UNets);
* ``forward(cond)``: raw condition -> UNet argument. It is idempotent on its own output
  (a floating tensor is taken to be already encoded and passed through), so callers may encode
  once (``model.prepare_cond``) and reuse the result at every step;
* ``null_cond(batch_size, device)``: the raw unconditional input (null class / empty prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class ClassLabelConditioner(nn.Module):
    """Class labels fed to the UNet's own class embedding (``UNet2DModel(num_class_embeds=...)``).

    Used by the embedded digits model: labels ``0..9`` and the null class ``10``.
    """

    unet_argument = "class_labels"

    def __init__(self, num_classes: int, null_class: int) -> None:
        super().__init__()
        if not 0 <= null_class < num_classes:
            raise ValueError(f"null_class {null_class} outside 0..{num_classes - 1}")
        self.num_classes, self.null_class = num_classes, null_class

    def forward(self, cond: Tensor) -> Tensor:
        if cond.is_floating_point() or cond.dim() != 1:
            raise ValueError(f"expected class labels LongTensor [B], got {cond.dtype} {tuple(cond.shape)}")
        return cond

    def null_cond(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        return torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)


class ClassEmbedder(nn.Module):
    """LDM's ``ClassEmbedder``: label -> one cross-attention token ``[B, 1, embed_dim]``.

    LDM-4 ImageNet (cin256-v2) has 1001 entries; entry 1000 is the null class used for CFG.
    The parameter is named ``embedding.weight`` as in the original (``cond_stage_model.embedding``).
    """

    unet_argument = "encoder_hidden_states"

    def __init__(self, num_classes: int, embed_dim: int, null_class: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed_dim)
        self.null_class = num_classes - 1 if null_class is None else null_class
        if not 0 <= self.null_class < num_classes:
            raise ValueError(f"null_class {self.null_class} outside 0..{num_classes - 1}")

    def forward(self, cond: Tensor) -> Tensor:
        if cond.is_floating_point():
            return cond  # already a context [B, 1, D]
        if cond.dim() != 1:
            raise ValueError(f"expected class labels [B], got shape {tuple(cond.shape)}")
        return self.embedding(cond)[:, None, :]

    def null_cond(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        device = device if device is not None else self.embedding.weight.device
        return torch.full((batch_size,), self.null_class, dtype=torch.long, device=device)


class TextConditioner(nn.Module):
    """A CLIP text encoder (Stable Diffusion v1's ``FrozenCLIPEmbedder``): token ids -> ``last_hidden_state``.

    Raw conditions are token ids ``LongTensor [B, max_length]`` (from :meth:`tokenize`, which needs
    a local tokenizer folder) or prompt embeddings ``[B, max_length, hidden]`` (passed through).
    The null condition is the empty prompt ``""``: ``[bos, eos, pad, ...]`` - computed from the
    token ids without a tokenizer, so CFG works from token ids or embeddings alone.
    """

    unet_argument = "encoder_hidden_states"

    def __init__(self, text_encoder: nn.Module, max_length: int = 77, tokenizer: Any = None) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.max_length = max_length
        self.tokenizer = tokenizer
        cfg = text_encoder.config
        self.bos_token_id, self.eos_token_id = int(cfg.bos_token_id), int(cfg.eos_token_id)
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_token_id = int(pad if pad is not None else cfg.pad_token_id)

    def tokenize(self, prompts: Sequence[str], device: torch.device | str | None = None) -> Tensor:
        if self.tokenizer is None:
            raise RuntimeError(
                "no tokenizer configured: set `tokenizer:` in the model spec to a local CLIP tokenizer "
                "folder (vocab.json + merges.txt, e.g. the tokenizer/ folder of a Stable Diffusion "
                "pipeline), or pass token ids / prompt embeddings as the condition"
            )
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return ids.to(device if device is not None else self._device())

    def forward(self, cond: Tensor) -> Tensor:
        if cond.is_floating_point():
            return cond
        if cond.dim() != 2:
            raise ValueError(f"expected token ids [B, L], got shape {tuple(cond.shape)}")
        return self.text_encoder(input_ids=cond).last_hidden_state

    def null_cond(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        device = device if device is not None else self._device()
        ids = torch.full((batch_size, self.max_length), self.pad_token_id, dtype=torch.long, device=device)
        ids[:, 0], ids[:, 1] = self.bos_token_id, self.eos_token_id
        return ids

    def _device(self) -> torch.device:
        return next(self.text_encoder.parameters()).device
