"""The method, without Lightning: the run object :class:`SAQSetup` (teacher, student, flow,
conditions, policy, settings), the teacher flow and its targets, the MOTA loss, the student's own
step, calibration, bucket binding, checkpoint identity, and the libraries behind ``generate`` and
``ptq``. Above ``quant/``, ``models/``, ``data/`` and ``sampling/``; below ``lightning/``."""
