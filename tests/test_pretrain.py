"""Teacher pre-training (epsilon-prediction DDPM) with real Trainer runs on a tiny UNet."""

import json

import pytest
import torch

from saq_lightning.cli import main
from saq_lightning.models.digits import load_digits_teacher

TINY = (
    '{"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32], '
    '"down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", '
    '"UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8, '
    '"num_class_embeds": 11}'
)


def fit_args(tmp_path, export, steps=6):
    return [
        "fit", "--config", "configs/digits_teacher.yaml",
        f"--model.init_args.unet_config={TINY}",
        f"--model.init_args.export_path={export}",
        f"--trainer.max_steps={steps}", "--trainer.val_check_interval=3",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.init_args.batch_size=16",
    ]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])


def test_fit_exports_ema_weights_that_load_as_a_teacher(tmp_path):
    export = tmp_path / "teacher.safetensors"
    main(fit_args(tmp_path, export))
    unet, meta = load_digits_teacher(export)
    assert meta["training"]["global_step"] == 6 and meta["training"]["weights"] == "EMA"
    out = unet(torch.randn(2, 1, 8, 8), torch.tensor([10, 900]), class_labels=torch.tensor([1, 10])).sample
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()


def test_fit_refuses_to_start_when_the_export_would_overwrite(tmp_path, capsys):
    export = tmp_path / "teacher.safetensors"
    export.write_bytes(b"precious")
    with pytest.raises(SystemExit) as stop:  # a user error: one message, exit code 2
        main(fit_args(tmp_path, export))
    assert stop.value.code == 2 and "overwrite" in capsys.readouterr().err
    with pytest.raises(FileExistsError, match="overwrite"):
        main(fit_args(tmp_path, export) + ["--traceback"])
    assert export.read_bytes() == b"precious"
    assert not list(tmp_path.glob("**/*.ckpt"))  # failed before any training step


def test_fit_logs_train_and_val_loss_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(fit_args(tmp_path, tmp_path / "t.safetensors") + ["--trainer.log_every_n_steps=1"])
    events = list(tmp_path.glob("tb/version_0/events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/loss_ema"} <= tags
    assert all(torch.isfinite(torch.tensor(e.value)) for e in acc.Scalars("train/loss"))
    assert json.loads((tmp_path / "t.json").read_text())["kind"] == "digits_teacher"
