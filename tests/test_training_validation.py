"""A validation signal: ``generate`` writes held-out trajectories to ``<shards>/val`` and ``fit``
logs ``val/alignment_loss`` (per order and phase, and as ``hp_metric``) every
``val_check_interval`` steps. Read back from the run's TensorBoard event file."""

from __future__ import annotations

import pytest
from cli_run_helpers import tiny_fit_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.cli import main
from saq_lightning.data.manifest import load_manifest

GENERATION = {"trajectories_per_phase": 8, "trajectories_per_shard": 2,
              "validation_trajectories_per_phase": 2}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("val")
    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards", generation=GENERATION)
    config = tiny_fit_config(root / "fit.yaml", spec, shards, root / "run", 6, generation=GENERATION)
    main(["fit", "--config", str(config), "--trainer.val_check_interval", "3",
          "--trainer.check_val_every_n_epoch", "null", "--trainer.num_sanity_val_steps", "0"])
    events = EventAccumulator(str(next((root / "run" / "tb").glob("version_*"))))
    events.Reload()
    return shards, events


def test_generate_writes_held_out_trajectories_with_other_noise(run):
    shards, _ = run
    train, val = load_manifest(shards), load_manifest(shards / "val")
    assert val.meta["split"] == "validation" and val.meta["seed"] != train.meta["seed"]
    assert val.phase_counts == {0: 2 * 10, 1: 2 * 5}  # 2 trajectories x (10 + 5) steps
    assert val.meta["phases"] == train.meta["phases"]


def test_fit_logs_the_validation_alignment_loss_per_order_and_phase(run):
    _, events = run
    tags = events.Tags()["scalars"]
    for tag in ("val/alignment_loss", "val/alignment_loss_order2", "val/alignment_loss_phase0",
                "val/alignment_loss_phase1"):
        assert tag in tags, tags
    curve = events.Scalars("val/alignment_loss")
    assert [e.step for e in curve] == [2, 5]  # after steps 3 and 6 (0-based global step - 1)
    assert all(0.0 < e.value < 10.0 for e in curve)
    hp = [e.value for e in events.Scalars("hp_metric")]
    assert hp[-1] == pytest.approx(curve[-1].value, rel=1e-6) and -1.0 not in hp


def test_digits_fd_callback_samples_the_student_with_its_trained_sampler(tmp_path):
    from test_training_helpers import PHASES, tiny_module

    from saq_lightning.callbacks.digits_fd import DigitsFDCallback

    module = tiny_module(save_tiny_teacher(tmp_path / "teacher"), guidance_scale=2.0)
    module.phases = list(PHASES)
    module.calibrate_student()
    callback = DigitsFDCallback(num_samples=20)
    setting = callback.trained_setting(module)
    assert (setting.solver, setting.steps, setting.guidance_scale) == ("dpm1", 10, 2.0)
    first, again = callback.measure(module), callback.measure(module)
    assert first["val/digits_fd"] > 0 and 0.0 <= first["val/digits_accuracy"] <= 1.0
    assert again == first  # the same noises every time: the figure moves only with the student


def test_validation_scores_the_solver_aware_students_own_k_step_direction(tmp_path):
    """A phase with ``student_order: 2`` trains the student's own DPM-Solver-2 step; the validation
    loss scores that objective, not the first-order direction at ``x_s``."""
    import torch
    from test_training_helpers import tiny_module
    from test_training_solver_aware import all_records

    from saq_lightning.alignment.mota import mota_terms
    from saq_lightning.alignment.student_step import student_step
    from saq_lightning.data import MixStepPhase, MixStepSchedule

    spec = save_tiny_teacher(tmp_path / "teacher")
    schedule = MixStepSchedule((MixStepPhase(10, 2, 2),))
    generation = {"trajectories_per_phase": 2, "trajectories_per_shard": 2}
    write_tiny_shards(spec, tmp_path / "shards", schedule, guidance_scale=2.0, generation=generation)
    module = tiny_module(spec, guidance_scale=2.0, generation=generation)
    module.phases = list(schedule.phases)
    module.calibrate_student()
    batch = all_records(tmp_path / "shards")
    module.eval()
    with torch.no_grad():
        logged = module.validation_step(batch, 0)
        points = module.training_points(batch)
        target = module.alignment_targets(points)
        own = student_step(module.flow, module.flow.predictor(module.student_model), module.phases,
                           points).eps_eff
        first = module.student_direction(points.x_s, points.s, points.cond)
    expected = mota_terms(own, target).loss.mean()
    first_order = mota_terms(first, target).loss.mean()
    torch.testing.assert_close(logged, expected, rtol=1e-6, atol=0)
    assert abs(float(first_order - expected)) > 1e-3 * float(expected)  # the two objectives differ
