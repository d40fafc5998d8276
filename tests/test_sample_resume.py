"""Sampling runs: per-sample determinism, resuming an interrupted run, refusing a foreign run,
unconditional layout, and two gloo ranks producing the single-process result."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_tiny_unet2d

from saq_lightning.metrics import sampling_run
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.metrics.sampling_run import RunMismatchError, make_plan, run_sampling
from saq_lightning.models import DiffusionModel, ModelSpec, build_model

SETTING = SamplerSetting("ddim", steps=3, guidance_scale=2.0)
SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


@pytest.fixture(scope="module")
def digits():
    return build_model(ModelSpec(kind="digits"))


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """30 samples in chunks of 10, uninterrupted."""
    out = tmp_path_factory.mktemp("reference")
    run_sampling(digits, out, make_plan(digits, 30, SETTING, seed=3, batch_size=10), grid_size=0)
    return np.load(out / "samples.npz")["arr_0"]


def test_sample_i_depends_only_on_the_seed_and_i_not_on_the_batch_size(digits, reference, tmp_path):
    run_sampling(digits, tmp_path, make_plan(digits, 30, SETTING, seed=3, batch_size=30), grid_size=0)
    together = np.load(tmp_path / "samples.npz")["arr_0"]
    # batched float32 arithmetic may move a value across a rounding boundary: one level at most
    assert np.abs(together.astype(int) - reference.astype(int)).max() <= 1


def test_an_interrupted_run_resumes_sampling_only_the_missing_chunks(digits, reference, tmp_path, monkeypatch):
    calls = []
    real = sampling_run.generate_images

    def failing_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated preemption")
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_run, "generate_images", failing_on_third)
    plan = make_plan(digits, 30, SETTING, seed=3, batch_size=10)
    with pytest.raises(KeyboardInterrupt):
        run_sampling(digits, tmp_path, plan, grid_size=0)
    assert sorted(p.name for p in (tmp_path / "parts").glob("chunk_*.npz")) == ["chunk_000000.npz", "chunk_000001.npz"]
    calls.clear()
    run_sampling(digits, tmp_path, plan, grid_size=0)
    assert len(calls) == 1  # only chunk 2 was sampled again
    np.testing.assert_array_equal(np.load(tmp_path / "samples.npz")["arr_0"], reference)


def test_a_finished_run_is_not_sampled_again(digits, tmp_path, monkeypatch):
    plan = make_plan(digits, 10, SETTING, seed=3, batch_size=10)
    run_sampling(digits, tmp_path, plan, grid_size=0)
    monkeypatch.setattr(sampling_run, "generate_images", lambda *a, **k: pytest.fail("sampled again"))
    assert run_sampling(digits, tmp_path, plan, grid_size=0) == tmp_path / "samples.npz"


def test_a_run_with_other_settings_in_the_same_folder_is_refused_unless_overwrite(digits, tmp_path):
    run_sampling(digits, tmp_path, make_plan(digits, 10, SETTING, seed=3, batch_size=10), grid_size=0)
    other = make_plan(digits, 10, replace(SETTING, steps=2), seed=3, batch_size=10)
    with pytest.raises(RunMismatchError, match="already holds samples of another run"):
        run_sampling(digits, tmp_path, other, grid_size=0)
    run_sampling(digits, tmp_path, other, grid_size=0, overwrite=True)


def test_chunks_of_another_run_are_refused(digits, tmp_path):
    plan = make_plan(digits, 10, SETTING, seed=3, batch_size=10)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "run.json").write_text('{"format": "something else"}')
    with pytest.raises(RunMismatchError, match="holds chunks of a run with other settings"):
        run_sampling(digits, tmp_path, plan, grid_size=0)


def test_unconditional_samples_have_no_label_array(tmp_path):
    model = DiffusionModel(make_tiny_unet2d(num_class_embeds=None).eval(), SCHEDULE, (1, 8, 8))
    run_sampling(model, tmp_path, make_plan(model, 4, replace(SETTING, guidance_scale=1.0), batch_size=4),
                 grid_size=0)
    with np.load(tmp_path / "samples.npz") as data:
        assert data.files == ["arr_0"] and data["arr_0"].shape == (4, 8, 8, 1)


def test_guidance_on_an_unconditional_model_is_refused():
    model = DiffusionModel(make_tiny_unet2d(num_class_embeds=None).eval(), SCHEDULE, (1, 8, 8))
    with pytest.raises(ValueError, match="classifier-free guidance needs a conditional model"):
        make_plan(model, 4, SETTING)


def test_prompts_for_a_class_model_are_refused(digits):
    with pytest.raises(ValueError, match="not text-conditioned; prompts are not used"):
        make_plan(digits, 4, SETTING, prompts=["a dog"])


def _rank_main(rank: int, model: DiffusionModel, out: str, store: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        run_sampling(model, out, make_plan(model, 30, SETTING, seed=3, batch_size=10), grid_size=0)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_produce_the_single_process_samples(digits, reference, tmp_path):
    # chunks 0 and 2 on rank 0, chunk 1 on rank 1; rank 0 merges
    mp.start_processes(_rank_main, args=(digits, str(tmp_path / "out"), str(tmp_path / "store")), nprocs=2,
                       start_method="fork")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "samples.npz")["arr_0"], reference)


def test_a_foreign_run_stops_every_rank_instead_of_hanging_at_a_barrier(digits, tmp_path):
    (tmp_path / "out" / "parts").mkdir(parents=True)
    (tmp_path / "out" / "parts" / "run.json").write_text('{"format": "something else"}')
    with pytest.raises(mp.ProcessRaisedException, match="holds chunks of a run with other settings"):
        mp.start_processes(_rank_main, args=(digits, str(tmp_path / "out"), str(tmp_path / "store")), nprocs=2,
                           start_method="fork")
