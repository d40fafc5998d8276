"""A real one-node SLURM cluster on localhost for the test suite (slurmctld + slurmd + munged).

``start_cluster(folder)`` installs Debian's ``slurm-wlm`` and ``munge`` when they are missing
(only as root with package access; otherwise it raises :class:`ClusterUnavailable` with the
reason), writes a ``slurm.conf`` for this machine (one node with 2 x ``nproc`` CPUs, ``SlurmUser=root``,
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``), starts a private ``munged`` and
the two SLURM daemons with every file under ``folder``, and waits until the node is idle.
``Cluster.stop()`` first cancels every job and waits for their steps to end (the processes of
jobs still there after that are killed by pid: only processes that carry this cluster's
``SLURM_CONF``), then ends the daemons it started (by their pids), and nothing else.

Two partitions: ``test`` (the default) and ``urgent``, whose jobs preempt ``test``'s by partition
priority (``PreemptMode=REQUEUE``, ``GraceTime`` :data:`GRACE_S`). ``Cluster.configure(user_signal=...)``
turns Slurm 22.05's ``preempt_send_user_signal`` on or off (``scontrol reconfigure``): with it a
preempted job's steps get their ``--signal`` (SIGUSR1) besides SIGTERM.

Clients find the cluster through ``SLURM_CONF`` (``Cluster.env``); jobs inherit it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
GRACE_S = 60  # a preempted job's time between SIGTERM and its kill
DRAIN_S = 120  # cancelled jobs' steps to end at load 20 (save at a step boundary, exit), then KILL
DAEMONS = ("slurmctld", "slurmd", "munged")


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why."""


def _missing_binaries() -> list[str]:
    names = [*DAEMONS, "sbatch", "srun", "scontrol", "squeue", "scancel"]
    return [n for n in names if shutil.which(n) is None and not Path("/usr/sbin", n).exists()]


def ensure_installed() -> None:
    """apt-get install slurm-wlm and munge when a binary is missing (root and package access only)."""
    if not _missing_binaries():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(_missing_binaries())} missing) and "
                                 "installing slurm-wlm + munge needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("SLURM is not installed and there is no apt-get to install slurm-wlm + munge")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
            raise ClusterUnavailable(f"`{' '.join(cmd)}` failed (no package access?): {tail[0]}")
    if _missing_binaries():
        raise ClusterUnavailable(f"after installing {PACKAGES}: still missing {_missing_binaries()}")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a parent that does not reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def slurm_conf(folder: Path, cpus: int, memory_mb: int, ports: tuple[int, int], user_signal: bool = False) -> str:
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = ports
    # job ids from a random start: Lightning and `sample` derive the rendezvous port from the job id
    # (15000 + its last 4 digits), so two clusters (one per xdist worker) must not both run job 2
    first_job = 1000 + ctld_port % 8000
    user = "SlurmctldParameters=preempt_send_user_signal\n" if user_signal else ""
    return f"""\
{user}ClusterName=saqtest
FirstJobId={first_job}
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge.sock,cred_expire=5
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
KillWait=10
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime={GRACE_S}
PartitionName=urgent Nodes={host} MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
"""


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)
    cpus: int = 1
    memory_mb: int = 1024
    ports: tuple[int, int] = (0, 0)

    def configure(self, user_signal: bool) -> None:
        """Rewrite slurm.conf with or without ``preempt_send_user_signal`` and reload it."""
        conf = self.folder / "slurm.conf"
        conf.write_text(slurm_conf(self.folder, self.cpus, self.memory_mb, self.ports, user_signal))
        self.run("scontrol", "reconfigure")

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def job_processes(self) -> list[int]:
        """Processes started for this cluster's jobs (slurmstepd, srun, tasks, batch shells): they
        carry its SLURM_CONF and a job id (or are a slurmstepd); the daemons and this process are not
        counted."""
        mark = f"SLURM_CONF={self.env['SLURM_CONF']}".encode()
        skip = {os.getpid(), *self.pids.values()}
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in skip:
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                job = any(v.startswith(b"SLURM_JOB_ID=") for v in environ) or \
                    (entry / "cmdline").read_bytes().startswith(b"slurmstepd")  # not slurmctld's slurmscriptd
                if mark in environ and job and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
        return found

    def kill_tasks(self, job: str) -> list[int]:
        """SIGKILL the srun tasks of ``job`` (a hard kill, as a node failure: nothing can be saved;
        ``scancel --signal=KILL`` is a cancel in Slurm 22.05, whose SIGTERM a run acts on)."""
        killed = []
        for pid in self.job_processes():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"SLURM_JOB_ID={job}".encode() in environ and any(v.startswith(b"SLURM_STEP_ID=") for v in environ) \
                    and b"saq_lightning" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        return killed

    def drain(self, timeout: float = DRAIN_S) -> None:
        """Cancel every job, wait (``timeout``) until no job and no job process is left, then kill
        what is left by pid."""
        if "slurmctld" in self.pids:
            self.run("scancel", "--user", str(os.getuid()), check=False)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if not self.run("squeue", "-h", check=False).strip() and not self.job_processes():
                    return
                time.sleep(1)
        for pid in self.job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        self.drain()
        for name in ("slurmd", "slurmctld", "munged"):  # reverse start order
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)


def _read_pid(path: Path, timeout: float = 20) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.1)
    raise ClusterUnavailable(f"daemon did not write {path}")


def start_cluster(folder: Path) -> Cluster:
    """Install when needed, configure and start the cluster; raises ClusterUnavailable with the reason."""
    ensure_installed()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(exist_ok=True)
    # twice the cores: two 2-task jobs (the preempted fit and its uninterrupted reference) run side by
    # side; slurmd accepts the count with SlurmdParameters=config_overrides
    cpus = 2 * max(1, os.cpu_count() or 1)
    memory_mb = max(1024, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2)
    conf = folder / "slurm.conf"
    ports = (_free_port(), _free_port())
    conf.write_text(slurm_conf(folder, cpus, memory_mb, ports))
    key = folder / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # jobs must not inherit a launcher's placement: SLURM's own variables, nor torch.distributed's and
    # Lightning's (MASTER_PORT left by an in-process DDP test would give every job the same port)
    launcher = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "TORCHELASTIC_", "PL_")
    placement = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
                 "LOCAL_WORLD_SIZE")
    for var in [v for v in env if (v.startswith(launcher) or v in placement) and v != "SLURM_CONF"]:
        env.pop(var)
    cluster = Cluster(folder, env, cpus=cpus, memory_mb=memory_mb, ports=ports)
    try:
        subprocess.run([_sbin("munged"), "--force", f"--socket={folder}/munge.sock", f"--key-file={key}",
                        f"--log-file={folder}/munged.log", f"--pid-file={folder}/munged.pid",
                        f"--seed-file={folder}/munged.seed"], check=True, capture_output=True, timeout=30)
        cluster.pids["munged"] = _read_pid(folder / "munged.pid")
        subprocess.run([_sbin("slurmctld"), "-i", "-f", str(conf)], env=env, check=True, capture_output=True,
                       timeout=30)
        cluster.pids["slurmctld"] = _read_pid(folder / "slurmctld.pid")
        subprocess.run([_sbin("slurmd"), "-f", str(conf)], env=env, check=True, capture_output=True, timeout=30)
        cluster.pids["slurmd"] = _read_pid(folder / "slurmd.pid")
        end = time.monotonic() + 60
        while time.monotonic() < end:
            state = cluster.run("sinfo", "-h", "-o", "%T", check=False).strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        log = (folder / "slurmd.log").read_text()[-500:] if (folder / "slurmd.log").is_file() else ""
        raise ClusterUnavailable(f"the SLURM node did not become idle (sinfo: {state!r}); slurmd.log: {log}")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        cluster.stop()
        raise ClusterUnavailable(f"starting the SLURM daemons failed: {err}") from err
    except BaseException:
        cluster.stop()
        raise
