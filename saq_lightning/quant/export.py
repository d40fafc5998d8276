"""Export a trained student as real integer weights, and load it back.

Folder layout::

    config.json            diffusers-style model config (``_class_name`` + the UNet's config) with a
                           ``quantization_config`` entry naming the format, policy and files, so
                           the folder is recognisable (and loadable by ``quant.runtime.load_runtime``)
                           without the training code; older exports without it still load
    manifest.json          format, policy, model class + config, one entry per quantized layer,
                           ``tensors_sha256``: the SHA-256 of weights.safetensors (checked on every
                           load: weights of another export under this manifest are refused)
    weights.safetensors    per quantized layer L:
                             L.qweight       codes of the merged weight W + LoRA delta:
                                             bits <= 4: uint8, two codes per byte (q - qmin),
                                             low nibble first; else int8 (signed) / uint8
                             L.w_scale       fp32 [C] (C = 1 per tensor)
                             L.w_zero_point  int32 [C]
                             L.bias          fp32 (if the layer has one)
                             L.a_scale       fp32 [n_buckets] activation steps per timestep bucket
                             L.a_zero_point  int32 [n_buckets]
                           per attention module A (only with quantize_attention_matmuls):
                             A.processor.{q,k,probs,v}.a_scale / .a_zero_point
                           every other tensor of the UNet under its own state-dict name (FP)

Dequantization is ``(q - z) * s`` per output channel, the exact expression the fake-quant
forward uses, so the reloaded student reproduces the fake-quant student's outputs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saq_lightning.errors import UserError
from saq_lightning.files import sha256_file

from .attention import QuantAttnProcessor
from .model import QuantizedUNet, build_student
from .policy import LayerPlan, QuantPolicy, resolve_policy
from .quantizers import AffineQuantizer

FORMAT = "saq_lightning.quant/1"
MANIFEST = "manifest.json"
TENSORS = "weights.safetensors"
CONFIG = "config.json"


class ExportMismatchError(UserError, ValueError):
    """An export's files do not agree with each other (digest, per-layer bits, table sizes)."""


# -- packing ----------------------------------------------------------------------------------


def pack_codes(codes: Tensor, bits: int, qmin: int) -> tuple[Tensor, str]:
    """Integer codes -> storage tensor and its packing name (``int4x2``, ``int8`` or ``uint8``)."""
    if bits <= 4:
        u = (codes.to(torch.int16) - qmin).to(torch.uint8).flatten()
        if u.numel() % 2:
            u = torch.cat([u, u.new_zeros(1)])
        return (u[0::2] | (u[1::2] << 4)).contiguous(), "int4x2"
    if qmin < 0:
        return codes.to(torch.int8).contiguous(), "int8"
    return codes.to(torch.uint8).contiguous(), "uint8"


def unpack_codes(stored: Tensor, packing: str, shape: tuple[int, ...], qmin: int) -> Tensor:
    """Inverse of :func:`pack_codes`; returns int16 codes of ``shape``."""
    if packing == "int4x2":
        lo = (stored & 0x0F).to(torch.int16)
        hi = (stored >> 4).to(torch.int16)
        u = torch.stack([lo, hi], dim=1).flatten()[: math.prod(shape)]
        return (u + qmin).view(shape)
    if packing in ("int8", "uint8"):
        return stored.to(torch.int16).view(shape)
    raise ValueError(f"unknown weight packing {packing!r}")


# -- export -----------------------------------------------------------------------------------


def _q_tables(prefix: str, qz: AffineQuantizer, out: dict[str, Tensor], kind: str) -> None:
    s, z = qz.effective()
    out[f"{prefix}.{kind}_scale"] = s.detach().float().reshape(-1).cpu().contiguous()
    out[f"{prefix}.{kind}_zero_point"] = z.detach().reshape(-1).to(torch.int32).cpu().contiguous()


def _model_config(unet: nn.Module) -> dict[str, Any]:
    config = getattr(unet, "config", None)
    if config is None:
        return {}
    cfg = {k: v for k, v in dict(config).items()}
    try:
        json.dumps(cfg)
    except TypeError as e:
        raise ValueError(f"model config is not JSON-serialisable: {e}") from e
    return cfg


def _owned_prefixes(student: QuantizedUNet) -> list[str]:
    prefixes = [name + "." for name, _ in student.quant_layers()]
    prefixes += [n + "." for n, m in student.unet.named_modules() if isinstance(m, QuantAttnProcessor)]
    return prefixes


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"export target {folder} exists and is not a folder")
    if folder.exists():
        if not overwrite:
            raise FileExistsError(f"export folder {folder} already exists (pass overwrite=True to replace it)")
        if any(folder.iterdir()) and not _is_export(folder):
            raise FileExistsError(
                f"refusing to overwrite {folder}: it is not empty and holds no {FORMAT} export"
            )


def _is_export(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


@torch.no_grad()
def export_student(student: QuantizedUNet, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Merge LoRA, write integer weights + quantizer tables + FP rest and a JSON manifest.

    Refuses an existing folder unless ``overwrite`` (and even then only an empty folder or a
    previous export). Written to a temporary sibling first: on any error nothing is replaced.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    _check_target(folder, overwrite)
    for name, qz in ((n, q) for n, q in student.named_modules() if isinstance(q, AffineQuantizer)):
        if not qz.is_initialised:
            raise RuntimeError(f"cannot export: quantizer {name!r} is not initialised (run calibrate first)")

    tensors: dict[str, Tensor] = {}
    layers: dict[str, Any] = {}
    for name, layer in student.quant_layers():
        wq = layer.w_quant
        stored, packing = pack_codes(layer.weight_codes().cpu(), wq.bits, wq.qmin)
        tensors[f"{name}.qweight"] = stored
        _q_tables(name, wq, tensors, "w")
        _q_tables(name, layer.a_quant, tensors, "a")
        if layer.bias is not None:
            tensors[f"{name}.bias"] = layer.bias.detach().cpu().contiguous()
        layers[name] = {
            "type": type(layer.base).__name__,
            "shape": list(layer.weight_shape),
            "weight_bits": wq.bits,
            "act_bits": layer.a_quant.bits,
            "weight_symmetric": wq.symmetric,
            "weight_per_channel": wq.per_channel,
            "act_symmetric": layer.a_quant.symmetric,
            "packing": packing,
            "lora_rank_merged": layer.lora.rank if layer.lora is not None else 0,
        }
    attention: list[str] = []
    for name, m in student.unet.named_modules():
        if isinstance(m, QuantAttnProcessor):
            attention.append(name.removesuffix(".processor"))
            for op, qz in m.quantizers.items():
                _q_tables(f"{name}.{op}", qz, tensors, "a")
    owned = tuple(_owned_prefixes(student))
    for key, t in student.unet.state_dict().items():
        if not key.startswith(owned):
            tensors[key] = t.detach().cpu().contiguous()

    manifest = {
        "format": FORMAT,
        "policy": student.policy.to_dict(),
        "model": {"class": type(student.unet).__name__, "config": _model_config(student.unet)},
        "n_buckets": student.n_buckets,
        "bucket_map": student.bucket_map.to_dict(),
        "num_train_timesteps": student.num_train_timesteps,
        "layers": layers,
        "attention": attention,
        "tensors": TENSORS,
    }
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
        manifest["tensors_sha256"] = sha256_file(tmp / TENSORS)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        (tmp / CONFIG).write_text(json.dumps(diffusers_config(manifest), indent=1))
        if folder.exists():
            _check_target(folder, overwrite)  # unchanged since the first check?
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def diffusers_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of an export: the UNet's diffusers config plus a ``quantization_config``."""
    try:
        import diffusers

        version = diffusers.__version__
    except ImportError:  # pragma: no cover - diffusers is a dependency
        version = None
    return {
        "_class_name": manifest["model"]["class"],
        "_diffusers_version": version,
        **manifest["model"]["config"],
        "quantization_config": {
            "quant_method": FORMAT,
            "policy": manifest["policy"]["name"],
            "manifest": MANIFEST,
            "weights": manifest["tensors"],
        },
    }


# -- load -------------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{folder} holds no {MANIFEST}: not a quantized export") from e
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{folder}: unsupported export format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def _skeleton(manifest: dict[str, Any]) -> nn.Module:
    import diffusers

    cls_name = manifest["model"]["class"]
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"cannot rebuild model class {cls_name!r} from diffusers; pass model=... explicitly")
    return cls.from_config(manifest["model"]["config"])


@torch.no_grad()
def load_exported(
    folder: str | os.PathLike, *, model: nn.Module | None = None, device: str | torch.device = "cpu",
    manifest: dict[str, Any] | None = None,
) -> QuantizedUNet:
    """Rebuild an integer student from :func:`export_student` output.

    ``model``: an FP module of the same architecture to build on (its tensors are replaced);
    default: the diffusers class named in the manifest, built from the stored config. The result
    is frozen, in eval mode, and holds integer codes instead of FP weights for quantized layers.
    ``manifest``: the folder's manifest if the caller has read it already (each file of an export
    is read once: the weights file's bytes are both digested and loaded).
    """
    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    tensors = read_weights(folder, manifest, device)
    unet = model if model is not None else _skeleton(manifest)
    unet.to(device)
    policy = QuantPolicy.from_dict(manifest["policy"])
    plans = [
        LayerPlan(name, e["type"], e["weight_bits"], e["act_bits"], 0, policy) for name, e in manifest["layers"].items()
    ]
    missing = [p.name for p in plans if p.name not in dict(unet.named_modules())]
    if missing:
        raise ValueError(f"export does not fit this model: no module {missing[:3]}")
    check_layer_bits(folder, manifest, unet, policy)
    policy.quantize_attention_matmuls = bool(manifest["attention"])
    student = build_student(unet, policy, plans)
    student.requires_grad_(False)

    def take(key: str) -> Tensor:
        try:
            return tensors.pop(key)
        except KeyError:
            raise ValueError(f"{folder}: tensor {key!r} missing from the export") from None

    def set_tables(qz: AffineQuantizer, prefix: str, kind: str) -> None:
        s, z = take(f"{prefix}.{kind}_scale"), take(f"{prefix}.{kind}_zero_point")
        for key, t in ((f"{prefix}.{kind}_scale", s), (f"{prefix}.{kind}_zero_point", z)):
            if t.numel() != qz.step.numel():
                raise ExportMismatchError(
                    f"{folder / manifest['tensors']}: tensor {key!r} holds {t.numel()} values, the "
                    f"layer's quantizer has {qz.step.numel()} ({'channels' if kind == 'w' else 'buckets'})")
        qz._set_params(s.view_as(qz.step), z.float().view_as(qz.step))
        if hasattr(qz, "calibrated"):
            qz.calibrated.fill_(True)

    for name, layer in student.quant_layers():
        entry = manifest["layers"][name]
        shape = tuple(entry["shape"])
        codes = unpack_codes(take(f"{name}.qweight"), entry["packing"], shape, layer.w_quant.qmin)
        set_tables(layer.w_quant, name, "w")
        set_tables(layer.a_quant, name, "a")
        layer.load_integer_weight(codes)
        if layer.base.bias is not None:
            layer.base.bias.copy_(take(f"{name}.bias"))
    for name, m in student.unet.named_modules():
        if isinstance(m, QuantAttnProcessor):
            for op, qz in m.quantizers.items():
                set_tables(qz, f"{name}.{op}", "a")
    owned = tuple(_owned_prefixes(student))
    expected = {k for k in student.unet.state_dict() if not k.startswith(owned)}
    if set(tensors) != expected:
        extra, lack = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise ValueError(f"export does not fit this model: unexpected {extra[:3]}, missing {lack[:3]}")
    student.unet.load_state_dict(tensors, strict=False)
    student.set_extra_state({"bucket_map": manifest.get("bucket_map")})
    return student.eval()


def read_weights(folder: Path, manifest: dict[str, Any], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The export's tensors, read once: the bytes are checked against the manifest's SHA-256
    (:func:`check_weights_digest`) and parsed from the same read."""
    from safetensors.torch import load

    path = folder / manifest["tensors"]
    data = path.read_bytes()
    check_weights_digest(folder, manifest, hashlib.sha256(data).hexdigest())
    tensors = load(data)
    del data
    if torch.device(device).type != "cpu":
        tensors = {k: t.to(device) for k, t in tensors.items()}
    return tensors


def check_weights_digest(folder: Path, manifest: dict[str, Any], digest: str | None = None) -> None:
    """Refuse a weights file whose SHA-256 (``digest`` if the caller has computed it) is not the one
    the manifest recorded (exports written before the digest was recorded are not checked)."""
    recorded = manifest.get("tensors_sha256")
    path = folder / manifest["tensors"]
    if recorded is None or (digest is None and not path.is_file()):
        return
    if (digest if digest is not None else sha256_file(path)) != recorded:
        raise ExportMismatchError(
            f"{path}: its SHA-256 is not the one {folder / MANIFEST} records (tensors_sha256): the weights "
            f"come from another export or were changed; export the student again")


def check_layer_bits(folder: Path, manifest: dict[str, Any], unet: nn.Module, policy: QuantPolicy) -> None:
    """Each layer's ``weight_bits``/``act_bits`` in the manifest must be what its policy gives that
    layer of this model: a changed entry would run the layer at other bits than it was trained for."""
    plans = {p.name: p for p in resolve_policy(unet, policy, warn=False).layers}
    for name, entry in manifest["layers"].items():
        plan = plans.get(name)
        if plan is None:
            raise ExportMismatchError(
                f"{folder / MANIFEST}: layers.{name}: the policy {policy.name!r} does not quantize this layer")
        for field in ("weight_bits", "act_bits"):
            if int(entry[field]) != getattr(plan, field):
                raise ExportMismatchError(
                    f"{folder / MANIFEST}: layers.{name}.{field} is {entry[field]}, the policy "
                    f"{policy.name!r} gives {getattr(plan, field)}")
