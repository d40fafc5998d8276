"""The ``slurm/`` batch scripts on a real one-node SLURM cluster started here (tests/slurm_cluster.py).

``configs/digits_w4a4.yaml`` reduced to 16 steps (checkpoint every 2 steps, logged every step, no
sample grids) runs as 2 srun tasks (CPU DDP, gloo). One job is preempted with SIGUSR1 mid-run,
requeues itself and resumes; then its step is killed with SIGKILL and the job is requeued by hand,
and it resumes from ``last.ckpt``. Its TensorBoard loss curve must equal an uninterrupted 2-task
job's: relative tolerance 1e-5 (resume restores the data position, optimizer and schedule, so on
CPU the values are equal up to float printing; the tolerance only covers gloo's reduction order).

Where SLURM cannot be installed or started (not root, no package access) every test here is skipped
with one line saying why; with ``CI=true`` that is a failure instead, so CI cannot pass without them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from slurm_cluster import GRACE_S, Cluster, ClusterUnavailable, alive, start_cluster

from saq_lightning.commands.demo import demo_run_config

REPO = Path(__file__).resolve().parents[1]
STEPS = 16
# Budgets of the waits, by part, for a machine at load 20 (2 cores shared with other suites); an idle
# machine needs a tenth of each. A wait that runs out names what it waited for.
START_S = 300  # sbatch -> a fit step: slurm_check, imports, config, teacher, calibration, DDP init
STEP_S = 20  # one training step of the reduced config (2 tasks) including its checkpoint
STOP_S = 60  # signal -> requeue.ckpt saved and scontrol run: the step in flight, the save, the requeue
REQUEUE_S = 120  # requeued job -> running again: its tasks exit (KillWait 10 s), the scheduler starts it
pytestmark = [pytest.mark.slow]


def shared_once(name: str, compute):
    """``compute()`` (a JSON value) once per test session, also under ``pytest -n 2``: the first
    xdist worker that needs it computes it, the other waits and reads the result (the scenario
    below takes minutes; it must not run once per worker). The few-KB results stay in
    ``/tmp/saqslurm-shared-<run id>``."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not uid:
        return compute()
    shared = Path(tempfile.gettempdir()) / f"saqslurm-shared-{uid}"
    shared.mkdir(exist_ok=True)
    path = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            path.write_text(json.dumps(compute()))
        return json.loads(path.read_text())


@pytest.fixture(scope="module")
def work():
    """This worker's job folders, outside pytest's numbered temp folders (other pytest sessions on
    the machine prune those while jobs still write there)."""
    folder = Path(tempfile.mkdtemp(prefix="saqslurm-work"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def fresh(work: Path, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))


@pytest.fixture
def job_dir(work, request) -> Path:
    return fresh(work, request.node.name[:40])


@pytest.fixture(scope="module")
def cluster():
    folder = Path(tempfile.mkdtemp(prefix="saqslurm", dir="/tmp"))  # short: the munge socket path
    try:
        started = start_cluster(folder)
    except ClusterUnavailable as err:
        shutil.rmtree(folder, ignore_errors=True)
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but the SLURM cluster tests cannot run: {err}")
        pytest.skip(f"SLURM tests skipped: {err}")
    # one intra-op thread per task: the 2 tasks of a job share 2 cores (and the suite runs beside them)
    started.env.update(PYTHONPATH=str(REPO), SAQ_PYTHON=sys.executable, PYTHONWARNINGS="ignore",
                       OMP_NUM_THREADS="1")
    yield started
    started.stop()
    shutil.rmtree(folder, ignore_errors=True)


def submit(cluster: Cluster, script: str, args: list[str], log: Path, *opts: str) -> str:
    out = cluster.run("sbatch", "--parsable", "-o", str(log), "-J", log.stem, "-D", str(log.parent),
                      *opts, str(REPO / "slurm" / script), *args)
    return out.strip().split(";")[0]


def job_info(cluster: Cluster, job: str) -> dict[str, str]:
    text = cluster.run("scontrol", "-o", "show", "job", job, check=False)
    return dict(re.findall(r"(\w+)=(\S+)", text.splitlines()[0])) if text.strip() else {}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_done(cluster: Cluster, job: str, timeout: float = START_S + STEPS * STEP_S) -> dict[str, str]:
    def finished():
        info = job_info(cluster, job)
        return info if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") else None
    return wait_for(finished, timeout, f"job {job} to finish", poll=1)


def checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - absent or being written
        return -1


def reduced_config(out: Path, shards: Path, evaluation: bool = False) -> Path:
    """``configs/digits_w4a4.yaml`` with its outputs under ``out``, 2 CPU devices, a short run; the
    evaluation callbacks (digits FD, trajectory deviation: minutes at load) only with ``evaluation``."""
    out.mkdir(parents=True, exist_ok=True)
    path = demo_run_config(REPO / "configs" / "digits_w4a4.yaml", out, STEPS)
    cfg = yaml.safe_load(path.read_text())
    trainer = cfg["trainer"]
    trainer.update(accelerator="cpu", devices=2, strategy="ddp", log_every_n_steps=1)
    callbacks = []
    for cb in trainer["callbacks"]:
        name = cb["class_path"].rsplit(".", 1)[-1]
        if name == "SampleGridCallback" or (not evaluation and name in EVALUATION_CALLBACKS):
            continue
        if name == "ModelCheckpoint":
            cb["init_args"]["every_n_train_steps"] = 2
        callbacks.append(cb)
    trainer["callbacks"] = callbacks
    cfg["mixstep"]["batches_per_phase"] = 3
    model = cfg["model"]["init_args"]
    model["calibration"] = {"num_samples": 8, "max_values_per_bucket": 256}
    model["generation"] = {"trajectories_per_phase": 8, "trajectories_per_shard": 2, "seed": 0}
    model["optimizer"]["warmup_steps"] = 2
    cfg["data"]["init_args"].update(shards=str(shards), batch_size=16)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


EVALUATION_CALLBACKS = ("DigitsFDCallback", "TrajectoryDeviationCallback")


def loss_curve(run_dir: Path) -> tuple[dict[int, float], list[Path]]:
    """``train/loss`` per step from every event file of the TensorBoard runs under ``run_dir/tb``
    (a step logged twice, before and after a resume, keeps its later value) and the run folders."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(p for p in (run_dir / "tb").iterdir() if p.is_dir())
    curve: dict[int, float] = {}
    for run in runs:
        for events in sorted(run.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
            acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
            acc.Reload()
            if "train/loss" in acc.Tags()["scalars"]:
                curve.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return curve, runs


@pytest.fixture(scope="module")
def shards(cluster, work):
    def generate():
        root = fresh(work, "shards")
        config = reduced_config(root / "gen", root / "trajectories")
        subprocess.run([sys.executable, "-m", "saq_lightning", "generate", "--config", str(config),
                        "--accelerator", "cpu", "--progress", "false"], env=cluster.env, check=True,
                       capture_output=True, timeout=300)
        return str(root / "trajectories")
    return Path(shared_once("shards", generate))


def preemption_scenario(cluster: Cluster, shards: Path, work: Path) -> dict:
    """Two 2-task jobs side by side: an uninterrupted reference, and one that gets SIGUSR1 after
    step 4 (self-requeue), then SIGKILL after step 10 and ``scontrol requeue``, and finishes; then
    its config is edited and the finished job requeued once more (it must refuse to start)."""
    roots = {name: fresh(work, name) for name in ("full", "preempted")}
    jobs = {name: submit(cluster, "fit.sbatch", [str(reduced_config(root, shards))], root / "fit.out",
                         "--ntasks-per-node=2") for name, root in roots.items()}
    root, job = roots["preempted"], jobs["preempted"]
    last = root / "run" / "checkpoints" / "last.ckpt"
    wait_for(lambda: checkpoint_step(last) >= 4, START_S + 4 * STEP_S, "last.ckpt at step 4")
    cluster.run("scancel", "--signal=USR1", job)  # to the job's steps (srun tasks), as --signal does
    wait_for(lambda: job_info(cluster, job).get("Restarts") == "1"
             and job_info(cluster, job).get("JobState") == "RUNNING", STOP_S + REQUEUE_S, "the self-requeued start")
    wait_for(lambda: checkpoint_step(last) >= 10, START_S + 10 * STEP_S, "last.ckpt at step 10 after the requeue")
    assert cluster.kill_tasks(job), "no task of the job to kill"  # hard kill of the tasks: nothing is saved
    wait_for(lambda: job_info(cluster, job).get("JobState") in ("FAILED", "COMPLETED", "CANCELLED"), REQUEUE_S,
             "the killed job to end")
    killed_at = checkpoint_step(last)
    cluster.run("scontrol", "requeue", job)
    infos = {name: wait_done(cluster, j) for name, j in jobs.items()}
    logs = {name: (r / "fit.out").read_text() for name, r in roots.items()}
    for name, info in infos.items():
        assert info["JobState"] == "COMPLETED", logs[name][-3000:]
    curve, runs = loss_curve(root / "run")
    full, full_runs = loss_curve(roots["full"] / "run")
    result = {"log": logs["preempted"], "restarts": infos["preempted"]["Restarts"], "root": str(root),
              "killed_at": killed_at, "final_step": checkpoint_step(last), "curve": sorted(curve.items()),
              "runs": len(runs), "full_curve": sorted(full.items()), "full_runs": len(full_runs)}
    config = root / "digits_w4a4.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["init_args"]["optimizer"]["lr"] = 0.001
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cluster.run("scontrol", "requeue", job)
    result["changed_state"] = wait_done(cluster, job, timeout=REQUEUE_S + START_S)["JobState"]
    result["changed_log"] = (root / "fit.out").read_text()[len(logs["preempted"]):]
    return result


@pytest.fixture(scope="module")
def preempted(cluster, shards, work):
    return shared_once("preempted", lambda: preemption_scenario(cluster, shards, work))


def test_sigusr1_saves_at_a_step_boundary_requeues_and_the_next_start_resumes(preempted):
    saved = re.search(r"SLURM: signal 10 at step (\d+): saved (\S+), requeued job", preempted["log"])
    assert saved, preempted["log"][-3000:]
    step, path = int(saved.group(1)), saved.group(2)
    assert path.endswith("requeue.ckpt") and 4 <= step < 10
    assert "start 1 on" in preempted["log"]
    assert f"resumes {path} (step {step})" in preempted["log"]  # no --ckpt_path was given


def test_hard_kill_then_requeue_resumes_from_the_newest_last_ckpt(preempted):
    last = Path(preempted["root"]) / "run" / "checkpoints" / "last.ckpt"
    assert preempted["killed_at"] >= 10
    assert f"resumes {last} (step {preempted['killed_at']})" in preempted["log"]
    assert preempted["restarts"] == "2"
    assert preempted["final_step"] == STEPS


def test_requeued_run_logs_the_uninterrupted_loss_curve_in_one_tensorboard_run(preempted):
    curve, full = dict(preempted["curve"]), dict(preempted["full_curve"])
    assert preempted["full_runs"] == 1 and preempted["runs"] == 1  # one version_N across three starts
    assert sorted(curve) == sorted(full) == list(range(STEPS))
    torch.testing.assert_close(torch.tensor([curve[s] for s in range(STEPS)]),
                               torch.tensor([full[s] for s in range(STEPS)]), rtol=1e-5, atol=0)


def test_requeued_job_whose_config_changed_stops_with_a_field_by_field_diff(preempted):
    text = preempted["changed_log"]
    assert preempted["changed_state"] == "FAILED"
    assert "the config changed since" in text
    assert "model.init_args.optimizer.lr: expected 0.0005, found 0.001" in text
    assert "Initializing distributed" not in text  # stopped before srun started anything


def preemption_by_priority(cluster: Cluster, shards: Path, work: Path, user_signal: bool) -> dict:
    """A fit on the ``test`` partition, preempted after step 4 by an ``urgent`` job that needs every
    CPU of the node (``PreemptMode=REQUEUE``, ``GraceTime``), with or without Slurm sending the
    job's ``--signal`` on preemption (``preempt_send_user_signal``)."""
    cluster.configure(user_signal=user_signal)
    root = fresh(work, f"priority{int(user_signal)}")
    job = submit(cluster, "fit.sbatch", [str(reduced_config(root, shards))], root / "fit.out", "--ntasks-per-node=2")
    last = root / "run" / "checkpoints" / "last.ckpt"
    wait_for(lambda: checkpoint_step(last) >= 4, START_S + 4 * STEP_S, "last.ckpt at step 4")
    urgent = cluster.run("sbatch", "--parsable", "-p", "urgent", "-n", "1", "-c", str(cluster.cpus), "-o",
                         str(root / "urgent.out"), "--wrap", "sleep 1").strip().split(";")[0]
    info = wait_done(cluster, job, timeout=GRACE_S + REQUEUE_S + START_S + STEPS * STEP_S)
    curve, runs = loss_curve(root / "run")
    return {"state": info["JobState"], "restarts": int(info.get("Restarts", "0")), "log": (root / "fit.out").read_text(),
            "curve": sorted(curve.items()), "runs": len(runs), "urgent": wait_done(cluster, urgent)["JobState"],
            "final_step": checkpoint_step(last)}


@pytest.mark.parametrize("user_signal", [False, True], ids=["slurm_defaults", "preempt_send_user_signal"])
def test_real_preemption_requeues_and_resumes_the_uninterrupted_loss_curve(cluster, shards, work, preempted,
                                                                           user_signal):
    """Finding 1: with Slurm's defaults (SIGTERM only) a preempted fit ended COMPLETED at step 9 of
    24 and was never requeued. Now it saves at a step boundary and requeues itself within the grace
    time, whichever signals arrive; the resumed run logs the uninterrupted curve (rtol 1e-5, as above)."""
    result = shared_once(f"priority{int(user_signal)}",
                         lambda: preemption_by_priority(cluster, shards, work, user_signal))
    log = result["log"]
    assert result["urgent"] == "COMPLETED"
    assert result["state"] == "COMPLETED" and result["restarts"] >= 1, log[-3000:]
    assert re.search(r"SLURM: signal (10|15) at step ([4-9]|1[0-5]): saved \S+requeue.ckpt, requeued job", log), \
        log[-3000:]
    assert result["final_step"] == STEPS and result["runs"] == 1
    curve, full = dict(result["curve"]), dict(preempted["full_curve"])
    assert sorted(curve) == sorted(full)
    torch.testing.assert_close(torch.tensor([curve[s] for s in range(STEPS)]),
                               torch.tensor([full[s] for s in range(STEPS)]), rtol=1e-5, atol=0)


def test_a_job_that_cannot_be_requeued_fails_with_one_line_and_the_resume_command(cluster, shards, job_dir):
    """Finding 4: under ``sbatch --no-requeue`` a SIGUSR1 ended the job COMPLETED (exit 0) at step 5
    of 24, and the suggested resubmission was refused."""
    config = reduced_config(job_dir, shards)
    job = submit(cluster, "fit.sbatch", [str(config)], job_dir / "fit.out", "--ntasks-per-node=2", "--no-requeue")
    last = job_dir / "run" / "checkpoints" / "last.ckpt"
    wait_for(lambda: checkpoint_step(last) >= 2, START_S + 2 * STEP_S, "last.ckpt at step 2")
    cluster.run("scancel", "--signal=USR1", job)
    info = wait_done(cluster, job, timeout=STOP_S + REQUEUE_S)
    text = (job_dir / "fit.out").read_text()
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", text[-3000:]
    lines = [line for line in text.splitlines() if "was not requeued" in line]
    saved = job_dir / "run" / "requeue.ckpt"
    assert len(lines) == 1, text[-3000:]
    assert f"Resume with: sbatch [options] slurm/fit.sbatch {config} --ckpt_path {saved}" in lines[0]
    assert checkpoint_step(saved) >= 2


def test_stopping_the_cluster_cancels_its_jobs_and_leaves_no_job_process(tmp_path_factory):
    """Finding 3: ``Cluster.stop()`` left the jobs' slurmstepd, srun and tasks running after a failed
    test; they loaded the machine and crashed later writing to deleted folders."""
    folder = Path(tempfile.mkdtemp(prefix="saqstop", dir="/tmp"))
    try:
        other = start_cluster(folder)
    except ClusterUnavailable as err:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"SLURM tests skipped: {err}")
    try:
        job = other.run("sbatch", "--parsable", "-o", str(folder / "sleep.out"), "--wrap", "srun sleep 600").strip()
        wait_for(lambda: job_info(other, job).get("JobState") == "RUNNING" and len(other.job_processes()) >= 3,
                 START_S, "the job's shell, srun and task")
        started = other.job_processes()
    finally:
        other.stop()
    left = [pid for pid in started if alive(pid)]
    shutil.rmtree(folder, ignore_errors=True)
    assert left == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]


def test_ntasks_per_node_other_than_the_trainer_devices_is_refused_before_srun(cluster, shards, job_dir):
    config = reduced_config(job_dir, shards)
    job = submit(cluster, "fit.sbatch", [str(config), "--trainer.devices", "1"], job_dir / "fit.out",
                 "--ntasks-per-node=2")
    assert wait_done(cluster, job, timeout=200)["JobState"] == "FAILED"
    text = (job_dir / "fit.out").read_text()
    assert "--ntasks-per-node=2 but trainer.devices is 1" in text
    assert not (job_dir / "run").exists()


def test_config_missing_on_the_compute_node_is_refused_before_srun(cluster, job_dir):
    job = submit(cluster, "fit.sbatch", [str(job_dir / "nowhere.yaml")], job_dir / "fit.out", "--ntasks-per-node=2")
    assert wait_done(cluster, job, timeout=100)["JobState"] == "FAILED"
    assert f"config {job_dir / 'nowhere.yaml'} does not exist on" in (job_dir / "fit.out").read_text()


SAMPLE = {"num_samples": 12, "steps": 3, "batch_size": 2, "grid_size": 0, "device": "cpu"}


def sample_config(out: Path, name: str) -> Path:
    path = out.parent / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**SAMPLE, "out": str(out)}))
    return path


def npz_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def single_process_samples(cluster, work):
    def run():
        out = fresh(work, "sample_single") / "single"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "saq_lightning", "sample", "--config",
                        str(sample_config(out, "single"))], env=cluster.env, check=True, capture_output=True,
                       timeout=300)
        return {k: {"dtype": str(a.dtype), "data": a.tolist()} for k, a in npz_arrays(out / "samples.npz").items()}
    return {k: np.asarray(v["data"], dtype=v["dtype"]) for k, v in shared_once("single_samples", run).items()}


def test_sample_with_two_srun_tasks_writes_the_single_process_npz(cluster, single_process_samples, job_dir):
    out = job_dir / "two_tasks"
    job = submit(cluster, "sample.sbatch", [str(sample_config(out, "two"))], job_dir / "sample.out",
                 "--ntasks-per-node=2")
    info = wait_done(cluster, job, timeout=300)
    assert info["JobState"] == "COMPLETED", (job_dir / "sample.out").read_text()[-2000:]
    meta = yaml.safe_load((out / "samples.json").read_text())
    assert meta["world_size"] == 2
    got = npz_arrays(out / "samples.npz")
    assert got.keys() == single_process_samples.keys()
    for key, want in single_process_samples.items():
        np.testing.assert_array_equal(got[key], want)


def test_sample_job_array_pieces_merge_into_the_single_process_npz(cluster, single_process_samples, job_dir):
    out = job_dir / "array"
    job = submit(cluster, "sample.sbatch", [str(sample_config(out, "array"))], job_dir / "sample_%a.out",
                 "--array=0-1", "--ntasks=1")
    for task in ("0", "1"):
        assert wait_done(cluster, f"{job}_{task}", timeout=300)["JobState"] == "COMPLETED"
    got = npz_arrays(out / "samples.npz")
    for key, want in single_process_samples.items():
        np.testing.assert_array_equal(got[key], want)
    assert not (out / "parts").exists()


def ptq_student(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "student.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def ptq_jobs(cluster, work):
    """Two 2-task ``ptq.sbatch`` jobs on the tiny teacher's paired shards: an uninterrupted one, and
    one whose tasks get SIGUSR1 (what ``--signal=SIGUSR1@90`` sends before the time limit) once its
    first two blocks are saved; it must requeue itself and finish from the saved blocks."""
    from ptq_helpers import paired_shards, ptq_config

    def run() -> dict:
        root = fresh(work, "ptq")
        spec, shards = paired_shards(root)
        jobs = {name: submit(cluster, "ptq.sbatch", [str(ptq_config(root / f"{name}.yaml", spec, shards,
                                                                     root / name))],
                             root / f"{name}.out", "--ntasks-per-node=2") for name in ("full", "requeued")}
        blocks = root / "requeued" / "ptq_state" / "blocks"
        wait_for(lambda: len(list(blocks.glob("*.pt"))) >= 2, 400, "two finished blocks")
        saved = {p.name: p.stat().st_mtime_ns for p in blocks.glob("*.pt")}
        cluster.run("scancel", "--signal=USR1", jobs["requeued"])  # to the job's steps, as --signal does
        wait_for(lambda: job_info(cluster, jobs["requeued"]).get("Restarts") == "1", 120, "the requeued start")
        infos = {name: wait_done(cluster, job) for name, job in jobs.items()}
        return {"root": str(root), "saved_before_signal": saved,
                "states": {name: info.get("JobState") for name, info in infos.items()},
                "restarts": {name: info.get("Restarts") for name, info in infos.items()}}
    return shared_once("ptq", run)


def test_ptq_sbatch_with_two_tasks_writes_the_student(ptq_jobs):
    root = Path(ptq_jobs["root"])
    assert ptq_jobs["states"]["full"] == "COMPLETED", (root / "full.out").read_text()[-3000:]
    assert ptq_jobs["restarts"]["full"] == "0"
    results = json.loads((root / "full" / "ptq_results.json").read_text())["blocks"]
    assert len(results) == len(list((root / "full" / "ptq_state" / "blocks").glob("*.pt"))) > 2


def test_ptq_sbatch_requeues_itself_on_usr1_and_resumes_to_the_uninterrupted_student(ptq_jobs):
    root = Path(ptq_jobs["root"])
    log = (root / "requeued.out").read_text()
    assert ptq_jobs["states"]["requeued"] == "COMPLETED", log[-3000:]
    assert ptq_jobs["restarts"]["requeued"] == "1"
    assert "requeued job" in log and "start 1 on" in log
    assert re.search(r"ptq complete: \d+ blocks \(([2-9]|\d\d+) loaded from an earlier run\)", log), log[-3000:]
    blocks = root / "requeued" / "ptq_state" / "blocks"
    # the blocks finished before the signal were loaded, not redone
    assert {name: (blocks / name).stat().st_mtime_ns for name in ptq_jobs["saved_before_signal"]} == \
        ptq_jobs["saved_before_signal"]
    a, b = ptq_student(root / "full"), ptq_student(root / "requeued")
    assert set(a) == set(b)
    # both are 2-rank runs (the same reduction order) and the resumed blocks were saved whole:
    # the student is the uninterrupted one up to float rounding of the re-run blocks' reductions
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-7)
        else:
            assert torch.equal(a[k], b[k]), k
