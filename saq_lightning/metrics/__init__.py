"""Evaluation: sampling for evaluation, quality metrics, trajectory diagnostics (``docs/evaluation.md``).

Modules are imported where used (the metrics pull in torchmetrics, torch-fidelity, open_clip):

* ``sample_generation``, ``sampling_run``, ``students`` - what ``python -m saq_lightning sample`` runs;
* ``evaluation`` (with ``npz_format``, ``inception``, ``clip_score``, ``reference_stats``,
  ``feature_stats``, ``kid``, ``inception_score``, ``precision_recall``) - ``evaluate``;
* ``trajectory_diagnostics``, ``plots`` - ``diagnose`` and the trajectory-deviation callback;
* ``digits_classifier``, ``digits_quality``, ``digits_eval`` - the embedded default's FD and
  class accuracy; ``grids`` - PNG sample grids.
"""
