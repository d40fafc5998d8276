"""The students a command can name with ``--student`` and how each is loaded (``docs/evaluation.md``).

* ``ref`` - :class:`StudentRef`: the ``--student`` string parsed once (FP, ``naive:<policy>``,
  export folder, checkpoint), with ``load(runtime=...)``, ``identity()``, ``trained_sampler()``;
* ``checkpoint`` - ``load_student``: a ``fit``/``ptq`` checkpoint's student;
* ``naive`` - ``naive_student``: the calibrated post-training baseline;
* ``runtime`` - the arithmetic a student runs with (``--runtime fake|int|weight_only``);
* ``trained_sampler`` - the sampler a checkpoint's student was trained for.

Lightning-free, but above the method's checkpoint identity (``lightning/checkpointing.py``): a
student checkpoint is read here, so the package sits where those readers may be imported from,
below the commands that take ``--student``.
"""

from .checkpoint import load_student
from .ref import NaiveCalibration, StudentRef, load_sampling_model

__all__ = ["NaiveCalibration", "StudentRef", "load_sampling_model", "load_student"]
