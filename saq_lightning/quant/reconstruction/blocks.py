"""Reconstruction blocks of a quantized student, by module type and name pattern (never by index).

A block is the first module on every path from the root whose class name is in ``block_types``
or whose name matches one of ``block_patterns`` (fnmatch globs); its quantized layers are
reconstructed together. Quantized layers outside every block become one-layer blocks, so every
layer is reconstructed exactly once. Blocks are ordered by their first call in a forward pass
(the order of ``named_modules`` is the order of registration, which is not the execution order
in diffusers' UNets: ``up_blocks`` is registered before ``mid_block``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from saq_lightning.errors import UserError

from ..layers import QuantLayer


@dataclass
class Block:
    name: str
    module: nn.Module
    layers: list[tuple[str, QuantLayer]]

    @property
    def kind(self) -> str:
        return type(self.module).__name__


class BlockPatternError(UserError, ValueError):
    """A block type or pattern of the config matches no module."""


def find_blocks(
    unet: nn.Module, block_types: Sequence[str], block_patterns: Sequence[str], strict: bool = True
) -> list[Block]:
    """The blocks of ``unet`` (the student's inner UNet) in registration order.

    ``strict``: a type or pattern that selects no block raises :class:`BlockPatternError`.
    """
    modules = dict(unet.named_modules())
    blocks: list[Block] = []
    covered: set[str] = set()
    used_types, used_patterns = set(), set()

    def inside(name: str) -> bool:
        return any(name.startswith(b + ".") for b in covered)

    for name, m in modules.items():
        if not name or inside(name):
            continue
        hit_t = type(m).__name__ in block_types
        pats = [p for p in block_patterns if fnmatch.fnmatchcase(name, p)]
        if not (hit_t or pats):
            continue
        if hit_t:
            used_types.add(type(m).__name__)
        used_patterns.update(pats)
        layers = [(f"{name}.{n}" if n else name, sub) for n, sub in m.named_modules() if isinstance(sub, QuantLayer)]
        covered.add(name)
        if layers:
            blocks.append(Block(name, m, layers))
    missing = [f"ptq.block_types: {t!r}" for t in block_types if t not in used_types]
    missing += [f"ptq.block_patterns: {p!r}" for p in block_patterns if p not in used_patterns]
    if missing and strict:
        raise BlockPatternError(
            f"block definition(s) {', '.join(missing)} match no module of the "
            f"{type(unet).__name__} (module types here: "
            f"{sorted({type(m).__name__ for m in modules.values()})[:30]}); remove them or fix the name")
    for name, m in modules.items():
        if isinstance(m, QuantLayer) and name not in covered and not inside(name):
            blocks.append(Block(name, m, [(name, m)]))
            covered.add(name)
    return blocks


def execution_order(blocks: list[Block], run: Callable[[], object]) -> list[Block]:
    """``blocks`` sorted by their first call during ``run()``; blocks never called are dropped."""
    first: dict[str, int] = {}
    handles = []
    for b in blocks:
        def hook(mod, args, name=b.name):
            first.setdefault(name, len(first))
        handles.append(b.module.register_forward_pre_hook(hook))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    called = [b for b in blocks if b.name in first]
    return sorted(called, key=lambda b: first[b.name])
