"""Records from a real sampler's trajectory survive the shards and keep the eps_eff contract."""

from __future__ import annotations

from itertools import pairwise

import torch

from saq_lightning.data.manifest import load_manifest
from saq_lightning.data.records import decode_sample
from saq_lightning.data.shard_reader import read_shard_samples
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.trajectory_records import trajectory_records
from saq_lightning.sampling import DiscreteSchedule, make_solver, sample, time_grid


def test_first_order_step_with_stored_eps_eff_lands_on_the_next_stored_point(tmp_path):
    schedule = DiscreteSchedule.from_config("linear", 1e-4, 2e-2, 1000)
    solver = make_solver("dpm2", schedule)
    grid = time_grid(schedule, 4)

    def model(x, t, cond):  # a smooth stand-in for a teacher network
        return 0.5 * torch.tanh(x) + 0.1 * t.view(-1, *[1] * (x.ndim - 1))

    def rollout(indices):
        x_T = torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(i))
                           for i in indices])
        out = sample(model, x_T, grid, solver, return_trajectory=True)
        return trajectory_records(out.trajectory, indices, phase=0, cond=torch.tensor(indices))

    write_trajectory_shards(tmp_path, rollout, num_trajectories=2, trajectories_per_shard=2,
                            meta={"model_id": "tanh"}, progress=False)
    manifest = load_manifest(tmp_path)
    info = manifest.shards[0]
    points = [decode_sample(s, manifest.fields) for s in read_shard_samples(tmp_path / info.name,
                                                                           info)]
    assert [(p["traj"], p["step"], p["order"], p["cond"]) for p in points[:4]] == [
        (0, i, 2, 0) for i in range(4)]
    for here, nxt in pairwise(points[:4]):  # trajectory 0, consecutive steps
        s = torch.tensor(here["s"], dtype=torch.float64)
        t = torch.tensor(here["t"], dtype=torch.float64)
        h = schedule.lambda_(t) - schedule.lambda_(s)
        x_t = (schedule.alpha(t) / schedule.alpha(s)) * here["x_s"].double() \
            - schedule.sigma(t) * torch.expm1(h) * here["eps_eff"].double()
        assert here["t"] == nxt["s"]
        torch.testing.assert_close(x_t.float(), nxt["x_s"], atol=1e-5, rtol=1e-5)
