"""Dask clusters (conf/cluster): which one a run uses, started when the work needs it, closed after.

Kinds: `none` (everything in this process, as without Dask), `local` (distributed.LocalCluster of worker
processes), `slurm` (dask_jobqueue.SLURMCluster), `gpu` (dask_cuda.LocalCUDACluster); a `scheduler`
address connects to a running cluster instead of starting one.

`simbench find` starts `local` by itself when a collection has more than AUTO_LOCAL_FILES files and no
cluster was chosen (`cluster=none` with no scheduler), and says so; `cluster.auto_local=false` keeps it
in-process.

A cluster that cannot start is an error that says why (ClusterError), never a quiet fall-back to
in-process work.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from simbench.threads import available_cores

log = logging.getLogger("simbench")

#: `simbench find` on more files than this starts a LocalCluster when none was chosen: about where the
#: default cascade spends over a few minutes per core extracting, so worker start-up (seconds) is noise.
AUTO_LOCAL_FILES = 20_000
KINDS = ("none", "local", "slurm", "gpu")


class ClusterError(RuntimeError):
    """A cluster was asked for and cannot be used; the message says why and what to do."""


def settings_dict(settings: DictConfig | dict | None) -> dict:
    """conf/cluster settings as a plain dict (missing node: kind none)."""
    if settings is None:
        return {"kind": "none"}
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    out = dict(settings)
    out.setdefault("kind", "none")
    if out["kind"] not in KINDS:
        raise ClusterError(f"unknown cluster kind {out['kind']!r}; choose one of {', '.join(KINDS)}")
    return out


class ClusterSession:
    """The cluster of one run: `start(n_files)` gives a distributed.Client, or None to work in-process.

    Started on first call (so `find` can count the files first), closed with the session, which also
    removes the scratch folders it made (a store shared by workers when the run has no --index).
    """

    def __init__(self, settings: DictConfig | dict | None, progress: bool = True, auto: bool = False):
        self.settings = settings_dict(settings)
        self.progress = progress
        self.auto = auto  # may start `local` for a large collection (find; the runner's datasets are small)
        self.client = None
        self.cluster = None
        self._started = False
        self._scratch: list[Path] = []

    @property
    def retries(self) -> int:
        return int(self.settings.get("retries") or 0)

    @property
    def files_per_task(self) -> int | None:
        n = self.settings.get("files_per_task")
        return int(n) if n else None

    def start(self, n_files: int | None = None):
        if self._started:
            return self.client
        self._started = True
        s = self.settings
        quiet_dask_logs()
        if s.get("scheduler"):
            if s["kind"] != "none":
                log.warning("cluster.scheduler is set: connecting to %s; the %s cluster settings are not used",
                            s["scheduler"], s["kind"])
            self.client = connect(str(s["scheduler"]))
        elif s["kind"] == "none":
            if not (self.auto and s.get("auto_local", True) and n_files is not None and n_files > AUTO_LOCAL_FILES):
                return None
            print(f"{n_files} files (more than {AUTO_LOCAL_FILES}): working on a local Dask cluster "
                  f"(cluster=local; cluster.auto_local=false to stay in one process)", flush=True)
            self.cluster = start_cluster({**s, "kind": "local"})
        else:
            self.cluster = start_cluster(s)
        if self.client is None:
            from distributed import Client

            self.client = Client(self.cluster)
        announce(self.client, self.cluster)
        return self.client

    def scratch_dir(self, parent: Path, prefix: str) -> Path:
        """A folder under `parent` that workers share (parent must be on their file system), removed at close."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        self._scratch.append(path)
        return path

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self._scratch = []

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------
# Starting and reaching clusters


def connect(address: str):
    """A Client of the scheduler at `address` (workers there must see the same files as this process)."""
    from distributed import Client

    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} ({exc}); is it running "
                           f"(`dask scheduler`) and reachable from this machine?") from None


def start_cluster(s: dict):
    """A started cluster of kind s['kind'] (local, slurm, gpu)."""
    starters = {"local": local_cluster, "slurm": slurm_cluster, "gpu": gpu_cluster}
    if s["kind"] not in starters:
        raise ClusterError(f"cluster kind {s['kind']!r} does not start a cluster")
    try:
        return starters[s["kind"]](s)
    except ClusterError:
        raise
    except Exception as exc:  # the library's own reason, said as ours: which cluster, and why
        raise ClusterError(f"cannot start the {s['kind']} Dask cluster: {type(exc).__name__}: {exc}") from exc


def local_sizes(n_workers: int | None = None, threads: int | None = None,
                memory_limit: str | int | None = None) -> tuple[int, int, int | str]:
    """(workers, threads per worker, memory per worker) for this machine where not given: one
    single-threaded worker process per core (extraction and verification are CPU-bound Python with
    native code: processes, not threads, scale), 90% of the memory Dask sees (cgroup limits too) shared out."""
    from distributed.system import MEMORY_LIMIT

    cores = available_cores()
    threads = int(threads or 1)
    n = int(n_workers or max(1, cores // threads))
    memory = memory_limit if memory_limit else int(0.9 * MEMORY_LIMIT / n)
    return n, threads, memory


def local_cluster(s: dict):
    from distributed import LocalCluster

    n, threads, memory = local_sizes(s.get("n_workers"), s.get("threads_per_worker"), s.get("memory_limit"))
    return LocalCluster(n_workers=n, threads_per_worker=threads, memory_limit=memory, processes=True,
                        dashboard_address=s.get("dashboard_address", ":0"), silence_logs=logging.ERROR)


def slurm_cluster(s: dict):
    """dask-jobqueue's SLURMCluster, its job script checked by `sbatch --test-only` first (a wrong queue or
    account fails here, with SLURM's words, not as workers that never come), then scaled to `jobs`."""
    if shutil.which("sbatch") is None:
        raise ClusterError("cluster=slurm submits jobs with sbatch, which is not on PATH here: run on a SLURM "
                           "login node, or use cluster=local")
    from dask_jobqueue import SLURMCluster

    cores = int(s["cores"])
    cluster = SLURMCluster(
        queue=s.get("queue"), account=s.get("account"), cores=cores, processes=int(s.get("processes") or cores),
        memory=str(s["memory"]), walltime=s.get("walltime"),
        job_extra_directives=list(s.get("job_extra_directives") or []),
        job_script_prologue=list(s.get("job_script_prologue") or []),
        local_directory=s.get("local_directory"), log_directory=s.get("log_directory"),
        interface=s.get("interface"), python=sys.executable,
        scheduler_options={"dashboard_address": s.get("dashboard_address", ":0")})
    try:
        check_job_script(cluster.job_script())
        cluster.scale(jobs=int(s.get("jobs") or 1))
    except BaseException:
        cluster.close()
        raise
    return cluster


def check_job_script(script: str) -> None:
    """Raise ClusterError with sbatch's message when SLURM would refuse the job script."""
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        done = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True, text=True, timeout=60)
    finally:
        os.unlink(f.name)
    if done.returncode != 0:
        raise ClusterError(f"SLURM refuses the Dask worker job (sbatch --test-only): "
                           f"{(done.stderr or done.stdout).strip()}\njob script:\n{script}")


def gpu_cluster(s: dict):
    try:
        from dask_cuda import LocalCUDACluster
        from dask_cuda.utils import get_n_gpus
    except ImportError as exc:
        raise ClusterError(f"cluster=gpu needs dask-cuda (pip install dask-cuda), which cannot be imported "
                           f"here ({exc}); cluster=local works on CPUs") from None
    try:
        n = get_n_gpus()
    except Exception as exc:  # no driver, no NVML: the same answer as no device
        n, why = 0, f" ({type(exc).__name__}: {exc})"
    else:
        why = ""
    if n < 1:
        raise ClusterError(f"cluster=gpu: no CUDA device is visible{why}; cluster=local works on CPUs")
    kwargs = {k: s[k] for k in ("CUDA_VISIBLE_DEVICES", "memory_limit") if s.get(k) is not None}
    return LocalCUDACluster(dashboard_address=s.get("dashboard_address", ":0"), **kwargs)


def quiet_dask_logs() -> None:
    """Dask's INFO lines (each worker started, each connection) in this process drown the progress bar;
    its warnings (a worker lost, memory) stay."""
    import distributed  # noqa: F401  (its loggers, with their own levels, exist once it is imported)

    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logger = logging.getLogger(name)
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))


def announce(client, cluster=None) -> None:
    """One line: where the work goes, how many workers, and the dashboard link (or why there is none)."""
    info = client.scheduler_info()
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    what = type(cluster).__name__ if cluster is not None else "scheduler"
    if "dashboard" in info.get("services", {}):
        dashboard = f"dashboard {client.dashboard_link}"
    else:
        dashboard = "no dashboard (pip install 'bokeh>=3.1' for one)"
    print(f"Dask {what} at {info.get('address', '?')}: {len(workers)} workers, {threads} threads now; "
          f"{dashboard}", flush=True)
