"""The embedded dataset: scikit-learn's 8x8 digits scaled to [-1, 1]."""

import torch

from saq_lightning.data.digits import DigitsDataModule, digits_split, load_digits_tensors


def test_all_digits_have_native_shape_range_and_labels():
    images, labels = load_digits_tensors()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min().item() == -1.0 and images.max().item() == 1.0  # pixel 0 -> -1, 16 -> 1
    assert set(labels.unique().tolist()) == set(range(10))


def test_pixel_values_map_linearly_from_0_16():
    from sklearn.datasets import load_digits

    raw = torch.as_tensor(load_digits().images[5], dtype=torch.float32)
    images, _ = load_digits_tensors()
    torch.testing.assert_close(images[5, 0], raw / 8 - 1, rtol=0, atol=0)


def test_split_is_deterministic_disjoint_and_complete():
    train_a, ya = digits_split("train", seed=0)
    train_b, yb = digits_split("train", seed=0)
    val, _ = digits_split("val", seed=0)
    assert torch.equal(train_a, train_b) and torch.equal(ya, yb)
    assert len(train_a) + len(val) == 1797
    assert len(val) == round(1797 * 0.15)
    # no image row appears in both splits (digits has a few exact duplicates, so compare sets of
    # indices through a different seed instead: another seed gives another split)
    train_c, _ = digits_split("train", seed=1)
    assert not torch.equal(train_a, train_c)


def test_upsampled_digits_keep_range():
    images, _ = load_digits_tensors(size=16)
    assert images.shape == (1797, 1, 16, 16)
    assert images.min() >= -1 and images.max() <= 1


def test_datamodule_batches_have_shapes_and_fixed_order_per_seed():
    dm = DigitsDataModule(batch_size=32, seed=0)
    dm.setup("fit")
    torch.manual_seed(7)
    x1, y1 = next(iter(dm.train_dataloader()))
    torch.manual_seed(7)
    x2, y2 = next(iter(dm.train_dataloader()))
    assert x1.shape == (32, 1, 8, 8) and y1.shape == (32,)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert len(dm.train_dataloader()) == (1797 - 270) // 32  # drop_last
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[1:] == (1, 8, 8)


def test_bad_split_name_is_rejected():
    import pytest

    with pytest.raises(ValueError, match="split must be"):
        digits_split("test")
