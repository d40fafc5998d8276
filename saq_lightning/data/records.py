"""Trajectory-point records: the schema, their encoding in a WebDataset sample, decoding, collation.

A record is one point ``x_s`` on a teacher trajectory with the facts a loss needs about it::

    x_s      Tensor (C, H, W)   the point (required)
    s, t     float              continuous times of the step s -> t (required)
    order    int 1..4           solver order of the teacher step (4: PLMS only) (required)
    steps    int >= 1           number of steps N of the grid (required)
    phase    int >= 0           mixstep phase index (required)
    traj     int >= 0           trajectory index (required)
    step     int >= 0           index of the point in its trajectory (required)
    cond     int | Tensor       class label or a conditioning tensor (optional)
    eps_eff  Tensor             target direction, same shape as x_s (optional)
    x_hist   Tensor (H, C, H, W) multistep solvers: the H previous grid states, most recent
                                first; entries beyond ``step`` repeat x_T (optional)

Any further field is kept: tensors are stored as ``.npy``, ints/floats/bools/strings in the
sample's ``meta.json``. In the tar file a record ``{traj}_{n}`` becomes ``{key}.meta.json`` plus
one ``{key}.{name}.npy`` per tensor. Float tensors are stored in the shard's storage dtype
(``float32``, ``float16`` or ``bfloat16``; bfloat16 is written as its int16 bit pattern).
"""

from __future__ import annotations

import io
import json
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

REQUIRED_TENSORS: tuple[str, ...] = ("x_s",)
REQUIRED_SCALARS: dict[str, type] = {
    "s": float,
    "t": float,
    "order": int,
    "steps": int,
    "phase": int,
    "traj": int,
    "step": int,
}
STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
META_ENTRY = "meta.json"
_SCALAR_KINDS = {bool: "bool", int: "int", float: "float", str: "str"}


def _as_scalar(name: str, value: Any) -> bool | int | float | str:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"record field {name!r}: expected a scalar, got a tensor of shape "
                             f"{tuple(value.shape)}")
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"record field {name!r}: unsupported value of type {type(value).__name__}")


def _check_required(record: Mapping[str, Any]) -> None:
    missing = [k for k in (*REQUIRED_TENSORS, *REQUIRED_SCALARS) if k not in record]
    if missing:
        raise ValueError(f"trajectory record is missing field(s) {missing}; has {sorted(record)}")
    for name, kind in REQUIRED_SCALARS.items():
        value = _as_scalar(name, record[name])
        if isinstance(value, (bool, str)):
            raise TypeError(f"record field {name!r} must be a {kind.__name__}, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(f"record field {name!r} must be an int, got {value!r}")
    if not 1 <= int(record["order"]) <= 4:
        raise ValueError(f"record field 'order' must be 1..4 (4: PLMS), got {record['order']}")
    if int(record["steps"]) < 1:
        raise ValueError(f"record field 'steps' must be >= 1, got {record['steps']}")
    for name in ("phase", "traj", "step"):
        if int(record[name]) < 0:
            raise ValueError(f"record field {name!r} must be >= 0, got {record[name]}")
    x_s = record["x_s"]
    if not isinstance(x_s, torch.Tensor) or not x_s.is_floating_point():
        raise ValueError("record field 'x_s' must be a floating-point tensor")
    eps = record.get("eps_eff")
    if eps is not None and (not isinstance(eps, torch.Tensor) or eps.shape != x_s.shape):
        raise ValueError(f"record field 'eps_eff' must be a tensor of the shape of x_s "
                         f"{tuple(x_s.shape)}")


def _npy_bytes(tensor: torch.Tensor, storage: torch.dtype) -> tuple[bytes, str]:
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.is_floating_point():
        tensor = tensor.to(storage)
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: keep the bit pattern
        tensor = tensor.view(torch.int16)
    stream = io.BytesIO()
    np.lib.format.write_array(stream, tensor.numpy(), allow_pickle=False)
    return stream.getvalue(), dtype_name


def encode_record(
    record: Mapping[str, Any], key: str, storage_dtype: str = "float32"
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Validate a record and encode it as a WebDataset sample of bytes.

    Returns ``(sample, fields)``: the sample for ``webdataset.TarWriter(encoder=False)`` and the
    field description (kind, and shape/dtype for tensors) that the manifest records.
    """
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be one of {sorted(STORAGE_DTYPES)}, got "
                         f"{storage_dtype!r}")
    _check_required(record)
    storage = STORAGE_DTYPES[storage_dtype]
    sample: dict[str, Any] = {"__key__": key}
    meta: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {}
    for name, value in record.items():
        if value is None:
            continue
        if "." in name or "/" in name or name.startswith("_") or name == "meta":
            raise ValueError(f"record field name {name!r} is not allowed (no '.', '/', leading "
                             f"'_', or 'meta')")
        if isinstance(value, torch.Tensor) and (value.dim() > 0 or name in REQUIRED_TENSORS):
            data, dtype_name = _npy_bytes(value, storage)
            sample[f"{name}.npy"] = data
            fields[name] = {"kind": "tensor", "shape": list(value.shape), "dtype": dtype_name}
        else:
            scalar = _as_scalar(name, value)
            if REQUIRED_SCALARS.get(name) is int or (name == "cond" and isinstance(scalar, float)
                                                     and scalar.is_integer()):
                scalar = int(scalar)
            elif REQUIRED_SCALARS.get(name) is float:
                scalar = float(scalar)
            meta[name] = scalar
            fields[name] = {"kind": _SCALAR_KINDS[type(scalar)]}
    sample[META_ENTRY] = json.dumps(meta, sort_keys=True).encode("utf-8")
    return sample, fields


def decode_sample(
    sample: Mapping[str, Any], fields: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """Decode a raw WebDataset sample (bytes per entry) written by :func:`encode_record`."""
    out: dict[str, Any] = dict(json.loads(sample[META_ENTRY]))
    for entry, data in sample.items():
        if entry.startswith("__") or not entry.endswith(".npy"):
            continue
        name = entry[: -len(".npy")]
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if fields.get(name, {}).get("dtype") == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        out[name] = tensor
    return out


def collate_records(
    records: Sequence[Mapping[str, Any]],
    float_dtype: torch.dtype = torch.float32,
    time_dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Stack decoded records into a batch: tensors ``[B, ...]``, ints ``long [B]``, floats ``[B]``.

    Floating-point tensors are cast to ``float_dtype``, float scalars (``s``, ``t``) to
    ``time_dtype``; strings stay a list.
    """
    if not records:
        raise ValueError("cannot collate an empty list of records")
    batch: dict[str, Any] = {}
    for name in records[0]:
        values = [r[name] for r in records]
        first = values[0]
        if isinstance(first, torch.Tensor):
            stacked = torch.stack(values)
            batch[name] = stacked.to(float_dtype) if stacked.is_floating_point() else stacked
        elif isinstance(first, bool):
            batch[name] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int):
            batch[name] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            batch[name] = torch.tensor(values, dtype=time_dtype)
        else:
            batch[name] = list(values)
    return batch
