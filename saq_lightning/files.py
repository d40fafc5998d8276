"""Files that appear whole or not at all, and their digests. Imports nothing of the package but
the leaf ``errors.py``, so every layer (``sampling/`` and ``quant/`` included) may use it."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saq_lightning.errors import UserError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` to write to; renamed over ``path`` when the block ends
    without error, removed otherwise: readers never see half a file.

    The name ``.<name>.tmp-<random>`` is hidden, unique per call (concurrent writers never share
    it) and ends in no known suffix (``np.savez`` would append ``.npz``: give it the open file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class UnreadableFileError(UserError, ValueError):
    """A file meant to hold tensors cannot be read as one (empty, cut short, not a PyTorch file)."""


class UnsafeFileError(UnreadableFileError):
    """A file meant to hold tensors holds other pickled objects, which loading would run as code."""


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, containers and plain values only. A file
    with any other pickled object (which could run code when loaded) is refused in one line naming
    it (:class:`UnsafeFileError`); an empty, truncated or foreign file too
    (:class:`UnreadableFileError`)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        unsafe = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        if not unsafe:  # torch met no GLOBAL: say what it met, not its advice to unpickle freely
            detail = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), "")
            if _starts_like_a_pickle(path):
                raise UnsafeFileError(
                    f"{path}: refused: a raw Python pickle stream, not a PyTorch tensor file ({detail or _first_line(err)}); "
                    "unpickling it could run code, so it was not unpickled; only load files you trust with other "
                    "tools") from err
            raise UnreadableFileError(
                f"{path}: not a readable PyTorch file ({detail or _first_line(err)})") from err
        raise UnsafeFileError(
            f"{path}: refused: it holds pickled objects other than tensors and plain values, which "
            f"loading would run as code ({unsafe}); only load files you trust with other tools") from err
    except (EOFError, RuntimeError, ValueError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise UnreadableFileError(
            f"{path}: not a readable PyTorch file (empty, cut short or another format: "
            f"{type(err).__name__}: {_first_line(err)})") from err


def _starts_like_a_pickle(path: str | os.PathLike) -> bool:
    """A pickle stream of protocol 2 or later starts with the PROTO opcode ``0x80`` and its version
    (a PyTorch file is a zip archive, ``PK``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
