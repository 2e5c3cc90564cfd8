"""Dask on a real SLURM: a single-node SLURM (Debian's slurm-wlm 22.05 + munge) started on localhost.

What the single-node setup needs, and why (all of it in a fresh temporary folder; nothing in /etc is read):

- **Root.** slurmd starts every job step through slurmstepd, which switches to the job's user; that needs
  root. The tests are skipped when not run as root (CI runs as root: it apt-installs).
- **munge** (SLURM's ``auth/munge`` and ``cred/munge``): a 1 KiB random key (mode 0400, owner root, in a
  0755 folder that only root can write: munged checks this), and ``munged --force`` with its own socket,
  pid, log and seed files (here munged runs as root without --force too; with it, a lax permission on a
  parent folder elsewhere is a warning instead of a refusal). slurm.conf points SLURM at that socket
  with ``AuthInfo=socket=...``, so no system munged and no /etc/munge are needed.
- **slurm.conf** (``SLURM_CONF`` points every client command -- sinfo, srun, sbatch, and dask-jobqueue's
  sbatch/scancel -- at it; the daemons get ``-f``): ``SlurmUser=root`` and ``SlurmdUser=root``;
  ``SlurmctldHost=<hostname>(127.0.0.1)`` and ``NodeAddr=127.0.0.1`` so the host name need not resolve;
  ``SlurmctldPort``/``SlurmdPort`` set to free ports, so a system SLURM (6817/6818) or a second test run
  does not clash; state, spool, pid and log files in the temporary folder; the node line from
  ``slurmd -C`` (its CPUs, sockets, cores and RealMemory as slurmd itself measures them: a node
  configured with more than slurmd finds is drained as invalid), ``State=UNKNOWN``;
  ``PartitionName=debug Default=YES``.
- **No cgroups** (containers rarely let a process create cgroups): ``ProctrackType=proctrack/linuxproc``
  (tracks job processes by parent pid), ``TaskPlugin=task/none``, ``JobAcctGatherType=jobacct_gather/none``,
  ``AccountingStorageType=accounting_storage/none`` (no slurmdbd, so ``--account`` is not checked and
  ``sacct`` has nothing), ``SelectType=select/cons_tres`` with ``CR_Core_Memory`` (jobs get cores and
  memory; ``DefMemPerCPU`` keeps a job without ``--mem`` from taking the whole node),
  ``MpiDefault=none``, ``MailProg=/bin/true`` (else slurmctld logs "MailProg is invalid").
- **Daemons** run in the foreground (``-D``) as children of the test, in their own sessions; the finaliser
  cancels every job, waits for the queue to empty, stops slurmd, slurmctld and munged (SIGTERM, then
  SIGKILL), and then kills any process left whose environment names this SLURM (job steps, Dask workers).

On this machine (Debian bookworm in a container, 2 cores, no systemd) all of it works: ``sinfo`` shows the
node idle about a second after the daemons start, ``srun hostname`` and ``sbatch --wrap`` run, and
dask-jobqueue's SLURMCluster gets its workers in about 5 s. The messages slurmd and slurmctld print about
``mpi/pmix`` ("can not load PMIx library") are harmless: Debian builds the pmix plugin, no MPI is used.

The tests, from the bottom up (about 40 s in all on 2 cores, most of it the find): SLURM alone (srun,
sbatch); dask-jobqueue's SLURMCluster with a distributed Client whose tasks report the SLURM job they ran
in; ``simbench find DIR --out OUT --method hash cluster=slurm cluster.queue=debug ...`` on 12 generated
images (two 1-core jobs; extraction runs only as Dask tasks there), whose pairs and scores must equal an
in-process run, and whose workers must be new SLURM jobs that registered with the run's scheduler; a
partition SLURM does not know is refused at start (``sbatch --test-only``) with SLURM's words. Without
SLURM: the job script that ``cluster=slurm`` builds from conf/cluster/slurm.yaml (defaults and overrides:
partition, account, cores, memory, walltime, extra #SBATCH lines, prologue), made with sbatch pretended
and no job started.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import PHOTOS, photo


DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "srun", "sbatch", "squeue", "scancel", "scontrol")
PARTITION = "debug"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str) -> str:
    """The node as slurmd measures it (`slurmd -C`), else CPUs and memory from this process's view."""
    try:
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=20, check=False).stdout
        line = next(l for l in out.splitlines() if l.startswith("NodeName="))
        fields = [f for f in line.split()[1:] if not f.startswith("UpTime")]
    except (StopIteration, OSError, subprocess.SubprocessError):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        mem_kb = int(next(l for l in meminfo if l.startswith("MemTotal")).split()[1])
        fields = [f"CPUs={os.cpu_count()}", f"RealMemory={mem_kb // 1024}"]
    return " ".join([f"NodeName={host}", "NodeAddr=127.0.0.1", *fields, "State=UNKNOWN"])


def slurm_conf(root: Path, host: str, munge_socket: Path) -> str:
    return "\n".join([
        "ClusterName=simbench",
        f"SlurmctldHost={host}(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "DefMemPerCPU=512",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=600",  # finished jobs stay in `scontrol show job` for the checks below
        _node_line(host),
        f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


class Slurm:
    """A running single-node SLURM: its folder, slurm.conf and the environment its commands need."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: dict[str, subprocess.Popen] = {}

    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, check=False)

    def logs(self) -> str:
        text = []
        for path in sorted((self.root / "log").glob("*")):
            text.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(text)

    def start(self, name: str, cmd: list[str]) -> None:
        with open(self.root / "log" / f"{name}.out", "w") as log:  # the child keeps its own descriptor
            self.procs[name] = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root)

    def job_ids(self) -> list[str]:
        out = self.run("squeue", "-h", "-o", "%i").stdout
        return out.split()

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            ids = self.job_ids()
            if ids:
                self.run("scancel", *ids)
                deadline = time.time() + 15
                while self.job_ids() and time.time() < deadline:
                    time.sleep(0.5)
        for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        """Processes started for this SLURM that outlived it (job steps, Dask workers): their environment
        names this slurm.conf. Only those, never anything found by name."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def _skip_reason() -> str | None:
    missing = [b for b in DAEMONS + CLIENTS + ("mungekey",) if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): the README's test command installs it "
                "with `apt-get install -y slurm-wlm munge`")
    if os.geteuid() != 0:
        return "a real SLURM needs root (slurmd starts job steps as the job's user); run the tests as root"
    return None


@pytest.fixture(scope="module")
def slurm():
    """A single-node SLURM on localhost for this module; stopped, with everything it started, afterwards."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    # A short path: munge's socket must fit in a unix socket address (108 bytes).
    root = Path(tempfile.mkdtemp(prefix="simbench-slurm-"))
    cluster = Slurm(root)
    old_env = {k: os.environ.get(k) for k in ("PATH", "SLURM_CONF")}
    try:
        os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"  # munged, slurmd, slurmctld live there
        os.environ["SLURM_CONF"] = str(cluster.conf)  # for dask-jobqueue's sbatch/scancel in this process
        cluster.env = {**os.environ}
        os.chmod(root, 0o755)
        for sub in ("state", "spool", "log", "munge"):
            (root / sub).mkdir()
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = root / "munge" / "munge.sock"
        host = socket.gethostname().split(".")[0]
        cluster.conf.write_text(slurm_conf(root, host, munge_socket))
        cluster.start("munged", ["munged", "-F", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                                 f"--pid-file={root / 'munge' / 'munged.pid'}",
                                 f"--seed-file={root / 'munge' / 'munged.seed'}",
                                 f"--log-file={root / 'log' / 'munged.log'}"])
        deadline = time.time() + 20
        while not munge_socket.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert munge_socket.exists(), "munged did not start:\n" + cluster.logs()
        cluster.start("slurmctld", ["slurmctld", "-D", "-i", "-f", str(cluster.conf)])
        cluster.start("slurmd", ["slurmd", "-D", "-f", str(cluster.conf)])
        state, deadline = "", time.time() + 60
        while time.time() < deadline:
            for name, proc in cluster.procs.items():
                assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n" + cluster.logs()
            state = cluster.run("sinfo", "-h", "-n", host, "-o", "%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        assert state == "idle", f"the node is {state!r}, not idle:\n" + cluster.logs()
        yield cluster
    finally:
        cluster.stop()
        for name, value in old_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# SLURM alone, then dask-jobqueue on it


def test_slurm_runs_srun_and_sbatch(slurm):
    srun = slurm.run("srun", "-N1", "-t", "1", "hostname")
    assert srun.returncode == 0 and srun.stdout.strip() == socket.gethostname().split(".")[0], \
        srun.stderr + slurm.logs()
    out = slurm.root / "batch.out"
    sbatch = slurm.run("sbatch", "--parsable", "-o", str(out), "--wrap", "echo job $SLURM_JOB_ID on $SLURMD_NODENAME")
    assert sbatch.returncode == 0, sbatch.stderr
    job = sbatch.stdout.strip().split(";")[0]
    deadline = time.time() + 30
    while job in slurm.job_ids() and time.time() < deadline:
        time.sleep(0.3)
    assert out.read_text().split()[:2] == ["job", job], slurm.logs()


def test_dask_jobqueue_workers_run_as_slurm_jobs(slurm, tmp_path, monkeypatch):
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    monkeypatch.chdir(tmp_path)  # the jobs' working directory
    with SLURMCluster(queue=PARTITION, account="simbench", cores=1, processes=1, memory="1GiB",
                      walltime="00:05:00", job_extra_directives=["--comment=simbench-test"],
                      log_directory=str(tmp_path / "logs"), scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"}) as cluster:
        cluster.scale(jobs=2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=90)
            futures = client.map(lambda i: (i * i, os.environ.get("SLURM_JOB_ID")), range(20), pure=False)
            results = client.gather(futures)
            running = set(slurm.job_ids())
    assert [r[0] for r in results] == [i * i for i in range(20)]
    job_ids = {r[1] for r in results}
    assert None not in job_ids and job_ids <= running and len(running) == 2, (job_ids, running)
    # dask-jobqueue cancels its jobs on close.
    deadline = time.time() + 20
    while set(slurm.job_ids()) & running and time.time() < deadline:
        time.sleep(0.5)
    assert not set(slurm.job_ids()) & running


# ---------------------------------------------------------------------------------------------------
# `simbench find ... cluster=slurm` on it: the same pairs as in-process


def _write_images(folder: Path) -> None:
    """12 images: 6 scikit-image photographs and a smaller, JPEG-compressed copy of each."""
    folder.mkdir(parents=True)
    for name in PHOTOS[:6]:
        img = photo(name)
        Image.fromarray(img).save(folder / f"{name}.png")
        h, w = img.shape[:2]
        Image.fromarray(img).resize((w * 3 // 4, h * 3 // 4)).save(folder / f"{name}-small.jpg", quality=80)


def _pairs(out: Path) -> list[tuple[str, str, str, str]]:
    with open(out / "pairs.csv", newline="") as f:
        return [(r["a"], r["b"], r["score"], r["method"]) for r in csv.DictReader(f)]


def test_find_through_slurm_equals_the_in_process_run(slurm, tmp_path):
    from simbench.cli import find_main

    images = tmp_path / "images"
    _write_images(images)
    assert find_main([str(images), "--out", str(tmp_path / "local"), "--method", "hash", "-q"]) == 0
    expected = _pairs(tmp_path / "local")
    assert len(expected) >= 5  # most photos found with their copy

    logs = tmp_path / "slurm-logs"
    cmd = [sys.executable, "-m", "simbench", "find", str(images), "--out", str(tmp_path / "slurm"),
           "--method", "hash", "-q", "cluster=slurm", f"cluster.queue={PARTITION}", "cluster.account=simbench",
           "cluster.cores=1", "cluster.memory=2GiB", "cluster.walltime=00:05:00", "cluster.jobs=2",
           f"cluster.log_directory={logs}"]
    before = _last_job_id(slurm)
    done = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=150, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr + slurm.logs()
    assert _pairs(tmp_path / "slurm") == expected
    # The work ran in SLURM jobs: new jobs, each a Dask worker that joined the run's scheduler.
    assert _last_job_id(slurm) > before, slurm.logs()
    worker_logs = "".join(p.read_text(errors="replace") for p in logs.glob("*.err"))
    assert "Registered to" in worker_logs, (done.stdout + done.stderr + worker_logs)[-5000:]


def test_a_job_slurm_refuses_is_an_error_with_slurms_words(slurm, tmp_path, monkeypatch):
    """A wrong partition fails at start (sbatch --test-only), not as workers that never come."""
    from simbench.distributed.cluster import ClusterError, settings_dict, start_cluster
    from simbench.find.cascade import make_config

    monkeypatch.chdir(tmp_path)
    cfg = make_config("hash", ["cluster=slurm", "cluster.queue=no-such-partition", "cluster.cores=1",
                               "cluster.memory=1GiB"])
    before = _last_job_id(slurm)
    with pytest.raises(ClusterError, match="(?i)invalid partition"):
        start_cluster(settings_dict(cfg.cluster))
    assert slurm.job_ids() == [] and _last_job_id(slurm) == before  # nothing was submitted


def _last_job_id(slurm: Slurm) -> int:
    """The highest job id slurmctld knows (finished jobs stay listed for MinJobAge)."""
    out = slurm.run("scontrol", "show", "job", "-o").stdout
    ids = [int(word.split("=", 1)[1]) for word in out.split() if word.startswith("JobId=")]
    return max(ids, default=0)


# ---------------------------------------------------------------------------------------------------
# The job script, without SLURM


def _job_script(cluster_cfg, monkeypatch) -> str:
    """The job script simbench's cluster=slurm would submit, made where SLURM is absent: sbatch is
    pretended on PATH, its --test-only check records the script, and no job is started (scale is a no-op)."""
    from dask_jobqueue import SLURMCluster

    from simbench.distributed import cluster as cluster_module

    checked: list[str] = []
    monkeypatch.setattr(cluster_module.shutil, "which", lambda name, *a, **k: f"/usr/bin/{name}")
    monkeypatch.setattr(cluster_module, "check_job_script", checked.append)
    monkeypatch.setattr(SLURMCluster, "scale", lambda self, *a, **k: None)
    cluster = cluster_module.start_cluster(cluster_module.settings_dict(cluster_cfg))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert checked == [script]  # what sbatch --test-only would check is what would be submitted
    return script


def _yaml_default_lines() -> tuple[list[str], list[str]]:
    """The #SBATCH lines conf/cluster/slurm.yaml's own values give (read from the file, not composed)."""
    from dask.utils import parse_bytes
    from dask_jobqueue.slurm import slurm_format_bytes_ceil
    from omegaconf import OmegaConf

    y = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "cluster" / "slurm.yaml")
    lines = [f"#SBATCH --cpus-per-task={y.cores}", f"#SBATCH --mem={slurm_format_bytes_ceil(parse_bytes(y.memory))}",
             f"#SBATCH -t {y.walltime}", *(f"#SBATCH {d}" for d in y.job_extra_directives), *y.job_script_prologue]
    lines += [f"#SBATCH -p {y.queue}"] * (y.queue is not None) + [f"#SBATCH -A {y.account}"] * (y.account is not None)
    absent = ["#SBATCH -p"] * (y.queue is None) + ["#SBATCH -A"] * (y.account is None)
    return lines, absent


@pytest.mark.parametrize("overrides, lines, absent", [
    ([], None, None),
    (["cluster.queue=gpu-long", "cluster.account=proj42", "cluster.cores=4", "cluster.memory=16GiB",
      "cluster.walltime=02:30:00", 'cluster.job_extra_directives=["--qos=long","--constraint=skylake"]',
      'cluster.job_script_prologue=["source /opt/venv/bin/activate"]'],
     ["#SBATCH -p gpu-long", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=16G",
      "#SBATCH -t 02:30:00", "#SBATCH --qos=long", "#SBATCH --constraint=skylake",
      "source /opt/venv/bin/activate"], []),
], ids=["defaults", "overrides"])
def test_job_script_from_conf_cluster_slurm(overrides, lines, absent, monkeypatch):
    from simbench.find.cascade import make_config

    cfg = make_config("hash", ["cluster=slurm", *overrides])
    script = _job_script(cfg.cluster, monkeypatch)
    if lines is None:
        lines, absent = _yaml_default_lines()
    script_lines = script.splitlines()
    for line in lines:
        assert line in script_lines, script
    for prefix in absent:
        assert not any(l.startswith(prefix + " ") for l in script_lines), script
    # `processes` worker processes (null: one per core) sharing the job's cores; the extra lines come first.
    worker = next(l for l in script_lines if "distributed.cli.dask_worker" in l)
    cores, processes = int(cfg.cluster.cores), int(cfg.cluster.processes or cfg.cluster.cores)
    assert f"--nthreads {cores // processes}" in worker, worker
    assert (processes == 1 and "--nworkers" not in worker) or f"--nworkers {processes}" in worker, worker
    assert all(script_lines.index(l) < script_lines.index(worker) for l in lines)
