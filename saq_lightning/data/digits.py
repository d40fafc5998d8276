"""scikit-learn's handwritten digits (1,797 real 8x8 images, shipped with the package)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

DIGITS_SHAPE = (1, 8, 8)


def load_digits_tensors(size: int = 8) -> tuple[Tensor, Tensor]:
    """All digits as ``float32 [N, 1, size, size]`` in ``[-1, 1]`` and labels ``int64 [N]``.

    The raw pixel values are 0..16; ``x / 8 - 1`` maps them to ``[-1, 1]``. ``size > 8`` upsamples
    bilinearly (the embedded default uses the native 8x8).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if size != 8:
        if size < 8:
            raise ValueError(f"digits size must be >= 8 (native resolution), got {size}")
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear")
        images = images.clamp(-1.0, 1.0)
    return images, labels


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A deterministic train/validation split of ``range(n)``."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def digits_split(split: str, val_fraction: float = 0.15, seed: int = 0, size: int = 8) -> tuple[Tensor, Tensor]:
    """Images and labels of the ``train``, ``val`` or ``all`` split."""
    images, labels = load_digits_tensors(size)
    if split == "all":
        return images, labels
    train_idx, val_idx = split_indices(len(labels), val_fraction, seed)
    if split == "train":
        return images[train_idx], labels[train_idx]
    if split == "val":
        return images[val_idx], labels[val_idx]
    raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")


class DigitsDataModule(L.LightningDataModule):
    """Batches of ``(image [B,1,8,8] in [-1,1], label [B])`` from scikit-learn's digits."""

    def __init__(
        self,
        batch_size: int = 128,
        val_fraction: float = 0.15,
        seed: int = 0,
        size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.size = size
        self.num_workers = num_workers
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            self._train = TensorDataset(*digits_split("train", self.val_fraction, self.seed, self.size))
            self._val = TensorDataset(*digits_split("val", self.val_fraction, self.seed, self.size))

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "call setup() first"
        return DataLoader(
            self._train, batch_size=self.batch_size, shuffle=True, drop_last=True,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        assert self._val is not None, "call setup() first"
        return DataLoader(self._val, batch_size=self.batch_size, num_workers=self.num_workers)
