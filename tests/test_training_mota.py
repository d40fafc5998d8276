"""The MOTA loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from saq_lightning.lightning.mota import group_means, mota_loss, mota_terms

# Two samples of 2 elements (shape [2, 1, 2]):
#   sample 0: pred (3, 4), target (3, 4): mse 0, cos 1
#   sample 1: pred (1, 0), target (0, 2): mse ((1-0)^2 + (0-2)^2)/2 = 2.5, cos 0
PRED = torch.tensor([[[3.0, 4.0]], [[1.0, 0.0]]])
TARGET = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]]])


def test_per_sample_mse_is_the_mean_over_elements_and_cosine_is_over_the_flattened_sample():
    terms = mota_terms(PRED, TARGET, w_mse=1.0, w_cos=1.0)
    torch.testing.assert_close(terms.mse, torch.tensor([0.0, 2.5]))
    torch.testing.assert_close(terms.cos, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(terms.loss, torch.tensor([0.0, 2.5 + 1.0]))


def test_total_is_the_weighted_sum_of_the_batch_mean_mse_and_one_minus_cosine():
    total, mse, cos = mota_loss(PRED, TARGET, w_mse=2.0, w_cos=0.5)
    assert mse.item() == pytest.approx(1.25)           # (0 + 2.5) / 2
    assert cos.item() == pytest.approx(0.5)            # (0 + 1) / 2
    assert total.item() == pytest.approx(2.0 * 1.25 + 0.5 * 0.5)


def test_opposite_directions_cost_two_in_the_cosine_part_whatever_their_scale():
    _, _, cos = mota_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[-5.0, -5.0]]))
    assert cos.item() == pytest.approx(2.0)


def test_bfloat16_inputs_are_reduced_in_float32():
    pred = torch.full((1, 4096), 1.0, dtype=torch.bfloat16)
    target = torch.full((1, 4096), 1.0 + 2**-7, dtype=torch.bfloat16)  # exactly representable
    total, mse, _ = mota_loss(pred, target, w_cos=0.0)
    assert total.dtype == torch.float32
    assert mse.item() == pytest.approx(2**-14, rel=1e-6)


def test_a_zero_vector_gives_cosine_zero_not_nan():
    terms = mota_terms(torch.zeros(1, 3), torch.ones(1, 3))
    assert terms.cos.item() == 0.0 and math.isfinite(terms.loss.item())


def test_shape_mismatch_is_an_error_naming_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        mota_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_group_means_averages_per_integer_label():
    means = group_means(torch.tensor([1.0, 2.0, 4.0, 8.0]), torch.tensor([1, 2, 2, 3]))
    assert {k: v.item() for k, v in means.items()} == {1: 1.0, 2: 3.0, 3: 8.0}
