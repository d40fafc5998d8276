"""Initial noise and conditions of trajectory / sample indices: pure functions of (seed, index).

``generate``, the on-the-fly mode, calibration and the sample grids all draw their inputs from
here, so a trajectory is reproducible from its index alone. Class labels use the data layer's
class-balanced sequence (the same one the on-the-fly data module streams).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saq_lightning.models import DiffusionModel
from saq_lightning.seeding import training_labels, training_noise


def real_class_count(model: DiffusionModel) -> int | None:
    """Number of real classes of a class-conditional model (its null class excluded), else ``None``."""
    cond = model.conditioner
    if cond is None or not hasattr(cond, "null_class"):
        return None
    total = getattr(cond, "num_classes", None)
    if total is None and hasattr(cond, "embedding"):
        total = int(cond.embedding.num_embeddings)
    if total is None:
        return None
    null = int(cond.null_class)
    if null != total - 1:
        raise ValueError(f"the model's null class {null} is not its last class ({total - 1}): set "
                         f"generation.num_classes to the number of real classes")
    return total - 1


class ConditionSource:
    """Raw conditions by index: class labels, tokenized prompts, or ``None`` (unconditional).

    Args:
        model: the diffusion model (decides the kind of condition).
        seed: seeds the class-balanced label sequence.
        num_classes: real classes of a class model (default: from its conditioner).
        prompts: text models: a file with one prompt per line; index ``i`` uses line
            ``i % lines``. Without it a text model gets the empty prompt.
    """

    def __init__(
        self,
        model: DiffusionModel,
        seed: int = 0,
        num_classes: int | None = None,
        prompts: str | None = None,
    ) -> None:
        self.model = model
        self.seed = int(seed)
        self.kind = self._kind(model)
        self.num_classes = None
        self.prompts: list[str] | None = None
        self.prompts_path = prompts
        if self.kind == "class":
            self.num_classes = int(num_classes) if num_classes is not None else real_class_count(model)
            if not self.num_classes or self.num_classes < 1:
                raise ValueError("a class-conditional model needs generation.num_classes >= 1")
        elif self.kind == "text" and prompts is not None:
            path = Path(prompts).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"prompts file {path} (generation.prompts) does not exist")
            self.prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not self.prompts:
                raise ValueError(f"prompts file {path} holds no prompt")

    @staticmethod
    def _kind(model: DiffusionModel) -> str:
        cond = model.conditioner
        if cond is None:
            return "none"
        if hasattr(cond, "tokenize"):
            return "text"
        return "class"

    def __call__(self, indices: Sequence[int], device: torch.device | str | None = None) -> Tensor | None:
        indices = [int(i) for i in indices]
        if self.kind == "none":
            return None
        if self.kind == "class":
            return training_labels(self.seed, indices, self.num_classes).to(device)
        if self.prompts is None:
            return self.model.null_cond(len(indices), device=device)
        lines = [self.prompts[i % len(self.prompts)] for i in indices]
        return self.model.conditioner.tokenize(lines, device=device)

    def describe(self) -> dict[str, Any]:
        """What the conditions are, for the trajectory manifest."""
        if self.kind == "class":
            return {"type": "class_labels", "num_classes": self.num_classes, "balanced": True}
        if self.kind == "text":
            if self.prompts is None:
                return {"type": "text", "prompts": None}
            digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()
            return {"type": "text", "prompts": len(self.prompts), "prompts_sha256": digest}
        return {"type": "none"}


def noise_for(seed: int, indices: Sequence[int], shape: Sequence[int], device: torch.device | str | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``x_T`` of the given indices (drawn on the CPU: identical on every device)."""
    return training_noise(seed, list(indices), shape).to(device=device, dtype=dtype)
