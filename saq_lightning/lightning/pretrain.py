"""Ordinary epsilon-prediction DDPM training of a class-conditional teacher (the embedded default).

Not the paper's method: this is how the full-precision teacher that SA-QLoRA starts from is made.
The exported file is the EMA weights plus a JSON sidecar (UNet config, schedule, training info).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from saq_lightning.models.digits import (
    DIGITS_SCHEDULE_CONFIG,
    DIGITS_UNET_CONFIG,
    NULL_CLASS,
    check_export_target,
    save_weights_with_sidecar,
)


def warmup_cosine(warmup_steps: int, total_steps: int, final_fraction: float = 0.05):
    """LR multiplier: linear warm-up, then cosine decay to ``final_fraction``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class DDPMPretrainModule(L.LightningModule):
    """Epsilon-prediction DDPM training with CFG label dropout and an EMA copy for export.

    Args:
        unet_config: ``diffusers.UNet2DModel`` kwargs; the digits default when omitted.
        schedule_config: ``DDPMScheduler`` kwargs (1000-step linear betas by default).
        cfg_dropout: probability of replacing the label by ``null_class`` (classifier-free guidance).
        export_path: where ``on_fit_end`` writes the EMA weights (safetensors + ``.json`` sidecar);
            an existing file is never replaced unless ``overwrite_export``.
    """

    def __init__(
        self,
        unet_config: dict[str, Any] | None = None,
        schedule_config: dict[str, Any] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 200,
        cfg_dropout: float = 0.1,
        null_class: int = NULL_CLASS,
        ema_decay: float = 0.999,
        export_path: str | None = None,
        overwrite_export: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.unet_config = dict(unet_config or DIGITS_UNET_CONFIG)
        self.schedule_config = dict(schedule_config or DIGITS_SCHEDULE_CONFIG)
        self.unet = UNet2DModel(**self.unet_config)
        self.noise_scheduler = DDPMScheduler(**self.schedule_config)
        self.ema = AveragedModel(
            self.unet, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True
        )
        self.ema.requires_grad_(False)

    def setup(self, stage: str) -> None:
        # Fail before training, not after it, when the export would replace an existing file.
        if stage == "fit" and self.hparams.export_path and not self.hparams.overwrite_export:
            check_export_target(self.hparams.export_path)

    def diffusion_loss(self, unet: torch.nn.Module, x0: Tensor, labels: Tensor, generator=None) -> Tensor:
        n_train = self.noise_scheduler.config.num_train_timesteps
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, n_train, (x0.shape[0],), generator=generator, device=x0.device)
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        eps = unet(x_t, t, class_labels=labels).sample
        return F.mse_loss(eps.float(), noise.float())

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        drop = torch.rand(labels.shape, device=labels.device) < self.hparams.cfg_dropout
        labels = torch.where(drop, torch.full_like(labels, self.hparams.null_class), labels)
        loss = self.diffusion_loss(self.unet, x0, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.unet)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        # Fixed noise and timesteps per batch so that validation curves are comparable.
        gen = torch.Generator(device=batch[0].device).manual_seed(1234 + batch_idx)
        x0, labels = batch
        self.log("val/loss", self.diffusion_loss(self.unet, x0, labels, gen), prog_bar=True)
        self.log("val/loss_ema", self.diffusion_loss(self.ema.module, x0, labels, gen))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(
            self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(self.hparams.warmup_steps, int(total) if math.isfinite(total) else 10**6)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def export_meta(self) -> dict[str, Any]:
        return {
            "kind": "digits_teacher",
            "unet_config": self.unet_config,
            "schedule_config": self.schedule_config,
            "prediction_type": "epsilon",
            "null_class": self.hparams.null_class,
            "data": "sklearn.datasets.load_digits, x/8-1 in [-1,1], 1x8x8",
            "training": {
                "global_step": int(self.global_step),
                "lr": self.hparams.lr,
                "cfg_dropout": self.hparams.cfg_dropout,
                "ema_decay": self.hparams.ema_decay,
                "weights": "EMA",
            },
        }

    def on_fit_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            path = save_weights_with_sidecar(
                self.ema.module.state_dict(),
                self.hparams.export_path,
                self.export_meta(),
                overwrite=self.hparams.overwrite_export,
            )
            print(f"exported EMA teacher weights to {path}")
