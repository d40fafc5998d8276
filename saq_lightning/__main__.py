"""``python -m saq_lightning``: under SLURM, the preemption signals are recorded before anything
heavy is imported (``lightning/early_signals.py``), so a signal during start-up is acted on later
instead of killing the task."""

import sys

from saq_lightning.lightning.early_signals import record_early_signals

if __name__ == "__main__":
    record_early_signals(sys.argv[1:])
    from saq_lightning.cli import main

    main()
