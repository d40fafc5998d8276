"""What the model sees: continuous times of every evaluation, conditions, classifier-free guidance."""

from __future__ import annotations

import torch
from sampling_helpers import RecordingModel, gaussian_problem

from saq_lightning.sampling import (
    DiscreteSchedule,
    classifier_free_guidance,
    discrete_model,
    guided_model,
    make_solver,
    sample,
    step_with_direction,
    time_grid,
)


def test_discrete_model_passes_the_model_timestep_t_times_n_minus_one():
    sch = DiscreteSchedule.from_config("linear")
    seen = []

    def eps_fn(x, timestep, cond):
        seen.append(timestep)
        return torch.zeros_like(x)

    discrete_model(eps_fn, sch)(torch.zeros(2, 3), torch.tensor([1.0, 0.5], dtype=torch.float64), None)
    assert torch.allclose(seen[0], torch.tensor([999.0, 499.0], dtype=torch.float64))


def test_every_singlestep_evaluation_gets_its_own_continuous_time():
    sch, data, x_T = gaussian_problem(batch=2)
    model = RecordingModel(data)
    grid = time_grid(sch, 2, "logSNR")
    sample(model, x_T, grid, make_solver("dpm3", sch))
    lam = sch.lambda_(grid)
    expected = []
    for i in range(2):
        h = lam[i + 1] - lam[i]
        expected += [lam[i], lam[i] + h / 3, lam[i] + 2 * h / 3]
    got = [sch.lambda_(t) for _, t in model.calls]
    assert len(got) == 6
    for g, e in zip(got, expected):
        assert torch.allclose(g, e.expand(2), atol=1e-10)


def test_multistep_evaluates_once_per_step_at_the_grid_times():
    sch, data, x_T = gaussian_problem(batch=2)
    model = RecordingModel(data)
    grid = time_grid(sch, 5, "time_uniform")
    sample(model, x_T, grid, make_solver("dpm++3m", sch))
    assert [t[0].item() for _, t in model.calls] == grid[:-1].tolist()


def test_sampling_is_stateless_same_inputs_same_outputs():
    sch, data, x_T = gaussian_problem(batch=2)
    solver = make_solver("plms", sch)
    grid = time_grid(sch, 6, "time_uniform")
    assert torch.equal(sample(data, x_T, grid, solver), sample(data, x_T, grid, solver))


def test_condition_rows_follow_the_sub_batch():
    sch, data, x_T = gaussian_problem(batch=3)
    seen = []

    def model(x, t, cond):
        seen.append((cond["label"].tolist(), cond["shared"].shape[0]))
        return data.eps(x, t)

    cond = {"label": torch.tensor([7, 8, 9]), "shared": torch.zeros(1, 4)}
    step_with_direction(model, x_T, 0.9, 0.5, make_solver("dpm2", sch, intermediate="lambda"),
                        order=torch.tensor([1, 2, 1]), cond=cond)
    assert seen == [([7, 8, 9], 1), ([8], 1)]


def test_classifier_free_guidance_formula_in_one_call_of_twice_the_batch():
    calls = []

    def eps_fn(x, t, cond):
        calls.append(x.shape[0])
        return x * 0 + cond[:, None].to(x.dtype)

    x, t = torch.zeros(2, 3), torch.ones(2)
    out = classifier_free_guidance(eps_fn, x, t, torch.tensor([2.0, 4.0]), torch.tensor([1.0, 1.0]), 3.0)
    assert calls == [4]
    assert torch.allclose(out[:, 0], torch.tensor([1.0 + 3 * (2 - 1), 1.0 + 3 * (4 - 1)]))


def test_guidance_scale_one_is_one_plain_call():
    calls = []

    def eps_fn(x, t, cond):
        calls.append(x.shape[0])
        return x

    classifier_free_guidance(eps_fn, torch.zeros(2, 3), torch.ones(2), torch.tensor([1, 2]), torch.tensor([0, 0]), 1.0)
    assert calls == [2]


def test_guided_model_expands_a_batch_one_null_condition_on_sub_batches():
    sch, data, x_T = gaussian_problem(batch=3)

    def eps_fn(x, t, cond):
        return data.eps(x, t) + 0.1 * cond[:, None].to(x.dtype)

    guided = guided_model(eps_fn, 2.0, torch.tensor([0]))
    out = step_with_direction(guided, x_T, 0.9, 0.5, make_solver("dpm2", sch, intermediate="lambda"),
                              order=torch.tensor([2, 1, 2]),
                              cond=torch.tensor([1, 2, 3]))
    assert out.evaluations[1].x.shape[0] == 2
    # guided eps = eps + 0.1 * (0 + 2 * (c - 0)) = eps + 0.2 c
    assert torch.allclose(out.eps_s, data.eps(x_T, torch.full((3,), 0.9, dtype=torch.float64))
                          + 0.2 * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)[:, None])


def test_guided_model_accepts_a_null_condition_factory():
    def eps_fn(x, t, cond):
        return x * 0 + cond[:, None].to(x.dtype)

    guided = guided_model(eps_fn, 1.5, lambda batch: torch.zeros(batch, dtype=torch.long))
    out = guided(torch.zeros(4, 2), torch.ones(4), torch.tensor([2, 2, 2, 2]))
    assert torch.allclose(out, torch.full((4, 2), 3.0))
