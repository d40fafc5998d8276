"""The two seeded noise streams: one for training, one for evaluation, each a pure function of
``(seed, sample index)``.

Sample ``n``'s initial noise ``x_T`` comes from its own generator, so the result does not depend
on the batch size, the number of ranks or workers, or on being resumed. The two streams are
*different on purpose* and keep distinct names, because the published figures were measured with
them as they are:

* **training** (``training_*``): the noise of trajectory shards, on-the-fly batches, calibration
  and validation points. Generator seed ``SeedSequence([seed, 1, n])``; class labels come in
  blocks of ``num_classes`` consecutive samples, each block a permutation of all classes seeded by
  ``SeedSequence([seed, 2, block])``.
* **evaluation** (``evaluation_*``): the noise of sample files (``sample``), students' sampling,
  trajectory diagnostics and the digits FD. Generator seed ``(seed * 0x9E3779B97F4A7C15 + n) mod
  2**63``; the label of sample ``n`` is ``classes[n % K]`` (not seeded: 50 000 samples of a
  1000-class model give 50 per class).

So the training noise of a seed is never the evaluation noise of the same seed: a student is not
evaluated on the points it was trained on.

Imports nothing of the package: every layer may import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

_EVALUATION_MIX = 0x9E3779B97F4A7C15


def _noise(seeds: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds])


def training_sample_seed(seed: int, index: int) -> int:
    """The generator seed of training sample ``index``."""
    return int(np.random.SeedSequence([seed, 1, index]).generate_state(1, np.uint64)[0] >> 1)


def training_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Training ``x_T`` of the given global sample indices: ``[len(indices), *shape]`` float32, CPU."""
    return _noise([training_sample_seed(seed, int(n)) for n in indices], shape)


def training_labels(seed: int, indices: Sequence[int], num_classes: int) -> torch.Tensor:
    """Training class labels: block ``n // num_classes`` is a seeded permutation of all classes."""
    labels = []
    for n in indices:
        block, pos = divmod(int(n), num_classes)
        perm = np.random.default_rng([seed, 2, block]).permutation(num_classes)
        labels.append(int(perm[pos]))
    return torch.tensor(labels, dtype=torch.long)


def evaluation_sample_seed(seed: int, index: int) -> int:
    """The generator seed of evaluation sample ``index`` (a fixed mix of the run seed and the index)."""
    return (seed * _EVALUATION_MIX + index) % (1 << 63)


def evaluation_noise(seed: int, indices: Sequence[int], shape: Sequence[int]) -> torch.Tensor:
    """Evaluation ``x_T`` of the given sample indices: ``[len(indices), *shape]`` float32, CPU."""
    return _noise([evaluation_sample_seed(seed, int(i)) for i in indices], shape)


def evaluation_labels(indices: Sequence[int], classes: Sequence[int]) -> torch.Tensor:
    """``classes[i % K]`` for every index: class-balanced when the count is a multiple of ``K``."""
    return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)
