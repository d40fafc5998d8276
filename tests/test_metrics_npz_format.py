"""The ADM sample format: layout written, streamed reading, and clear errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saq_lightning.metrics.npz_format import (
    SampleFormatError,
    from_uint8_nhwc,
    read_samples_npz,
    to_uint8_nhwc,
    write_samples_npz,
)


def images(n: int, h: int = 6, w: int = 5, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


def test_written_file_has_adm_keys_dtypes_and_shapes(tmp_path):
    x = images(7)
    path = write_samples_npz(tmp_path / "s.npz", [x[:3], x[3:]], 7, labels=np.arange(7) % 3)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (7, 6, 5, 3)
        assert data["arr_1"].dtype == np.int64 and data["arr_1"].shape == (7,)
        np.testing.assert_array_equal(data["arr_0"], x)
        np.testing.assert_array_equal(data["arr_1"], np.arange(7) % 3)


def test_prompts_are_stored_as_unicode_without_pickle(tmp_path):
    path = write_samples_npz(tmp_path / "s.npz", [images(2)], 2, prompts=["a red car", "ein Hund"])
    with np.load(path, allow_pickle=False) as data:
        assert data["prompts"].dtype.kind == "U"
        assert list(data["prompts"]) == ["a red car", "ein Hund"]
    assert read_samples_npz(path).prompts == ["a red car", "ein Hund"]


def test_reader_streams_the_same_images_in_batches(tmp_path):
    x = images(10, c=1)
    np.savez(tmp_path / "s.npz", arr_0=x)
    f = read_samples_npz(tmp_path / "s.npz")
    assert f.num_images == 10 and f.image_shape == (6, 5, 1) and f.labels is None
    batches = list(f.batches(4))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), x)


def test_float_to_uint8_and_back_is_within_half_a_level():
    x = torch.rand(3, 3, 4, 4) * 2 - 1
    back = from_uint8_nhwc(to_uint8_nhwc(x))
    assert back.shape == x.shape
    assert (back - x).abs().max() <= 0.5 / 127.5 + 1e-6


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 4, 4, 3), np.float32), r"s\.npz:arr_0: images must be uint8 in \[0, 255\], got dtype float32"),
        (np.zeros((2, 4, 4), np.uint8), r"arr_0: images must be 4-D \[N, H, W, C\], got shape \(2, 4, 4\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), r"1 or 3 channels last .* \(this looks like NCHW"),
    ],
    ids=["float-dtype", "3-d", "nchw"],
)
def test_wrong_dtype_or_shape_names_the_file_and_the_field(tmp_path, array, message):
    np.savez(tmp_path / "s.npz", arr_0=array)
    with pytest.raises(SampleFormatError, match=message):
        read_samples_npz(tmp_path / "s.npz")


def test_images_in_zero_one_cast_to_uint8_are_refused(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=np.ones((4, 4, 4, 3), np.uint8))
    with pytest.raises(SampleFormatError, match=r"values are all 0 or 1 - images in \[0, 1\] cast to uint8"):
        next(read_samples_npz(tmp_path / "s.npz").batches(2))


def test_labels_of_the_wrong_length_are_refused(tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=images(4), arr_1=np.arange(3))
    with pytest.raises(SampleFormatError, match=r"arr_1: labels must be integers of shape \(4,\)"):
        read_samples_npz(tmp_path / "s.npz")


def test_missing_images_array_and_missing_file_are_clear(tmp_path):
    np.savez(tmp_path / "s.npz", images=images(2))
    with pytest.raises(SampleFormatError, match=r"no array 'arr_0' \(has \['images'\]\)"):
        read_samples_npz(tmp_path / "s.npz")
    with pytest.raises(FileNotFoundError, match="sample file .*nope.npz not found"):
        read_samples_npz(tmp_path / "nope.npz")


def test_compressed_archives_are_read_too(tmp_path):
    x = images(5)
    np.savez_compressed(tmp_path / "s.npz", arr_0=x, arr_1=np.arange(5))
    f = read_samples_npz(tmp_path / "s.npz")
    np.testing.assert_array_equal(np.concatenate(list(f.batches(2))), x)
    assert f.labels.tolist() == [0, 1, 2, 3, 4]
