"""Trajectory data: WebDataset shards of teacher trajectories, the training data module, the
mixstep schedule, and the digits dataset of the embedded default (see ``docs/data.md``)."""

from .errors import ManifestError, ManifestMismatchError, ResumeMismatchError, ShardError
from .manifest import Manifest, load_manifest
from .mixstep import MixStepPhase, MixStepSchedule
from .shard_writer import WriteReport, write_trajectory_shards
from .trajectory_datamodule import TrajectoryDataModule
from .trajectory_records import trajectory_records

__all__ = [
    "Manifest",
    "ManifestError",
    "ManifestMismatchError",
    "MixStepPhase",
    "MixStepSchedule",
    "ResumeMismatchError",
    "ShardError",
    "TrajectoryDataModule",
    "WriteReport",
    "load_manifest",
    "trajectory_records",
    "write_trajectory_shards",
]
