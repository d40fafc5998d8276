"""Run the SLURM tests with CPU-bound processes beside them: the proof that they hold under load.

    python tests/slurm_under_load.py [--busy 6] [pytest arguments...]

starts ``--busy`` processes that spin on the CPU (nothing else: no memory, no I/O), runs
``pytest -p no:cacheprovider -n 0 tests/test_slurm_cluster.py tests/test_slurm_signals.py
tests/test_slurm_resume.py`` (or the pytest arguments given) beside them, stops the busy processes
by their pids, and prints the load average seen, the wall time and pytest's exit status, which is
also this script's. The tests wait on events with budgets sized for load 20 (tests/test_slurm_cluster.py),
so they must pass here; a failure names the event that did not come.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TESTS = ["tests/test_slurm_cluster.py", "tests/test_slurm_signals.py", "tests/test_slurm_resume.py"]
SPIN = "while True:\n    pass\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busy", type=int, default=6, help="CPU-bound processes beside the tests")
    args, pytest_args = parser.parse_known_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    start = time.monotonic()
    loads: list[float] = []
    try:
        tests = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", "-q",
                                  *(pytest_args or DEFAULT_TESTS)], cwd=REPO,
                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
        while tests.poll() is None:
            loads.append(os.getloadavg()[0])
            time.sleep(5)
        code = tests.returncode
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    minutes, seconds = divmod(int(time.monotonic() - start), 60)
    shown = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "n/a"
    print(f"slurm tests beside {args.busy} busy processes: pytest exit {code}, {minutes} min {seconds} s, "
          f"load average {shown}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
