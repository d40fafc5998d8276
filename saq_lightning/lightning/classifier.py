"""Training of the digits classifier that defines the digits FD (see metrics/digits_classifier.py)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from saq_lightning.metrics.digits_classifier import DigitsClassifier
from saq_lightning.models.digits import check_export_target, save_weights_with_sidecar


def augment(x: Tensor, noise_std: float, max_shift: int) -> Tensor:
    """Random integer shifts and Gaussian pixel noise: generated digits are slightly off-grid."""
    if max_shift > 0:
        dx, dy = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return (x + noise_std * torch.randn_like(x)).clamp(-1.5, 1.5)


class DigitsClassifierModule(L.LightningModule):
    def __init__(
        self,
        width: int = 32,
        feature_dim: int = 64,
        lr: float = 3e-3,
        noise_std: float = 0.1,
        max_shift: int = 1,
        export_path: str | None = None,
        overwrite_export: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.classifier = DigitsClassifier(width=width, feature_dim=feature_dim)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.export_path and not self.hparams.overwrite_export:
            check_export_target(self.hparams.export_path)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.classifier(augment(x, self.hparams.noise_std, self.hparams.max_shift))
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self.classifier(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.classifier.parameters(), lr=self.hparams.lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=int(self.trainer.estimated_stepping_batches)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            val_acc = self.trainer.callback_metrics.get("val/acc")
            meta = {
                "kind": "digits_classifier",
                "classifier_config": self.classifier.config,
                "data": "sklearn.datasets.load_digits, x/8-1 in [-1,1], 1x8x8",
                "val_acc": None if val_acc is None else float(val_acc),
                "epochs": int(self.current_epoch),
            }
            path = save_weights_with_sidecar(
                self.classifier.state_dict(), self.hparams.export_path, meta,
                overwrite=self.hparams.overwrite_export,
            )
            print(f"exported digits classifier to {path}")
