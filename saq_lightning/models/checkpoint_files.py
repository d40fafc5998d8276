"""Reading weight files without executing pickled code, and clear errors for missing ones.

``.safetensors`` files are read with safetensors. Pickle-based files (``.ckpt``, ``.pt``,
``.pth``, ``.bin``) are read with ``torch.load(weights_only=True)``; the original CompVis
checkpoints are PyTorch-Lightning checkpoints that also pickle Lightning callbacks and
hyper-parameter containers next to ``state_dict``. Those objects are not needed, and their classes
are replaced by an inert placeholder (allow-listed under their original names for this one load),
so the restricted unpickler accepts the file without importing or running any of their code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from typing_extensions import Self

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class _InertPickledObject:
    """Stands in for any non-tensor class in a checkpoint: swallows arguments and state."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """Expand ``~`` and ``$VARS`` (cluster scratch paths) in a configured path."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def require_path(path: str | os.PathLike[str] | None, what: str, source: str, folder: bool = False) -> Path:
    """The resolved path, or ``FileNotFoundError`` saying which file, where, and where to get it."""
    if path is None or str(path) == "":
        raise FileNotFoundError(f"no path configured for {what}; it is normally obtained from {source}")
    resolved = resolve_path(path)
    ok = resolved.is_dir() if folder else resolved.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise FileNotFoundError(
            f"{what}: {kind} {resolved} not found (configured as {path!s}, relative paths are "
            f"resolved from {Path.cwd()}); it is normally obtained from {source}"
        )
    return resolved


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """All tensors of a checkpoint file as a flat ``{key: tensor}`` (CPU).

    Lightning checkpoints (a dict with ``state_dict``) are unwrapped. Raises ``TypeError`` if the
    file holds no mapping and ``ValueError`` if a value in it is not a tensor.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix not in PICKLE_SUFFIXES:
        raise ValueError(f"{path}: unknown weight file type {path.suffix!r} (expected .safetensors or {PICKLE_SUFFIXES})")
    obj = _torch_load_weights_only(path)
    state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping):
        raise TypeError(f"{path}: expected a state dict (or a Lightning checkpoint), found {type(obj).__name__}")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{path}: state dict entries that are not tensors: {bad[:8]}")
    return dict(state)


def _torch_load_weights_only(path: Path) -> Any:
    unsafe: list[str] = []
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):  # legacy (non-zip) format
        unsafe = []
    placeholders = [(_InertPickledObject, name) for name in unsafe]
    try:
        with torch.serialization.safe_globals(placeholders):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused by torch.load(weights_only=True) ({err}); convert the file to "
            ".safetensors with a trusted tool, this project never unpickles arbitrary code"
        ) from err
