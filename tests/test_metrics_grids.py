"""PNG sample grids."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from saq_lightning.metrics.grids import save_grid
from saq_lightning.metrics.npz_format import to_uint8_nhwc


def test_grid_puts_nrow_images_per_row_upscaled_four_times_with_gaps(tmp_path):
    x = torch.rand(23, 1, 8, 8) * 2 - 1
    save_grid(x, tmp_path / "g.png", nrow=10)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (2 * 32 + 2, 10 * 32 + 9 * 2, 3)  # full rows only: 20 of 23; 2 px gaps
    # row 1, column 2 holds image 12, each pixel a 4x4 block
    expected = to_uint8_nhwc(x[12:13])[0, :, :, 0]
    top, left = 32 + 2, 2 * (32 + 2)
    np.testing.assert_array_equal(img[top:top + 32:4, left:left + 32:4, 0], expected)
    assert (img[32:34] == 255).all() and (img[:, 32:34] == 255).all()  # white gaps


def test_labels_add_a_title_a_column_header_and_a_row_margin(tmp_path):
    x = torch.rand(20, 1, 8, 8) * 2 - 1
    save_grid(x, tmp_path / "g.png", nrow=10, col_labels=[str(k) for k in range(10)],
              row_labels=["teacher", "student"], title="step 10")
    img = np.asarray(Image.open(tmp_path / "g.png"))
    left, top = len("student") * 6 + 6, 2 * 12
    assert img.shape == (top + 66, left + 338, 3)
    assert (img[:top, left:] < 128).any() and (img[top:, :left] < 128).any()  # text drawn there


def test_float_and_uint8_inputs_give_the_same_rgb_grid(tmp_path):
    x = torch.rand(4, 3, 40, 40) * 2 - 1
    save_grid(x, tmp_path / "a.png", nrow=2)
    save_grid(to_uint8_nhwc(x), tmp_path / "b.png", nrow=2)
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert a.shape == (82, 82, 3)  # 40 px images are not upscaled; 2 px gap
    np.testing.assert_array_equal(a, b)
