"""The ADM sample format: ``.npz`` with ``arr_0`` uint8 images ``[N, H, W, C]`` and ``arr_1`` labels.

This is what OpenAI's guided-diffusion (ADM) writes and what its TensorFlow evaluator reads, so
sample files from this package can be scored by that evaluator unchanged, and its reference
batches can be read here. Text-to-image samples add a ``prompts`` array (unicode strings, no
pickle), which ADM readers ignore.

Files of 50k 256x256 images are ~10 GB: :func:`write_samples_npz` streams the image array into
the archive chunk by chunk and :class:`NpzArrayReader` reads it back in batches, so neither
holds the whole array in memory.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from saq_lightning.errors import UserError
from saq_lightning.files import atomic_path

IMAGES_KEY = "arr_0"
LABELS_KEY = "arr_1"
PROMPTS_KEY = "prompts"


class SampleFormatError(UserError, ValueError):
    """A sample/reference file that is not in the ADM format (names the file and the field)."""


def to_uint8_nhwc(images: Tensor) -> np.ndarray:
    """``[N, C, H, W]`` floats in ``[-1, 1]`` -> ``[N, H, W, C]`` uint8 (ADM's conversion).

    ADM: ``((x + 1) * 127.5).clamp(0, 255).to(uint8)`` truncates; we round to nearest, which
    is the unbiased choice (mean error 0 instead of -0.5 levels).
    """
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def from_uint8_nhwc(images: np.ndarray | Tensor) -> Tensor:
    """``[N, H, W, C]`` uint8 -> ``[N, C, H, W]`` float32 in ``[-1, 1]``."""
    x = torch.as_tensor(np.asarray(images))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


# -- writing ----------------------------------------------------------------------------------


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    import io

    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(s) for s in shape)}
    np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def write_samples_npz(
    path: str | os.PathLike,
    image_chunks: Iterable[np.ndarray],
    num_images: int,
    labels: np.ndarray | None = None,
    prompts: Sequence[str] | None = None,
) -> Path:
    """Write an ADM ``.npz``, streaming ``arr_0`` from ``image_chunks`` (uint8 ``[n, H, W, C]``).

    The file appears atomically (written under a temporary name, then renamed). ``labels``
    become ``arr_1`` (int64), ``prompts`` a unicode array.
    """
    path = Path(path)
    written, shape = 0, None
    with (atomic_path(path) as tmp,
          zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf):
        chunks = iter(image_chunks)
        first = next(chunks, None)
        if first is None:
            raise ValueError("write_samples_npz: no images")
        shape = (num_images, *first.shape[1:])
        _check_images(first, f"{path}: chunk 0")
        with zf.open(f"{IMAGES_KEY}.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(shape, np.uint8))
            for chunk in _chain(first, chunks):
                if chunk.shape[1:] != shape[1:] or chunk.dtype != np.uint8:
                    raise ValueError(
                        f"{path}: chunk of {chunk.dtype} {chunk.shape} does not match uint8 {shape}"
                    )
                f.write(np.ascontiguousarray(chunk).tobytes())
                written += chunk.shape[0]
        if written != num_images:
            raise ValueError(f"{path}: expected {num_images} images, got {written}")
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (num_images,):
                raise ValueError(f"{path}: labels must have shape ({num_images},), got {labels.shape}")
            with zf.open(f"{LABELS_KEY}.npy", "w") as f:
                np.lib.format.write_array(f, labels, allow_pickle=False)
        if prompts is not None:
            text = np.asarray(list(prompts), dtype=np.str_)
            if text.shape != (num_images,):
                raise ValueError(f"{path}: need one prompt per image ({num_images}), got {text.shape}")
            with zf.open(f"{PROMPTS_KEY}.npy", "w") as f:
                np.lib.format.write_array(f, text, allow_pickle=False)
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


# -- reading ----------------------------------------------------------------------------------


def _check_images(arr_like, where: str, shape: tuple[int, ...] | None = None, dtype=None) -> None:
    shape = tuple(arr_like.shape) if shape is None else shape
    dtype = arr_like.dtype if dtype is None else dtype
    if np.dtype(dtype) != np.uint8:
        hint = ""
        if np.issubdtype(np.dtype(dtype), np.floating):
            hint = (" (floats: convert images in [-1, 1] with "
                    "((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8))")
        raise SampleFormatError(f"{where}: images must be uint8 in [0, 255], got dtype {np.dtype(dtype)}{hint}")
    if len(shape) != 4:
        raise SampleFormatError(f"{where}: images must be 4-D [N, H, W, C], got shape {shape}")
    if shape[-1] not in (1, 3):
        hint = " (this looks like NCHW; ADM files are NHWC)" if shape[1] in (1, 3) else ""
        raise SampleFormatError(f"{where}: images must have 1 or 3 channels last [N, H, W, C], got shape {shape}{hint}")
    if shape[0] < 1:
        raise SampleFormatError(f"{where}: no images")


@dataclass(frozen=True)
class NpzArrayReader:
    """Batches of one array of an ``.npz`` without loading the whole array (uncompressed members
    are read sequentially; compressed ones work too, just slower)."""

    path: Path
    key: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @classmethod
    def open(cls, path: str | os.PathLike, key: str) -> NpzArrayReader:
        path = Path(path)
        with zipfile.ZipFile(path) as zf:
            member = f"{key}.npy"
            if member not in zf.namelist():
                have = sorted(n.removesuffix(".npy") for n in zf.namelist())
                raise SampleFormatError(f"{path}: no array {key!r} (has {have})")
            with zf.open(member) as f:
                shape, dtype = _read_header(f, f"{path}:{key}")
        return cls(path, key, shape, dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Rows ``start:stop`` in batches of ``batch_size`` (the last one may be shorter)."""
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        row = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open(f"{self.key}.npy") as f:
            _read_header(f, str(self.path))
            if start:
                _skip(f, start * row)
            i = start
            while i < stop:
                n = min(batch_size, stop - i)
                buf = f.read(n * row)
                if len(buf) != n * row:
                    raise SampleFormatError(f"{self.path}:{self.key} is truncated at row {i}")
                yield np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.shape[1:])
                i += n

    def read(self) -> np.ndarray:
        return np.concatenate(list(self.batches(max(1, len(self)))))


def _skip(f, nbytes: int) -> None:
    while nbytes > 0:
        got = len(f.read(min(nbytes, 1 << 24)))
        if got == 0:
            break
        nbytes -= got


def _read_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran, dtype = readers[version](f)
    except ValueError as err:
        raise SampleFormatError(f"{where}: not a .npy array ({err})") from err
    if fortran:
        raise SampleFormatError(f"{where}: Fortran-ordered arrays are not supported; save a C-ordered array")
    if dtype.hasobject:
        raise SampleFormatError(f"{where}: object arrays are not allowed (no pickles)")
    return tuple(shape), dtype


@dataclass(frozen=True)
class SampleFile:
    """A validated ADM sample file: streamed images, in-memory labels and prompts (or ``None``)."""

    path: Path
    images: NpzArrayReader
    labels: np.ndarray | None
    prompts: list[str] | None

    @property
    def num_images(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 ``[n, H, W, C]`` batches; the first is checked not to be a [0, 1] image cast to uint8."""
        for i, batch in enumerate(self.images.batches(batch_size)):
            if i == 0 and batch.size and int(batch.max()) <= 1:
                raise SampleFormatError(
                    f"{self.path}:{IMAGES_KEY}: values are all 0 or 1 - images in [0, 1] cast to uint8? "
                    "ADM images are uint8 in [0, 255]"
                )
            yield batch


def read_samples_npz(path: str | os.PathLike) -> SampleFile:
    """Open and validate an ADM ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1`` int labels).

    Raises :class:`SampleFormatError` naming the file and the field for a wrong dtype, shape,
    channel count or label array, and ``FileNotFoundError`` for a missing file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"sample file {path} not found")
    if not zipfile.is_zipfile(path):
        raise SampleFormatError(f"{path}: not an .npz archive (expected np.savez output with arr_0)")
    images = NpzArrayReader.open(path, IMAGES_KEY)
    _check_images(None, f"{path}:{IMAGES_KEY}", images.shape, images.dtype)
    labels = prompts = None
    with np.load(path, allow_pickle=False) as data:
        if LABELS_KEY in data.files:
            labels = data[LABELS_KEY]
            if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
                raise SampleFormatError(
                    f"{path}:{LABELS_KEY}: labels must be integers of shape ({images.shape[0]},), "
                    f"got {labels.dtype} {labels.shape}"
                )
            labels = labels.astype(np.int64)
        if PROMPTS_KEY in data.files:
            text = data[PROMPTS_KEY]
            if text.shape != (images.shape[0],) or text.dtype.kind != "U":
                raise SampleFormatError(
                    f"{path}:{PROMPTS_KEY}: need one string per image ({images.shape[0]}), got {text.dtype} {text.shape}"
                )
            prompts = [str(p) for p in text]
    return SampleFile(path, images, labels, prompts)
