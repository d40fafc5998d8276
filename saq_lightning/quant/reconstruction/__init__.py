"""SA-PTQ / BRECQ block reconstruction with AdaRound rounding (no Lightning, no samplers).

* :mod:`.blocks`: blocks by module type / name pattern, ordered by execution;
* :mod:`.recording`: block inputs with the quantized prefix (quantized side) and FP outputs;
* :mod:`.reconstruct`: one block's AdaRound + LSQ optimisation, data-parallel over ranks;
* :mod:`.pipeline`: the whole student, block by block, resumable;
* :mod:`.settings`: the ``ptq:`` config block.

The AdaRound rounding module itself is :class:`saq_lightning.quant.rounding.AdaRound`.
"""

from ..rounding import AdaRound
from .blocks import Block, BlockPatternError, execution_order, find_blocks
from .comm import Comm
from .objective import per_row_loss
from .pipeline import (
    CalibrationBatch,
    ReconstructionReport,
    ReconstructionStateError,
    reconstruct_student,
)
from .reconstruct import BlockResult, evaluate_block, reconstruct_block
from .recording import BlockCache, capture_call
from .settings import ReconstructionSettings

__all__ = [
    "AdaRound",
    "Block",
    "BlockCache",
    "BlockPatternError",
    "BlockResult",
    "CalibrationBatch",
    "Comm",
    "ReconstructionReport",
    "ReconstructionSettings",
    "ReconstructionStateError",
    "capture_call",
    "evaluate_block",
    "execution_order",
    "find_blocks",
    "per_row_loss",
    "reconstruct_block",
    "reconstruct_student",
]
