"""The MOTA loss against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from saq_lightning.alignment.mota import group_means, mota_loss, mota_terms

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


# ---------------------------------------------------------------- the balance across resolutions
def _orthogonal_error(d: int, scale: float, rho: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A target of ``d`` elements (per-element rms ``scale``) and a prediction off it by an error
    orthogonal to it of relative size ``rho`` (``|delta| = rho |target|``)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, d, generator=g, dtype=torch.float64) * scale
    n = torch.randn(1, d, generator=g, dtype=torch.float64)
    n = n - (n * q).sum() / (q * q).sum() * q
    delta = n * (rho * q.norm() / n.norm())
    return (q + delta).float(), q.float()


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_relative_mse_and_the_cosine_mean_the_same_at_digits_and_ldm4_resolution(scale):
    """The same relative error gives the same relative MSE and 1 - cos at D = 64 and 12,288 (and any
    target scale); the plain mean MSE is resolution-independent too but grows with the scale^2."""
    rho = 0.1
    expected_cos = 1.0 - 1.0 / math.sqrt(1.0 + rho ** 2)  # exact for an orthogonal error
    for d in (64, 12_288):
        pred, target = _orthogonal_error(d, scale, rho, seed=d)
        rel = mota_terms(pred, target, relative=True)
        plain = mota_terms(pred, target)
        assert rel.mse.item() == pytest.approx(rho ** 2, rel=1e-4)
        assert 1.0 - rel.cos.item() == pytest.approx(expected_cos, rel=1e-3)
        # the plain mean MSE carries the target's mean energy |q|^2 / D (~ scale^2)
        assert plain.mse.item() == pytest.approx(rho ** 2 * target.square().mean().item(), rel=1e-4)
        # the cosine is half the relative MSE of an orthogonal error, to O(rho^2)
        assert (1.0 - rel.cos.item()) / rel.mse.item() == pytest.approx(0.5, rel=0.01)


def test_the_authors_sum_reduction_weighs_the_cosine_100_over_d_against_a_mean_mse():
    """``w_cos: 100`` with summed MSE and cosine is ``w_cos = 100 / D`` in the mean form: 1.5625 on
    digits (D = 64), 0.00814 on LDM-4 (D = 12,288), 0.0061 on SD (16,384); checked against the loss."""
    from saq_lightning.alignment.mota import reduce_mota
    from saq_lightning.alignment.settings import LossSettings

    author = LossSettings(w_mse=1.0, w_cos=100.0, mse_reduction="sum", cos_reduction="sum")
    assert author.per_element_cos_weight(64) == pytest.approx(1.5625, rel=1e-12)
    assert author.per_element_cos_weight(12_288) == pytest.approx(0.0081380, rel=1e-4)
    assert author.per_element_cos_weight(16_384) == pytest.approx(0.0061035, rel=1e-4)
    g = torch.Generator().manual_seed(3)
    pred, target = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    terms = mota_terms(pred, target, 1.0, 100.0)
    summed, _ = reduce_mota(terms, 192, 1.0, 100.0, "sum", "sum")
    weight = author.per_element_cos_weight(192, batch_size=4)
    mean_form = terms.mse.mean() + weight * (1.0 - terms.cos).mean()
    torch.testing.assert_close(summed / (192 * 4), mean_form, rtol=1e-5, atol=0)
    line = author.balance_line(12_288)
    assert line is not None and "0.008138" in line and "mse_reduction: mean" in line
    assert LossSettings().balance_line(12_288) is None  # the default form is the same at every D
    with pytest.raises(ValueError, match="loss.mse_normalization must be"):
        LossSettings(mse_normalization="energy")


@pytest.mark.parametrize(("mse_reduction", "cos_reduction"), [("mean", "mean"), ("sum", "sum"), ("sum", "mean")])
def test_added_terms_reduce_to_the_sum_of_both_losses_with_a_per_row_weight(mse_reduction, cos_reduction):
    """``add_terms(a, b, w)`` under any reduction is ``a``'s loss plus ``b``'s with row ``i``'s MSE
    and ``1 - cos`` weighted ``w_i`` (the grid anchor adds its term on the rows stepped at order >= 2
    only), reduced alike."""
    from saq_lightning.alignment.mota import add_terms, reduce_mota

    g = torch.Generator().manual_seed(5)
    pred, other, target = (torch.randn(6, 1, 8, 8, generator=g) for _ in range(3))
    a, b = mota_terms(pred, target, 1.0, 2.0), mota_terms(other, target, 1.0, 2.0)
    weight = torch.tensor([0.0, 0.0, 0.5, 0.5, 0.5, 0.0])
    got, per_row = reduce_mota(add_terms(a, b, weight), 64, 1.0, 2.0, mse_reduction, cos_reduction)
    plain, plain_rows = reduce_mota(a, 64, 1.0, 2.0, mse_reduction, cos_reduction)
    mse, cos = weight * b.mse, weight * (1.0 - b.cos)
    extra = (1.0 * (mse.sum() * 64 if mse_reduction == "sum" else mse.mean())
             + 2.0 * (cos.sum() if cos_reduction == "sum" else cos.mean()))
    torch.testing.assert_close(got, plain + extra, rtol=1e-6, atol=1e-6)
    assert torch.equal(per_row[weight == 0], plain_rows[weight == 0])
    torch.testing.assert_close(add_terms(a, b, weight).loss, a.loss + weight * b.loss, rtol=1e-6, atol=1e-7)
