"""Timestep-aware activation quantizer: bucket map, per-sample selection, calibration per bucket."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_unet2d_condition
from quant_helpers import GRID_STEPS, calibrated_cond_student, cond_batch, leading_grid

from saq_lightning.quant import (
    TimestepActQuantizer,
    TimestepContext,
    bucket_index,
    calibrate,
    quantize_model,
)


@pytest.mark.parametrize("steps", GRID_STEPS)
def test_a_100_bucket_table_serves_every_leading_ddim_grid(steps):
    t = leading_grid(steps)
    idx = bucket_index(t, n_buckets=100, num_train_timesteps=1000)
    assert torch.equal(idx, t // 10)  # 50/20/10-step grids land on a subset of the 100-step buckets
    assert idx.unique().numel() == steps  # and never share a bucket within one grid
    assert torch.equal(bucket_index(t + 1, 100, 1000), t // 10)  # steps_offset=1 grids too


def test_float_timesteps_map_by_floor_and_clamp():
    t = torch.tensor([0.0, 9.99, 10.0, 504.7, 998.6, 999.0, 1200.0, -3.0])
    assert bucket_index(t, 100, 1000).tolist() == [0, 0, 1, 50, 99, 99, 99, 0]


def test_scalar_timestep_is_broadcast_to_the_batch():
    assert bucket_index(500, 100, 1000, batch_size=3).tolist() == [50, 50, 50]
    with pytest.raises(ValueError, match="2 timesteps for a batch of 3"):
        bucket_index(torch.tensor([1, 2]), 100, 1000, batch_size=3)


def _table_quantizer(n_buckets: int = 100) -> tuple[TimestepActQuantizer, TimestepContext]:
    ctx = TimestepContext()
    q = TimestepActQuantizer(n_buckets, 8, ctx)
    q._set_params(torch.arange(1, n_buckets + 1) * 0.01, torch.arange(n_buckets) % 200)
    return q, ctx


@pytest.mark.parametrize("steps", GRID_STEPS)
def test_each_sample_gets_the_pair_of_its_own_bucket(steps):
    q, ctx = _table_quantizer()
    t = leading_grid(steps)
    x = torch.randn(steps, 3, 4, 4)
    with ctx.active(bucket_index(t, 100, 1000)):
        s, z, _ = q.params_for(x)
    assert s.shape == (steps, 1, 1, 1)
    torch.testing.assert_close(s.flatten(), (t // 10 + 1) * 0.01, rtol=0, atol=1e-7)
    assert torch.equal(z.flatten(), (t // 10).float())


def test_table_is_one_parameter_and_every_bucket_gets_a_gradient_tensor():
    q, ctx = _table_quantizer()
    assert [n for n, _ in q.named_parameters()] == ["step", "zero_point"]
    assert q.step.shape == (100,)
    with ctx.active(torch.tensor([3, 3, 70])):
        s, z, _ = q.params_for(torch.randn(3, 5))
    (s.sum() + z.sum()).backward()
    assert q.step.grad.shape == (100,)
    assert torch.count_nonzero(q.step.grad).item() == 2  # only buckets 3 and 70 moved


def test_quantizer_outside_a_timestep_call_raises():
    q, _ = _table_quantizer()
    with pytest.raises(RuntimeError, match="outside a timestep context"):
        q.params_for(torch.randn(2, 3))


def test_student_selects_buckets_per_sample_for_the_call_only():
    _, student = calibrated_cond_student()
    layer = dict(student.quant_layers())["conv_in"]
    seen = []
    layer.register_forward_pre_hook(lambda m, args: seen.append(m.a_quant.params_for(args[0])[0].flatten()))
    b = cond_batch(b=4)
    b["timestep"] = torch.tensor([0, 330, 660, 990])
    with torch.no_grad():
        student(**b)
    s_table = layer.a_quant.effective()[0]
    torch.testing.assert_close(seen[0], s_table[[0, 33, 66, 99]], rtol=0, atol=0)
    assert student.context.bucket is None  # nothing left behind after the call


def test_context_is_cleared_when_the_call_raises():
    _, student = calibrated_cond_student()
    b = cond_batch(b=2)
    b["encoder_hidden_states"] = torch.randn(2, 3, 7)  # wrong context width: the UNet raises
    with pytest.raises(RuntimeError):
        student(**b)
    assert student.context.bucket is None


def test_mixed_timestep_batch_equals_separate_calls():
    _, student = calibrated_cond_student()
    b = cond_batch(b=2)
    b["timestep"] = torch.tensor([20, 870])
    with torch.no_grad():
        both = student(**b).sample
        one = [student(b["sample"][i : i + 1], b["timestep"][i : i + 1], b["encoder_hidden_states"][i : i + 1]).sample
               for i in range(2)]
    torch.testing.assert_close(both, torch.cat(one), rtol=1e-5, atol=1e-5)


def test_calibration_fills_each_bucket_from_its_own_data_and_the_rest_from_the_nearest():
    student, _ = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4")
    b = cond_batch(b=2)
    b["timestep"] = torch.tensor([5, 505])  # buckets 0 and 50
    b["sample"][0] *= 10.0  # bucket 0 sees 10x larger inputs at conv_in
    info = calibrate(student, b, act_method="minmax", weight_method="minmax")
    assert info["buckets"] == [0, 50]
    q = dict(student.quant_layers())["conv_in"].a_quant
    s = q.effective()[0]
    x = b["sample"]
    torch.testing.assert_close(s[0], (x[0].max() - x[0].min()) / 255, rtol=1e-5, atol=0)
    torch.testing.assert_close(s[50], (x[1].max() - x[1].min()) / 255, rtol=1e-5, atol=0)
    assert torch.equal(s[:26], s[0].expand(26))  # buckets 0..25 are nearer to 0
    assert torch.equal(s[26:], s[50].expand(74))  # 26..99 nearer to 50 (25 ties to the lower one)
    assert q.calibrated.nonzero().flatten().tolist() == [0, 50]


def test_timestep_context_lets_code_call_submodules_directly():
    _, student = calibrated_cond_student()
    conv = student.unet.conv_in
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="outside a timestep context"):
        conv(x)
    with torch.no_grad(), student.timestep_context(torch.tensor([0, 990])) as idx:
        y = conv(x)
    assert idx.tolist() == [0, 99] and y.shape == (2, 16, 8, 8)
    assert student.context.bucket is None
