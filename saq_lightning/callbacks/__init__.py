"""Lightning callbacks: the mixstep schedule, sample grids, the non-finite-loss guard."""

from .mixstep import MixStepCallback
from .nonfinite import NonFiniteGuard, NonFiniteLossError
from .sample_grid import SampleGridCallback

__all__ = ["MixStepCallback", "NonFiniteGuard", "NonFiniteLossError", "SampleGridCallback"]
