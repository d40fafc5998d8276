"""A validation signal: the alignment loss on held-out teacher trajectory points.

``generate`` writes ``generation.validation_trajectories_per_phase`` held-out trajectories per
phase into ``<shards>/val`` (other initial noise: another seed), and the data module serves them
as the validation set. Every ``trainer.val_check_interval`` steps the student's MOTA loss on them
is logged: ``val/alignment_loss`` (also the TensorBoard ``hp_metric``, the run's figure in the
HPARAMS tab), ``val/alignment_loss_order{k}`` per teacher order and ``val/alignment_loss_phase{p}``
per mixstep phase. The points never enter training, so a falling curve is real alignment, not
memorisation of the training points. The loss is ``SAQLightningModule.validation_step``'s.
"""

#: the held-out trajectories' noise seed is the training seed plus this (never the same noises)
VALIDATION_SEED_OFFSET = 1_000_003
