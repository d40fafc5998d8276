"""Key-by-key accounting for checkpoint conversions.

A conversion is expressed as a *plan*: for every key of the target (diffusers) module, the
original key(s) it is made from and how. Applying a plan checks both directions - every target
key is produced and every original key is consumed (or explicitly discarded with a reason) -
and raises :class:`CheckpointKeyError` otherwise. Nothing is silently dropped.

diffusers' single-file helpers (``convert_ldm_unet_checkpoint`` ...) read keys with
``dict.get`` and skip what they do not recognise, so their output cannot be trusted to be
complete. :func:`trace_conversion` runs such a helper on shape-only stand-ins (``meta`` tensors,
one fresh tensor per original key) and reads back, by tensor identity, which original key each
output came from. The result is an explicit plan that is then audited like a hand-written one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saq_lightning.errors import UserError

Transform = Callable[[list[Tensor]], Tensor]


class CheckpointKeyError(UserError, ValueError):
    """A checkpoint does not match the architecture key for key (unused, missing or misshapen)."""


@dataclass(frozen=True)
class Rule:
    """How one target tensor is made: from ``sources`` (original keys) through ``transform``.

    ``transform=None`` means "the single source", allowing only singleton dimensions to be added
    or removed (the one shape change plain renames need: 1x1 conv kernels <-> linear weights).
    """

    sources: tuple[str, ...]
    transform: Transform | None = None


Plan = dict[str, Rule]


@dataclass
class ConversionReport:
    """What happened to every key of an original checkpoint."""

    converted: dict[str, int] = field(default_factory=dict)  # component -> original keys it consumed
    discarded: dict[str, str] = field(default_factory=dict)  # original key -> why it is not needed

    def discard(self, keys: Iterable[str], reason: str) -> None:
        for key in keys:
            self.discarded[key] = reason

    def summary(self) -> str:
        parts = [f"{name}: {n} original tensors converted" for name, n in self.converted.items()]
        reasons: dict[str, int] = {}
        for reason in self.discarded.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        parts += [f"discarded {n} ({reason})" for reason, n in reasons.items()]
        return "; ".join(parts)


def _preview(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def trace_conversion(
    convert: Callable[[dict[str, Tensor]], Mapping[str, Tensor | None]],
    shapes: Mapping[str, torch.Size | tuple[int, ...]],
) -> Plan:
    """Turn a renaming converter into an explicit :data:`Plan` by running it on ``meta`` stand-ins.

    ``convert`` receives ``{original key: meta tensor}`` and returns ``{target key: tensor}``;
    each output must be one of the inputs or a view of one (slicing away singleton dims). An
    output that is ``None`` (the helper looked up a key that is not there) raises.
    """
    probes = {key: torch.empty(tuple(shape), device="meta") for key, shape in shapes.items()}
    by_id = {id(t): key for key, t in probes.items()}
    plan: Plan = {}
    absent = []
    for target, out in convert(dict(probes)).items():
        if out is None:
            absent.append(target)
            continue
        source = by_id.get(id(out))
        if source is None and out._base is not None:
            source = by_id.get(id(out._base))
        if source is None:
            raise CheckpointKeyError(f"converter produced {target!r} from no known original tensor")
        plan[target] = Rule((source,))
    if absent:
        raise CheckpointKeyError(
            f"the converter expected original keys that the checkpoint lacks, for targets: {_preview(absent)}"
        )
    return plan


def apply_plan(
    plan: Plan,
    state_dict: Mapping[str, Tensor],
    target_shapes: Mapping[str, torch.Size | tuple[int, ...]],
    what: str,
) -> dict[str, Tensor]:
    """Build the target state dict, checking that the plan uses every original key exactly.

    ``state_dict`` is one component's original tensors (prefix stripped); ``target_shapes`` is
    the target module's ``state_dict`` shapes. Raises :class:`CheckpointKeyError` naming the
    unused original keys, the missing target keys, unknown target keys or shape mismatches.
    """
    used = {src for rule in plan.values() for src in rule.sources}
    unused = set(state_dict) - used
    absent_sources = used - set(state_dict)
    missing = set(target_shapes) - set(plan)
    unexpected = set(plan) - set(target_shapes)
    problems = []
    if unused:
        problems.append(f"{len(unused)} original keys the converter does not know: {_preview(unused)}")
    if absent_sources:
        problems.append(f"{len(absent_sources)} original keys missing: {_preview(absent_sources)}")
    if missing:
        problems.append(f"{len(missing)} {what} keys not produced: {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} produced keys {what} does not have: {_preview(unexpected)}")
    if problems:
        raise CheckpointKeyError(f"{what}: " + "; ".join(problems))

    out: dict[str, Tensor] = {}
    bad_shapes = []
    for target, rule in plan.items():
        tensors = [state_dict[s] for s in rule.sources]
        shape = tuple(target_shapes[target])
        if rule.transform is not None:
            value = rule.transform(tensors)
        elif _drop_ones(tensors[0].shape) == _drop_ones(shape):
            value = tensors[0].reshape(shape)  # 1x1 conv kernel <-> linear weight
        else:
            value = tensors[0]
        if tuple(value.shape) != shape:
            bad_shapes.append(f"{target} <- {rule.sources}: {tuple(value.shape)} vs {shape}")
            continue
        out[target] = value
    if bad_shapes:
        raise CheckpointKeyError(
            f"{what}: {len(bad_shapes)} shape mismatches (checkpoint from another architecture or "
            f"a config that does not match it?): " + "; ".join(bad_shapes[:8])
        )
    return out


def _drop_ones(shape: Iterable[int]) -> tuple[int, ...]:
    return tuple(s for s in shape if s != 1)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def load_exact(module: torch.nn.Module, state_dict: Mapping[str, Tensor], what: str, assign: bool = False) -> None:
    """``load_state_dict`` that names every missing or unexpected key in one error."""
    expected = set(module.state_dict())
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise CheckpointKeyError(
            f"{what}: missing keys {_preview(missing)}; unexpected keys {_preview(unexpected)}"
        )
    module.load_state_dict(dict(state_dict), strict=True, assign=assign)
