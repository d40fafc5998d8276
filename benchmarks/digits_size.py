"""The digits default at another resolution, for the ablations that need a second D (issue 22).

The real digits upsampled bilinearly to ``size x size`` (``load_digits_tensors(size)``), a teacher
of the same UNet (``DIGITS_UNET_CONFIG`` with ``sample_size = size``) trained on them by the same
``DDPMPretrainModule`` recipe as ``configs/digits_teacher.yaml`` (only the step count differs: it is
stated in the results), exported to ``runs/`` (never into the package: the shipped 8x8 teacher is
not replaced), and a model spec ``digits<size>.yaml`` next to it that training configs point at.

    python benchmarks/digits_size.py --size 16 --steps 1200    # trains runs/digits16_teacher/
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import yaml

from saq_lightning.models.digits import DIGITS_UNET_CONFIG, sidecar_path

#: configs/digits_teacher.yaml's recipe; the warm-up and EMA scale with the step count (below)
TEACHER_LR, TEACHER_CFG_DROPOUT, TEACHER_BATCH, TEACHER_CLIP = 0.002, 0.1, 128, 1.0
RECIPE_STEPS, RECIPE_WARMUP, RECIPE_EMA = 15000, 300, 0.999


def teacher_recipe(steps: int) -> dict[str, Any]:
    """``configs/digits_teacher.yaml``'s recipe for a run of ``steps``.

    The EMA keeps the 8x8 recipe's horizon as a share of the run, ``1 - ema = 15 / steps`` (0.999
    at 15,000 steps): with 0.999 a 1,500-step run still carries 0.999^1500 = 22 % of its first
    steps' (near-random) weights in the exported EMA. The warm-up is 300 steps, at most 1/12 of
    the run.
    """
    return {"lr": TEACHER_LR, "cfg_dropout": TEACHER_CFG_DROPOUT,
            "warmup_steps": max(1, min(RECIPE_WARMUP, steps // 12)),
            "ema_decay": max(0.0, min(RECIPE_EMA, 1 - (1 - RECIPE_EMA) * RECIPE_STEPS / steps))}  # 0: no EMA


def teacher_dir(size: int, root: Path = Path("runs")) -> Path:
    return root / f"digits{size}_teacher"


def teacher_weights(size: int, root: Path = Path("runs")) -> Path:
    return teacher_dir(size, root) / f"digits{size}_teacher.safetensors"


def unet_config(size: int) -> dict[str, Any]:
    """The 8x8 teacher's UNet at ``size x size`` (same blocks and widths)."""
    return {**copy.deepcopy(DIGITS_UNET_CONFIG), "sample_size": size}


def train_teacher(size: int, steps: int, root: Path = Path("runs")) -> Path:
    """Train (or, exported already, reuse) the ``size`` teacher; returns its weights path."""
    import lightning as L

    from saq_lightning.data.digits import DigitsDataModule
    from saq_lightning.lightning.pretrain import DDPMPretrainModule

    weights = teacher_weights(size, root)
    if weights.is_file():
        trained = json.loads(sidecar_path(weights).read_text())["training"]["global_step"]
        if trained != steps:
            raise ValueError(f"{weights} was trained for {trained} steps, not --teacher_steps {steps}; "
                             "move it away to retrain, or pass its step count")
        return weights
    L.seed_everything(0)
    module = DDPMPretrainModule(unet_config=unet_config(size), export_path=str(weights),
                                **teacher_recipe(steps))
    trainer = L.Trainer(max_steps=steps, accelerator="auto", devices=1, precision="32-true",
                        gradient_clip_val=TEACHER_CLIP, log_every_n_steps=50, val_check_interval=500,
                        check_val_every_n_epoch=None, num_sanity_val_steps=0, enable_checkpointing=False,
                        default_root_dir=str(teacher_dir(size, root)), enable_model_summary=False,
                        logger=L.pytorch.loggers.TensorBoardLogger(str(teacher_dir(size, root)), name="tb"))
    t0 = time.perf_counter()
    trainer.fit(module, DigitsDataModule(batch_size=TEACHER_BATCH, seed=0, size=size))
    side = sidecar_path(weights)
    meta = json.loads(side.read_text())
    meta["data"] = f"sklearn.datasets.load_digits, x/8-1 in [-1,1], bilinear upsample to 1x{size}x{size}"
    meta["training"].update(seconds=time.perf_counter() - t0, **teacher_recipe(steps))
    side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return weights


REPO = Path(__file__).resolve().parents[1]


def model_spec(size: int, weights: Path, base: Path = REPO / "configs" / "models" / "digits.yaml") -> Path:
    """``configs/models/digits.yaml`` with ``weights`` (absolute), written next to the weights."""
    spec = yaml.safe_load(base.read_text())
    spec.update(name=f"digits{size}", weights=str(weights.resolve()),
                weights_source=f"benchmarks/digits_size.py --size {size}")
    path = weights.parent / f"digits{size}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--steps", type=int, required=True, help="teacher optimizer steps")
    args = parser.parse_args()
    weights = train_teacher(args.size, args.steps)
    print(f"teacher: {weights}; model spec: {model_spec(args.size, weights)}")


if __name__ == "__main__":
    main()
