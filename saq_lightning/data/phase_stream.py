"""A deterministic, skippable, endless stream of one phase selection's records.

For one (epoch, rank, virtual worker, selector) the stream walks the shards assigned to it in
passes. Each pass reads the shards in groups of ``group_size`` (the shuffle buffer, measured in
shards), shuffles each group's records with a seed derived from (seed, epoch, selector, rank,
worker, pass, group), and emits them. When the shards are exhausted the next pass starts in a
new order: a stream never runs dry, which is what keeps batch counts equal on every rank.

Because the manifest gives every shard's record count per phase, :meth:`PhaseStream.skip` moves
the position by arithmetic alone: resuming reads only the group it resumes in.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .batch_plan import Selector, selector_key
from .errors import ShardError
from .manifest import ShardInfo
from .shard_reader import Verify, read_shard_samples


def assign_shards(
    shards: Sequence[ShardInfo],
    selector: Selector,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world_size: int,
    worker: int,
    num_workers: int,
) -> list[ShardInfo]:
    """Shards of ``selector`` for one rank and (virtual) worker in one epoch.

    The eligible shards are shuffled identically on every rank (seeded by seed, epoch and
    selector), then split by node (``[rank::world_size]``, as ``webdataset.split_by_node``) and
    by worker (``[worker::num_workers]``, as ``webdataset.split_by_worker``): disjoint across
    ranks and workers within an epoch.
    """
    eligible = [s for s in shards if s.count_for(selector) > 0]
    rng = np.random.default_rng([seed, epoch, *selector_key(selector)])
    ordered = [eligible[i] for i in rng.permutation(len(eligible))]
    return ordered[rank::world_size][worker::num_workers]


class PhaseStream:
    """Endless shuffled records of ``selector`` from ``shards``; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        shards: Sequence[ShardInfo],
        selector: Selector,
        seed_key: Sequence[int],
        group_size: int = 4,
        verify: Verify = "sha256",
    ) -> None:
        self.root = Path(root)
        self.shards = list(shards)
        self.selector = selector
        self.seed_key = [int(k) for k in seed_key]
        self.group_size = max(1, int(group_size))
        self.verify = verify
        self.per_pass = sum(s.count_for(selector) for s in self.shards)
        if self.per_pass == 0:
            raise ValueError(f"no records of phases {selector} in the assigned shards")
        self.position = 0  # absolute index in the endless stream
        self._cache: tuple[tuple[int, int], list[dict[str, Any]]] | None = None
        self._groups: tuple[int, list[tuple[list[ShardInfo], int]]] | None = None

    def skip(self, n: int) -> None:
        self.position += int(n)

    def _pass_groups(self, pass_index: int) -> list[tuple[list[ShardInfo], int]]:
        """``(shards, record count)`` of every group of a pass (pass 0 keeps the given order)."""
        if self._groups is not None and self._groups[0] == pass_index:
            return self._groups[1]
        shards = self.shards
        if pass_index > 0:
            rng = np.random.default_rng([*self.seed_key, pass_index, 0])
            shards = [shards[i] for i in rng.permutation(len(shards))]
        g = self.group_size
        groups = [shards[i:i + g] for i in range(0, len(shards), g)]
        sized = [(group, sum(s.count_for(self.selector) for s in group)) for group in groups]
        self._groups = (pass_index, sized)
        return sized

    def _group_records(self, pass_index: int, group_index: int,
                       group: list[ShardInfo]) -> list[dict[str, Any]]:
        key = (pass_index, group_index)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        records: list[dict[str, Any]] = []
        for info in group:
            records += read_shard_samples(self.root / info.name, info, self.selector, self.verify)
        expected = sum(s.count_for(self.selector) for s in group)
        if len(records) != expected:
            names = ", ".join(str(self.root / s.name) for s in group)
            raise ShardError(f"{names}: {len(records)} records of phases {self.selector}, "
                             f"manifest says {expected}")
        rng = np.random.default_rng([*self.seed_key, pass_index, group_index + 1])
        records = [records[i] for i in rng.permutation(len(records))]
        self._cache = (key, records)
        return records

    def take(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` raw samples; reads (and verifies) shards only as needed."""
        out: list[dict[str, Any]] = []
        while len(out) < n:
            pass_index, offset = divmod(self.position, self.per_pass)
            for group_index, (group, size) in enumerate(self._pass_groups(pass_index)):
                if offset >= size:
                    offset -= size
                    continue
                records = self._group_records(pass_index, group_index, group)
                chunk = records[offset:offset + n - len(out)]
                out += chunk
                self.position += len(chunk)
                break
        return out
