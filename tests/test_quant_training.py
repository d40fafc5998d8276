"""What the training module relies on: parameter groups, a DDP step, gradients reaching the tables."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from quant_helpers import (
    calibrated_class_student,
    calibrated_cond_student,
    class_batch,
    cond_batch,
    ddp_train_worker,
)

from saq_lightning.quant import QuantAttnProcessor, param_groups, preset


def test_param_groups_cover_every_trainable_parameter_exactly_once():
    _, student = calibrated_cond_student()
    groups = param_groups(student, lr=1e-4, weight_step_lr=1e-6, act_lr=5e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in student.parameters() if p.requires_grad}
    by_name = {g["name"]: g for g in groups}
    assert by_name["weight_steps"]["lr"] == 1e-6 and by_name["act_tables"]["lr"] == 5e-4
    torch.optim.AdamW(groups)  # usable as is


def test_lora_learning_rate_is_proportional_to_the_layers_mean_weight_step():
    _, student = calibrated_cond_student()
    groups = [g for g in param_groups(student, lr=1e-4) if g["name"].startswith("lora/")]
    layers = dict(student.quant_layers())
    steps = torch.tensor([layers[g["name"][len("lora/unet."):]].w_quant.effective()[0].mean().item() for g in groups])
    lrs = torch.tensor([g["lr"] for g in groups])
    torch.testing.assert_close(lrs / steps, (lrs / steps)[:1].expand(len(groups)), rtol=1e-5, atol=0)
    assert lrs.mean().item() == pytest.approx(1e-4, rel=1e-5)  # lr is the rate of the mean layer
    const = param_groups(student, lr=1e-4, lora_lr_mode="constant")
    assert [g["lr"] for g in const if g["name"] == "lora"] == [1e-4]


def test_one_training_step_moves_lora_and_both_kinds_of_step_sizes():
    teacher, student = calibrated_cond_student()
    b = cond_batch()
    with torch.no_grad():
        target = teacher(**b).sample
    opt = torch.optim.Adam(param_groups(student, lr=1e-3, weight_step_lr=1e-3, act_lr=1e-3))
    before = {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}
    loss = (student(**b).sample - target).square().mean()
    loss.backward()
    opt.step()
    moved = {n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n, p in student.named_parameters()
             if p.requires_grad and not torch.equal(p, before[n])}
    assert {"lora.B", "w_quant.step", "a_quant.step", "a_quant.zero_point"} <= moved
    assert all(not p.requires_grad for p in teacher.parameters())


def test_attention_matmul_quantization_is_off_by_default_and_trainable_when_on():
    _, plain = calibrated_class_student("w4a8")
    assert not any(isinstance(m, QuantAttnProcessor) for m in plain.modules())
    _, student = calibrated_class_student(preset("w4a8", quantize_attention_matmuls=True))
    procs = [m for m in student.modules() if isinstance(m, QuantAttnProcessor)]
    assert len(procs) == 4  # every diffusers Attention of the tiny UNet2DModel (down, mid, 2 up)
    b = class_batch()
    with torch.no_grad():
        assert not torch.equal(student(**b).sample, plain(**b).sample)
    student(**b).sample.square().mean().backward()
    assert all(q.step.grad is not None and q.step.grad.abs().sum() > 0 for m in procs for q in m.quantizers.values())


def test_two_process_cpu_ddp_step_raises_no_unused_parameter_error(tmp_path):
    result = tmp_path / "result.txt"
    # fork: the ranks inherit the already imported torch/diffusers (spawn would re-import: ~10 s)
    mp.start_processes(ddp_train_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2,
                       join=True, start_method="fork")
    assert result.read_text() == "True True"  # ranks agree, and training moved the LoRA weights
