"""Resuming with a larger ``max_steps`` or another ``optimizer.lr`` trains on, with the schedule
rebuilt for the new length; any other change of the model settings is refused, also for
``--ckpt_path <file>`` on the command line (whose hyperparameters must not replace the config's).

LR tolerances: relative 1e-6 (the rates are products of a few float64 factors).
"""

from __future__ import annotations

import pytest
import torch
from cli_run_helpers import tiny_fit_config
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_training_helpers import (
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.alignment.checkpointing import CheckpointMismatchError
from saq_lightning.alignment.optim import group_kind
from saq_lightning.cli import main
from saq_lightning.lightning.resume import ResumeSettingsError

LR = 1e-2
LINEAR = {"lr": LR, "act_lr": 1e-2, "weight_step_lr": 1e-4, "decay": "linear", "warmup_steps": 0,
          "final_lr_factor": 0.0, "lora_lr_mode": "constant"}


class LoraRates(Callback):
    """The LoRA learning rate each optimizer step uses, by global step."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        groups = [g for g in trainer.optimizers[0].param_groups if group_kind(str(g["name"])) == "lora"]
        self.rates[trainer.global_step] = float(groups[0]["lr"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extend")
    spec = save_tiny_teacher(root / "teacher")
    return root, spec, write_tiny_shards(spec, root / "shards")


def fit(run, spec, shards, max_steps, ckpt_path=None, **overrides):
    module = tiny_module(spec, optimizer=overrides.pop("optimizer", LINEAR), **overrides)
    rates = LoraRates()
    checkpoint = ModelCheckpoint(dirpath=run / "ckpt", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = tiny_trainer(run, max_steps, [rates, checkpoint])
    trainer.fit(module, datamodule=tiny_datamodule(shards, batches_per_epoch=7), ckpt_path=ckpt_path)
    return module, rates.rates


def lora_weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.student.named_parameters() if "lora" in k}


def test_resume_with_larger_max_steps_trains_on_at_the_rebuilt_schedule(setup, caplog):
    root, spec, shards = setup
    run = root / "longer"
    first, first_rates = fit(run, spec, shards, 4)
    # 4-step linear decay to 0: the last step ran at lr * 1/4
    assert first_rates[3] == pytest.approx(LR * (1 - 3 / 4), rel=1e-6)
    before = lora_weights(first)
    resumed, rates = fit(run, spec, shards, 8, ckpt_path=str(run / "ckpt" / "last.ckpt"))
    # the schedule ends at step 8 now: step 4 runs at lr * (1 - 4/8), step 7 at lr * 1/8
    assert sorted(rates) == [4, 5, 6, 7]
    assert rates[4] == pytest.approx(LR * 0.5, rel=1e-6)
    assert rates[7] == pytest.approx(LR * (1 - 7 / 8), rel=1e-6)
    after = lora_weights(resumed)
    moved = max(float((after[k] - before[k]).abs().max()) for k in before)
    assert moved > 1e-6  # steps 4-7 trained (before the fix they ran at lr 0 and changed nothing)
    assert "LR schedule rebuilt to end at step 8 (was 4)" in caplog.text


def test_resume_with_another_lr_uses_it(setup, caplog):
    root, spec, shards = setup
    run = root / "lr"
    fit(run, spec, shards, 4)
    _, rates = fit(run, spec, shards, 8, ckpt_path=str(run / "ckpt" / "last.ckpt"),
                   optimizer={**LINEAR, "lr": 2 * LR})
    assert rates[4] == pytest.approx(2 * LR * 0.5, rel=1e-6)
    assert "optimizer.lr 0.02 (was 0.01)" in caplog.text


def test_resume_with_other_loss_weights_is_refused_field_by_field(setup):
    root, spec, shards = setup
    run = root / "loss"
    fit(run, spec, shards, 2)
    with pytest.raises(ResumeSettingsError, match=r"model\.loss\.w_cos: expected 1\.0, found 0\.5"):
        fit(run, spec, shards, 4, ckpt_path=str(run / "ckpt" / "last.ckpt"),
            loss={"w_mse": 1.0, "w_cos": 0.5})


def test_cli_ckpt_path_file_of_another_policy_is_refused(setup, tmp_path):
    _, spec, shards = setup
    w8a8 = {"preset": "w8a8", "lora_rank": 2, "n_buckets": 10}
    first = tiny_fit_config(tmp_path / "w8a8.yaml", spec, shards, tmp_path / "w8a8", 1, policy=w8a8)
    main(["fit", "--config", str(first)])
    ckpt = tmp_path / "w8a8" / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    w4a4 = tiny_fit_config(tmp_path / "w4a4.yaml", spec, shards, tmp_path / "w4a4", 2)
    with pytest.raises(CheckpointMismatchError, match=r"policy\.weight_bits: expected 8, found 4"):
        main(["fit", "--config", str(w4a4), "--ckpt_path", str(ckpt), "--traceback"])
