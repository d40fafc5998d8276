"""``TrajectoryDeviationCallback`` in a Lightning run: scalars and the plot reach TensorBoard."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import make_tiny_unet2d
from lightning.pytorch.loggers import TensorBoardLogger

from saq_lightning.callbacks.trajectory_deviation import TrajectoryDeviationCallback, models_of
from saq_lightning.models import ClassLabelConditioner, DiffusionModel
from saq_lightning.quant import calibrate, quantize_model

SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


def tiny_teacher() -> DiffusionModel:
    return DiffusionModel(make_tiny_unet2d().eval(), SCHEDULE, (1, 8, 8), conditioner=ClassLabelConditioner(11, 10),
                          sampling_defaults={"guidance_scale": 1.5})


class Module(pl.LightningModule):
    """The attributes the callback reads (as SAQLightningModule has them) and a trivial step."""

    def __init__(self) -> None:
        super().__init__()
        self.teacher = tiny_teacher()
        self.student, _ = quantize_model(self.teacher.unet, "w4a4", warn=False)
        calibrate(self.student, {"sample": torch.randn(4, 1, 8, 8), "timestep": torch.tensor([0, 300, 600, 999]),
                                 "class_labels": torch.arange(4)}, act_method="minmax", weight_method="minmax")
        self.w = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0].mean()) ** 2

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD([self.w], lr=0.1)


def test_scalars_and_plot_are_logged_every_n_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path), name="run", version=0)
    callback = TrajectoryDeviationCallback(every_n_train_steps=2, num_samples=2, steps=2)
    trainer = pl.Trainer(max_steps=3, logger=logger, callbacks=[callback], accelerator="cpu",
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Module())
    events = EventAccumulator(str(tmp_path / "run" / "version_0"))
    events.Reload()
    steps = [e.step for e in events.Scalars("trajectory/order3/final_distance_same")]
    assert steps == [2, 3]  # every 2 steps, and once at the end of training
    assert all(e.value > 0 for e in events.Scalars("trajectory/order1/final_distance_aligned"))
    assert "trajectory/plot" in events.Tags()["images"]


def test_student_network_is_plugged_into_the_teacher_and_left_in_its_mode():
    module = Module()
    module.student.train()
    teacher, student = models_of(module)
    assert student.unet is module.student and student.schedule_config == teacher.schedule_config
    TrajectoryDeviationCallback(num_samples=2, steps=2, orders=(1,)).diagnose(module)
    assert module.student.training


def test_a_module_without_teacher_and_student_is_a_clear_error():
    with pytest.raises(AttributeError, match="exposes no teacher/student for TrajectoryDeviationCallback"):
        models_of(torch.nn.Linear(1, 1))
