"""A validation signal: the alignment loss on held-out teacher trajectory points.

``generate`` writes ``generation.validation_trajectories_per_phase`` held-out trajectories per
phase into ``<shards>/val`` (other initial noise: another seed), and the data module serves them
as the validation set. Every ``trainer.val_check_interval`` steps the student's MOTA loss on them
is logged: ``val/alignment_loss`` (also the TensorBoard ``hp_metric``, the run's figure in the
HPARAMS tab), ``val/alignment_loss_order{k}`` per teacher order and ``val/alignment_loss_phase{p}``
per mixstep phase. The points never enter training, so a falling curve is real alignment, not
memorisation of the training points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from .mota import mota_terms

if TYPE_CHECKING:  # pragma: no cover
    from .module import SAQLightningModule

#: the held-out trajectories' noise seed is the training seed plus this (never the same noises)
VALIDATION_SEED_OFFSET = 1_000_003


def validation_alignment(module: SAQLightningModule, batch: dict[str, Any]) -> Tensor:
    """Log the alignment loss of a validation batch (overall, per order, per phase); return it."""
    points = module.training_points(batch)
    target = module.alignment_targets(points)
    pred = module.student_direction(points["x_s"], points["s"], points["cond"])
    w = module.loss_settings
    per_sample = mota_terms(pred, target, w.w_mse, w.w_cos).loss.detach().float()
    loss = per_sample.mean()
    bs = int(per_sample.shape[0])
    module.log("val/alignment_loss", loss, batch_size=bs)
    module.log("hp_metric", loss, batch_size=bs)
    for name, groups in (("order", points["order"]), ("phase", points["phase"])):
        for g in groups.unique().tolist():
            picked = per_sample[groups == g]
            # weighted by the group's own count, so the epoch value is the mean over its points
            module.log(f"val/alignment_loss_{name}{int(g)}", picked.mean(), batch_size=int(picked.numel()))
    return loss
