"""PNG sample grids."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from saq_lightning.metrics.grids import save_grid
from saq_lightning.metrics.npz_format import to_uint8_nhwc


def test_grid_puts_nrow_images_per_row_upscaled_four_times_for_small_images(tmp_path):
    x = torch.rand(23, 1, 8, 8) * 2 - 1
    save_grid(x, tmp_path / "g.png", nrow=10)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (2 * 8 * 4, 10 * 8 * 4)  # full rows only: 20 of 23
    # row 1, column 2 holds image 12, each pixel a 4x4 block
    expected = to_uint8_nhwc(x[12:13])[0, :, :, 0]
    np.testing.assert_array_equal(img[32:64:4, 64:96:4], expected)


def test_float_and_uint8_inputs_give_the_same_rgb_grid(tmp_path):
    x = torch.rand(4, 3, 40, 40) * 2 - 1
    save_grid(x, tmp_path / "a.png", nrow=2)
    save_grid(to_uint8_nhwc(x), tmp_path / "b.png", nrow=2)
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (80, 80, 3)  # 40 px images are not upscaled
    np.testing.assert_array_equal(a, b)
