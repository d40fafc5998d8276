"""Diffusion models behind one interface: :class:`DiffusionModel`, built from a :class:`ModelSpec`.

No quantization and no Lightning here; imports only ``sampling`` (schedules, guidance) lazily.
See ``docs/models.md`` for how to point a config at each real checkpoint.
"""

from .builders import build_diffusers_module
from .checkpoint_files import read_state_dict
from .conditioners import ClassEmbedder, ClassLabelConditioner, TextConditioner
from .diffusion_model import SCHEDULE_KEYS, DiffusionModel
from .key_accounting import CheckpointKeyError, ConversionReport
from .loading import build_model
from .specs import ModelSpec, load_model_spec

__all__ = [
    "SCHEDULE_KEYS",
    "CheckpointKeyError",
    "ClassEmbedder",
    "ClassLabelConditioner",
    "ConversionReport",
    "DiffusionModel",
    "ModelSpec",
    "TextConditioner",
    "build_diffusers_module",
    "build_model",
    "load_model_spec",
    "read_state_dict",
]
