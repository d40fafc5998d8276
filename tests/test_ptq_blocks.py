"""Blocks by module type and name pattern on both diffusers UNet families (tiny ones), in execution
order, with every quantized layer in exactly one block; the pipeline reconstructs a cross-attention
UNet2DConditionModel end to end (recorded with the quantized prefix)."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import make_tiny_unet2d, make_tiny_unet2d_condition
from quant_helpers import cond_batch

from saq_lightning.quant import calibrate, quantize_model, set_quant_state
from saq_lightning.quant.reconstruction import (
    BlockPatternError,
    ReconstructionSettings,
    execution_order,
    find_blocks,
    reconstruct_student,
)

POLICY = {"name": "w4a8", "weight_bits": 4, "act_bits": 8, "lora_rank": 2, "n_buckets": 10}


def _student(unet):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return quantize_model(unet.eval(), POLICY)[0]


@pytest.mark.parametrize("make", [make_tiny_unet2d, make_tiny_unet2d_condition])
def test_blocks_cover_every_quantized_layer_once(make):
    student = _student(make())
    blocks = find_blocks(student.unet, *ReconstructionSettings().block_definition())
    names = [n for b in blocks for n, _ in b.layers]
    assert sorted(names) == sorted(n for n, _ in student.quant_layers()) and len(set(names)) == len(names)
    kinds = {b.kind for b in blocks}
    assert {"ResnetBlock2D", "TimestepEmbedding", "Upsample2D"} <= kinds
    assert ("Transformer2DModel" if make is make_tiny_unet2d_condition else "Attention") in kinds


def test_blocks_run_in_execution_order_mid_block_before_up_blocks():
    student = _student(make_tiny_unet2d_condition())
    blocks = find_blocks(student.unet, *ReconstructionSettings().block_definition())
    with set_quant_state(student, weight=False, act=False):  # not calibrated: run it FP
        order = [b.name for b in execution_order(blocks, lambda: student(**cond_batch(2)))]
    mid = min(i for i, n in enumerate(order) if n.startswith("mid_block"))
    up = min(i for i, n in enumerate(order) if n.startswith("up_blocks"))
    assert order[0] == "time_embedding" and order[-1] == "conv_out" and mid < up
    # registration order would put up_blocks first
    registered = [b.name for b in blocks]
    assert min(i for i, n in enumerate(registered) if n.startswith("up_blocks")) < \
        min(i for i, n in enumerate(registered) if n.startswith("mid_block"))


def test_an_explicit_type_that_matches_nothing_is_an_error():
    student = _student(make_tiny_unet2d())
    with pytest.raises(BlockPatternError, match=r"ptq.block_types: 'ResBlock'"):
        find_blocks(student.unet, ["ResBlock"], ["conv_in"], strict=True)


def test_the_pipeline_reconstructs_a_cross_attention_unet(tmp_path):
    teacher = make_tiny_unet2d_condition().eval()
    student = _student(teacher)
    data = [cond_batch(8, seed=s) for s in range(2)]
    settings = ReconstructionSettings(objective="same_input", num_samples=16, iters=20, act_iters=5,
                                      batch_size=8, lr=1e-2, record_batch_size=8)

    def batches():
        for b in data:
            yield (lambda b=b: teacher(**b), lambda b=b: student(**b), 8)

    report = reconstruct_student(student, teacher, batches, 16, lambda: calibrate(student, data), settings,
                                 tmp_path / "state", {"test": 1}, progress=False)
    assert report.complete and len(report.blocks) == len(list((tmp_path / "state" / "blocks").glob("*.pt")))
    assert all(layer.rounding is not None and layer.rounding.is_hard for _, layer in student.quant_layers())
    before = sum(b.loss_before for b in report.blocks)
    after = sum(b.loss_after for b in report.blocks)
    assert after < before
    with torch.no_grad():
        out = student(**data[0]).sample
    assert torch.isfinite(out).all()


def test_block_timings_separate_the_iterations_from_the_one_off_evaluations(tmp_path):
    """ptq_cost extrapolates only ``iterate_seconds`` to the full iteration count: it must be the
    loops alone, a part of ``optimize_seconds`` (which also holds the three full evaluations)."""
    teacher = make_tiny_unet2d_condition().eval()
    student = _student(teacher)
    data = [cond_batch(8, seed=0)]
    settings = ReconstructionSettings(objective="same_input", num_samples=8, iters=4, act_iters=2,
                                      batch_size=4, record_batch_size=8)

    def batches():
        yield (lambda: teacher(**data[0]), lambda: student(**data[0]), 8)

    report = reconstruct_student(student, teacher, batches, 8, lambda: calibrate(student, data), settings,
                                 tmp_path / "state", {"test": 1}, progress=False, max_blocks=3)
    assert len(report.blocks) == 3
    for b in report.blocks:
        assert 0.0 < b.iterate_seconds < b.optimize_seconds, b
