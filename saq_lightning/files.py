"""Files that appear whole or not at all, and their digests. Imports nothing of the package, so
every layer (``sampling/`` and ``quant/`` included) may use it."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
