"""``guidance_alignment: branches``: the conditional and the unconditional outputs are aligned
separately, each to its own (unguided) teacher step at the guided trajectory's points, so that the
student is aligned at every CFG scale; ``combined`` pins only the one combination it trains at."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import (
    LossRecorder,
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.data import MixStepPhase, MixStepSchedule
from saq_lightning.data.manifest import load_manifest
from saq_lightning.data.records import collate_records, decode_sample
from saq_lightning.data.shard_reader import read_shard_samples
from saq_lightning.sampling import step_with_direction

SCHEDULE = MixStepSchedule((MixStepPhase(10, 1, 2), MixStepPhase(5, 1, 2)), batches_per_phase=2)
GENERATION = {"trajectories_per_phase": 2, "trajectories_per_shard": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("branches")
    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards", SCHEDULE, guidance_scale=2.0, generation=GENERATION)
    return root, spec, shards


def records(folder):
    manifest = load_manifest(folder)
    raw = [r for s in manifest.shards for r in read_shard_samples(folder / s.name, s)]
    return collate_records([decode_sample(r, manifest.fields) for r in raw])


def test_each_branch_is_aligned_to_its_own_teacher_step_at_the_guided_points(setup):
    _, spec, shards = setup
    module = tiny_module(spec, guidance_scale=2.0, guidance_alignment="branches", generation=GENERATION)
    module.phases = list(SCHEDULE.phases)
    batch = records(shards)
    points = module.training_points(batch)
    both = module.branch_points(points)
    b = points.x_s.shape[0]
    null = module.teacher.null_cond(b)
    assert torch.equal(both.x_s, torch.cat([points.x_s, points.x_s]))
    assert torch.equal(both.cond, torch.cat([points.cond, null]))
    targets = module.alignment_targets(both, module.branch_flow)
    unguided = module.teacher.noise_predictor(1.0, module.flow.schedule)
    for rows, cond in ((slice(0, b), points.cond), (slice(b, 2 * b), null)):
        expected = step_with_direction(unguided, points.x_s, points.s, points.t, module.flow.solver,
                                       order=points.order, cond=cond).eps_eff
        torch.testing.assert_close(targets[rows], expected, rtol=0, atol=1e-5)
    # neither branch is the guided target the shards hold (that is the combined mode's)
    for rows in (slice(0, b), slice(b, 2 * b)):
        assert float((targets[rows] - batch["eps_eff"]).abs().max()) > 1e-2


def test_the_branch_loss_is_the_mean_of_the_conditional_and_unconditional_losses(setup):
    from saq_lightning.alignment.mota import mota_terms

    _, spec, shards = setup
    module = tiny_module(spec, guidance_scale=2.0, guidance_alignment="branches", generation=GENERATION)
    module.phases = list(SCHEDULE.phases)
    module.calibrate_student()
    points = module.training_points(records(shards))
    with torch.no_grad():
        terms, rows, _ = module.alignment_terms(points)
        b = points.x_s.shape[0]
        student = module.student_model.noise_predictor(1.0, module.flow.schedule)
        both = module.branch_points(points)
        target = module.alignment_targets(both, module.branch_flow)
        for part, cond in ((slice(0, b), points.cond), (slice(b, 2 * b), both.cond[b:])):
            pred = student(points.x_s, points.s, cond)
            torch.testing.assert_close(terms.loss[part], mota_terms(pred, target[part]).loss,
                                       rtol=1e-5, atol=1e-6)
    assert rows.x_s.shape[0] == 2 * b


def test_a_branches_run_trains_with_online_targets(setup):
    root, spec, shards = setup
    module = tiny_module(spec, guidance_scale=2.0, guidance_alignment="branches", generation=GENERATION)
    recorder = LossRecorder()
    tiny_trainer(root / "fit", 4, [recorder], SCHEDULE).fit(module, datamodule=tiny_datamodule(shards))
    assert len(recorder.losses) == 4 and all(0.0 < v < 10.0 for v in recorder.losses)


def test_branches_refuse_shard_targets(setup):
    _, spec, _ = setup
    with pytest.raises(ValueError, match="guidance_alignment='branches'"):
        tiny_module(spec, guidance_scale=2.0, guidance_alignment="branches", targets="shard")
    with pytest.raises(ValueError, match="guidance_alignment must be"):
        tiny_module(spec, guidance_alignment="both")


def test_a_combined_student_trained_off_its_models_sampling_scale_gets_one_line(setup):
    from dataclasses import replace

    _, spec, _ = setup
    spec = replace(spec, sampling={"guidance_scale": 1.5})
    assert "aligned at CFG 2 only" in tiny_module(spec, guidance_scale=2.0).guidance_line()
    assert tiny_module(spec, guidance_scale=1.5).guidance_line() is None
    assert tiny_module(spec, guidance_scale=2.0, guidance_alignment="branches").guidance_line() is None


def test_fit_prints_the_per_element_balance_of_a_summed_loss_and_an_off_scale_cfg_once(setup, caplog):
    """The author's summed loss and a combined student trained off its model's sampling scale are
    not errors, but each changes what the run means: ``fit`` says so in one line each."""
    import logging
    from dataclasses import replace

    root, spec, shards = setup
    spec = replace(spec, sampling={"guidance_scale": 1.5})
    module = tiny_module(spec, guidance_scale=2.0, generation=GENERATION,
                         loss={"w_mse": 1.0, "w_cos": 100.0, "mse_reduction": "sum", "cos_reduction": "sum"})
    with caplog.at_level(logging.INFO):
        tiny_trainer(root / "notes", 1, [], SCHEDULE).fit(module, datamodule=tiny_datamodule(shards))
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("note:")]
    assert len(notes) == 2, notes
    assert "cosine weighs 1.562 against a per-element mean MSE" in notes[0]  # 100 / 64 (1x8x8)
    assert "aligned at CFG 2 only" in notes[1]
