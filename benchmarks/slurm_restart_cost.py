"""Time lost per preemption of a ``fit`` job, by part, on a real one-node SLURM cluster.

Starts the test suite's cluster (tests/slurm_cluster.py: installs slurm-wlm + munge as root when
missing), runs ``slurm/fit.sbatch`` on the reduced digits W4A4 config of tests/test_slurm_cluster.py
(2 CPU tasks, gloo), and once ``last.ckpt`` reaches step 4 stops it the way a preemption does:
``--mode usr1`` sends the job's steps SIGUSR1 (``--signal``, or a preemption with the user signal),
``--mode priority`` submits an ``urgent`` job that needs every CPU (partition-priority preemption,
``PreemptMode=REQUEUE``, SIGTERM only). A watcher timestamps each job-log line when it appears and
each new checkpoint step, which splits the time from the signal to the first step of the resumed
start into:

* ``stop``: signal -> ``requeue.ckpt`` saved and ``scontrol requeue`` done (the step in flight, the save);
* ``requeue``: -> the batch script starts again (the tasks exit, the scheduler starts the job);
* ``slurm_check``: -> the pre-``srun`` check done;
* ``task_start``: -> the task printed which checkpoint it resumes (Python, torch, Lightning, config);
* ``first_step``: -> the resumed run's first checkpoint (model, DDP rendezvous, restore, one step).

Prints a table, writes ``benchmarks/results/slurm_restart_cost.json`` with the commit and the load
average, and ends with one summary line ``restart_cost_s=<total> step_s=<one uninterrupted step>``.

    python benchmarks/slurm_restart_cost.py [--mode usr1|priority]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
RESULTS = REPO / "benchmarks" / "results" / "slurm_restart_cost.json"
MARKS = {  # job-log line -> the event it marks
    "requeued": re.compile(r"SLURM: signal \d+ at step \d+: saved .*requeued job"),
    "restarted": re.compile(r"slurm/fit\.sbatch: job \d+ start 1 on"),
    "checked": re.compile(r"^fit: \d+ node"),
    "resumes": re.compile(r"SLURM: fit resumes"),
}


class Watcher(threading.Thread):
    """Timestamps the first appearance of each MARKS line after ``armed`` and each checkpoint step."""

    def __init__(self, log: Path, last: Path) -> None:
        super().__init__(daemon=True)
        self.log, self.last = log, last
        self.seen: dict[str, float] = {}
        self.steps: dict[int, float] = {}
        self.offset = 0
        self.stop = threading.Event()

    def arm(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.seen = {}  # the first start's lines do not count

    def run(self) -> None:
        from test_slurm_cluster import checkpoint_step

        mtime = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if self.log.exists():
                text = self.log.read_bytes()[self.offset:].decode(errors="replace")  # offset in bytes
                for name, pattern in MARKS.items():
                    if name not in self.seen and any(pattern.search(line) for line in text.splitlines()):
                        self.seen[name] = now
            if self.last.exists() and self.last.stat().st_mtime != mtime:
                mtime = self.last.stat().st_mtime
                step = checkpoint_step(self.last)
                if step >= 0:
                    self.steps.setdefault(step, now)
            time.sleep(0.2)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("usr1", "priority"), default="usr1")
    args = parser.parse_args()
    from slurm_cluster import start_cluster
    from test_slurm_cluster import checkpoint_step, job_info, reduced_config, submit, wait_for

    folder = Path(tempfile.mkdtemp(prefix="saqbench", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="saqbench-work"))
    cluster = start_cluster(folder)
    cluster.env.update(PYTHONPATH=str(REPO), SAQ_PYTHON=sys.executable, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    loads = [os.getloadavg()[0]]
    root = work / "fit"
    log, last = root / "fit.out", root / "run" / "checkpoints" / "last.ckpt"
    watcher = Watcher(log, last)
    try:
        gen = reduced_config(work / "gen", work / "trajectories")
        subprocess.run([sys.executable, "-m", "saq_lightning", "generate", "--config", str(gen), "--accelerator", "cpu",
                        "--progress", "false"], env=cluster.env, check=True, capture_output=True, timeout=1200)
        config = reduced_config(root, work / "trajectories")
        watcher.start()
        job = submit(cluster, "fit.sbatch", [str(config)], log, "--ntasks-per-node=2")
        wait_for(lambda: checkpoint_step(last) >= 4, 1200, "last.ckpt at step 4")
        watcher.arm()
        signalled = time.monotonic()
        loads.append(os.getloadavg()[0])
        if args.mode == "usr1":
            cluster.run("scancel", "--signal=USR1", job)
        else:
            cluster.run("sbatch", "--parsable", "-p", "urgent", "-n", "1", "-c", str(cluster.cpus), "-o",
                        str(root / "urgent.out"), "--wrap", "sleep 1")
        saved = wait_for(lambda: max(checkpoint_step(root / "run" / "requeue.ckpt"), 0), 1200, "requeue.ckpt")
        wait_for(lambda: any(s > saved and t > signalled for s, t in watcher.steps.items()), 1800,
                 "the resumed run's first checkpoint")
        loads.append(os.getloadavg()[0])
        resumed_at = min(t for s, t in watcher.steps.items() if s > saved and t > signalled)
        before = sorted((s, t) for s, t in watcher.steps.items() if t <= signalled)
        step_s = (before[-1][1] - before[0][1]) / max(1, before[-1][0] - before[0][0]) if len(before) > 1 else float("nan")
        info = job_info(cluster, job)
    finally:
        watcher.stop.set()
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    points = [("signal", signalled), *((n, watcher.seen.get(n)) for n in MARKS), ("first_step", resumed_at)]
    parts: dict[str, float | None] = {}
    previous = signalled
    for (name, at), label in zip(points[1:], ("stop", "requeue", "slurm_check", "task_start", "first_step")):
        parts[label] = None if at is None else round(at - previous, 1)
        previous = at if at is not None else previous
    total = round(resumed_at - signalled, 1)
    print(f"{'part':<12} {'seconds':>8}")
    for name, value in parts.items():
        print(f"{name:<12} {value if value is not None else 'n/a':>8}")
    print(f"{'total':<12} {total:>8}")
    print(f"one uninterrupted step: {step_s:.1f} s; load average {min(loads):.1f}-{max(loads):.1f}; "
          f"restarts {info.get('Restarts')}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"commit": commit(), "mode": args.mode, "parts_s": parts, "total_s": total,
                                   "step_s": round(step_s, 2), "load_average": [round(x, 1) for x in loads],
                                   "restarts": info.get("Restarts"), "cpus": os.cpu_count()}, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"restart_cost_s={total} step_s={step_s:.1f}")


if __name__ == "__main__":
    main()
