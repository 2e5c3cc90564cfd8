"""simbench on a Dask LocalCluster (2 or 3 worker processes): the same pairs as in-process, a killed worker
survived, finished chunks not redone, the runner's metrics unchanged, clear errors for clusters that
cannot start.

One cluster serves the module (reached with --scheduler); the runner test starts its own (cluster=local).
Tests that kill workers get a cluster of their own with a worker to spare for each kill, so neither they
nor the tests after them wait on a nanny's restart.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PHOTOS, photo
from simbench.cli import find_main


FILES_PER_TASK = 4
# Room above what a worker process holds idle once it has run this module's tasks (torch, OpenCV, the CNN):
# a worker pauses at 80% of its limit, and at 1.5 GiB both paused with nothing left to run.
WORKER_MEMORY_GIB = 3


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """36 files: 12 photographs, each also cropped (JPEG) and rotated by 90 degrees and shrunk (PNG)."""
    root = tmp_path_factory.mktemp("images")
    for name in PHOTOS[:12]:
        img = Image.fromarray(photo(name))
        w, h = img.size
        img.save(root / f"{name}.jpg", quality=90)
        img.crop((w // 10, h // 10, w - w // 8, h - h // 6)).save(root / f"{name}_crop.jpg", quality=85)
        img.rotate(90, expand=True).resize((h * 2 // 3, w * 2 // 3)).save(root / f"{name}_rot.png")
    return root


@contextlib.contextmanager
def local_cluster(n_workers: int):
    """A LocalCluster of single-threaded worker processes, and a Client."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit=f"{WORKER_MEMORY_GIB}GiB",
                      dashboard_address=":0") as local, Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def cluster():
    """The module's cluster of 2 workers."""
    with local_cluster(2) as cluster_and_client:
        yield cluster_and_client


@pytest.fixture
def doomed_cluster():
    """For a test that kills workers: its own cluster of 3, so two kills still leave one working whether
    or not the nannies' new workers arrive."""
    with local_cluster(3) as cluster_and_client:
        yield cluster_and_client


def run_find(images: Path, out: Path, method: str, *extra: str) -> str:
    assert find_main([str(images), "--out", str(out), "--quiet", "--method", method, *extra]) == 0
    return (out / "pairs.csv").read_text()


_in_process: dict[str, Path] = {}


def in_process(images: Path, tmp_path_factory, method: str) -> str:
    """pairs.csv of the in-process run (each method run once for the module; its outputs in
    _in_process[method])."""
    if method not in _in_process:
        out = tmp_path_factory.mktemp(f"alone-{method}")
        run_find(images, out, method)
        _in_process[method] = out
    return (_in_process[method] / "pairs.csv").read_text()


@pytest.mark.parametrize("method", ["hash", "keypoints", "cascade"])
def test_find_on_a_cluster_gives_the_in_process_pairs(images, cluster, tmp_path_factory, tmp_path, method):
    local, _ = cluster
    expected = in_process(images, tmp_path_factory, method)
    found = run_find(images, tmp_path / "out", method, "--scheduler", local.scheduler_address,
                     f"cluster.files_per_task={FILES_PER_TASK}")
    assert found.count("\n") > 1 and found == expected  # same pairs, scores and columns, byte for byte
    assert not list(tmp_path.glob("out/.index-*"))  # the scratch store shared by workers is removed


def test_proposed_pairs_on_a_cluster_are_the_in_process_ones(images, cluster, tmp_path):
    """The cascade with keypoints.method.proposals on (and a radius so small that the multi-index matching
    verifies few pairs; the blobs and align stages off, which would verify them too): the keypoint stage verifies the CNN's
    proposals on the images it fetches from the workers, and pairs.csv equals the in-process run's, byte for byte."""
    local, _ = cluster
    settings = ["keypoints.method.distance_threshold=12", "keypoints.method.proposals=5", "blobs.method.proposals=0",
                "align.method.proposals=0"]
    without = run_find(images, tmp_path / "without", "cascade", settings[0])
    expected = run_find(images, tmp_path / "alone", "cascade", *settings)
    found = run_find(images, tmp_path / "out", "cascade", *settings, "--scheduler", local.scheduler_address,
                     f"cluster.files_per_task={FILES_PER_TASK}")
    assert found == expected
    assert expected.count(",keypoints,") > without.count(",keypoints,")  # the proposals verified more pairs


def test_the_blobs_stage_on_a_cluster_is_the_in_process_one(images, cluster, tmp_path):
    """The cascade with the blobs stage (on by default): it verifies the CNN's proposals on the SIFT blobs it fetches
    from the workers, and pairs.csv equals the in-process run's, byte for byte."""
    from simbench.find.outputs import read_evidence

    local, _ = cluster
    expected = run_find(images, tmp_path / "alone", "cascade")  # blobs.method.proposals: 5 (conf/find.yaml)
    found = run_find(images, tmp_path / "out", "cascade", "--scheduler",
                     local.scheduler_address, f"cluster.files_per_task={FILES_PER_TASK}")
    assert found == expected
    _, raw, _ = read_evidence(tmp_path / "out" / "evidence.npz")
    assert len(raw["blobs"]) > 0


def _received(value, found: dict) -> None:
    """Walk what the client received: KeypointSets' images and rows, the largest other array and the
    most columns of a 2-D one."""
    from simbench.types import KeypointSets

    if isinstance(value, KeypointSets):
        found["images"] += len(value)
        found["rows"] += len(value.descriptors)
    elif isinstance(value, np.ndarray):
        found["largest"] = max(found["largest"], len(value) if value.ndim else 1)
        found["widest"] = max(found.get("widest", 0), value.shape[1] if value.ndim == 2 else 0)
    elif isinstance(value, dict):
        for v in value.values():
            _received(v, found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _received(v, found)


def test_keypoints_on_a_cluster_never_reach_the_client(images, cluster, tmp_path_factory, tmp_path, monkeypatch):
    """find --method keypoints on the cluster with a small task budget (chunks of a few images): the
    workers read the descriptors; the client never loads them (load_features is not called for the
    keypoint stage) and receives no descriptor but those of the images whose evidence it shows, and no
    array longer than the plan's sample; pairs.csv and the pairs' evidence equal the in-process run's."""
    from simbench.distributed import keypoints as dk
    from simbench.find import evidence, pipeline
    from simbench.find.outputs import read_pair_evidence

    local, _ = cluster
    expected = in_process(images, tmp_path_factory, "keypoints")
    loaded, taken, chunks = [], [], []
    load_features, load_keypoints, take = pipeline.load_features, dk.load_keypoints, dk.KeypointChunks.take

    def spy_load_features(stage, *args, **kwargs):
        loaded.append(stage.extractor.kind)
        return load_features(stage, *args, **kwargs)

    def spy_load_keypoints(*args, **kwargs):
        loaded_here = load_keypoints(*args, **kwargs)
        chunks.append(loaded_here[0])
        return loaded_here

    def spy_take(self, images):
        taken.append(len(np.unique(images)))
        return take(self, images)

    monkeypatch.setattr(pipeline, "load_features", spy_load_features)
    monkeypatch.setattr(dk, "load_keypoints", spy_load_keypoints)
    monkeypatch.setattr(dk.KeypointChunks, "take", spy_take)
    got = _spy_on_gather(monkeypatch)
    monkeypatch.setattr(dk, "task_budget", lambda client: 2 << 20)  # a small worker: chunks of a few images
    shown = 4  # evidence of the 4 best pairs: the client may receive the descriptors of 8 images
    monkeypatch.setattr(evidence, "MAX_EVIDENCE_PAIRS", shown)
    monkeypatch.setattr(evidence, "pair_evidence", functools.partial(evidence.pair_evidence, limit=shown))
    found = run_find(images, tmp_path / "out", "keypoints", "--scheduler", local.scheduler_address,
                     f"cluster.files_per_task={FILES_PER_TASK}")
    assert found == expected
    assert "keypoints" not in loaded and len(chunks[0].futures) >= 4
    assert got["images"] == sum(taken) <= 2 * shown and 0 < got["rows"] < chunks[0].n_rows / 3
    assert got["largest"] <= dk.CALIBRATION_SAMPLE < chunks[0].n_rows / 4
    mine, theirs = read_pair_evidence(tmp_path / "out" / "evidence.npz"), read_pair_evidence(
        _in_process["keypoints"] / "evidence.npz")
    assert len(mine) == shown and mine == {pair: theirs[pair] for pair in mine}
    assert all("keypoints" in record for record in mine.values())


def stored_sources(index: Path) -> list[Path]:
    return sorted(index.glob("sources/*/*.json"))


def test_a_killed_worker_is_survived_and_stored_chunks_are_not_redone(images, doomed_cluster, tmp_path_factory,
                                                                      tmp_path, capsys):
    local, client = doomed_cluster
    expected = in_process(images, tmp_path_factory, "keypoints")
    index = tmp_path / "index"
    n_tasks = -(-36 // 2)
    killed = {}

    def kill_one_worker_mid_run():
        """Once some chunks are stored and most are not, SIGKILL one worker process (its nanny restarts it)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not stored_sources(index):
            time.sleep(0.05)
        pids = client.run(os.getpid)
        killed["done_before"] = len(stored_sources(index))
        os.kill(sorted(pids.values())[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    found = run_find(images, tmp_path / "out", "keypoints", "--index", str(index), "--scheduler",
                     local.scheduler_address, "cluster.files_per_task=2")
    killer.join()
    assert 0 < killed["done_before"] < n_tasks  # the kill came mid-extraction
    assert found == expected

    # A re-run finds every chunk stored: nothing read again, no task submitted.
    capsys.readouterr()
    assert run_find(images, tmp_path / "again", "keypoints", "--index", str(index), "--scheduler",
                    local.scheduler_address, "cluster.files_per_task=2") == expected
    assert "0 new to the index" in capsys.readouterr().out

    # One chunk's sources record lost: only its files are read and extracted again.
    manifests = stored_sources(index)
    lost = json.loads(manifests[-1].read_text())["digests"]
    manifests[-1].unlink()
    assert run_find(images, tmp_path / "partly", "keypoints", "--index", str(index), "--scheduler",
                    local.scheduler_address, "cluster.files_per_task=2") == expected
    assert f"{len(lost)} new to the index" in capsys.readouterr().out


def test_a_stored_chunk_is_not_extracted_again(images, tmp_path, monkeypatch):
    """What a retried task does first (a task killed after it stored its chunk does nothing the next time),
    reading only the manifests of its own tag (not those of the other chunks)."""
    from simbench.distributed.extract import extract_chunk
    from simbench.find import index
    from simbench.find.cascade import build_stages, make_config
    from simbench.find.index import file_sha256
    from simbench.find.pdf import PdfOptions

    stages = build_stages(make_config("hash"), calibrations={}, quiet=True)
    files = sorted(str(p) for p in images.glob("*.jpg"))
    digests = [file_sha256(f) for f in files]
    assert extract_chunk(files[3:6], digests[3:6], stages, str(tmp_path), PdfOptions(), "0123456789ab") == 3
    read, read_manifest = [], index._read_manifest
    monkeypatch.setattr(index, "_read_manifest", lambda path: read.append(path.name) or read_manifest(path))
    assert extract_chunk(files[:3], digests[:3], stages, str(tmp_path), PdfOptions(), "abcdef012345") == 3
    assert read == []  # the other chunk's manifests are not read
    assert extract_chunk(files[:3], digests[:3], stages, str(tmp_path), PdfOptions(), "abcdef012345") == 0
    assert len(read) == 2 and all(name.endswith("-abcdef012345.json") for name in read)  # hashes and sources
    assert len(list(tmp_path.glob("*/*/*.json"))) == 4  # per chunk one shard of hashes, one of sources


def test_runner_on_a_local_cluster_gives_the_same_metrics(tmp_path):
    tiny = ["hash=phash", "dataset.n_references=3", "dataset.n_distractors=4", "progress=false",
            "cache_features=false"]
    env = dict(os.environ, SIMBENCH_CACHE=str(tmp_path / "cache"), HYDRA_FULL_ERROR="1")
    results = []
    for name, extra in (("alone", []), ("local", ["cluster=local", "cluster.n_workers=2",
                                                  "cluster.memory_limit=1GiB", "cluster.files_per_task=8"])):
        proc = subprocess.run([sys.executable, "-m", "simbench", *tiny, *extra, f"hydra.run.dir={tmp_path / name}"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        results.append(json.loads((tmp_path / name / "result.json").read_text()))
    assert "Dask LocalCluster" in proc.stdout and "2 workers" in proc.stdout
    assert results[1]["config"]["cluster"]["kind"] == "local"
    assert results[0]["metrics"] == results[1]["metrics"]
    assert results[0]["skipped"] == results[1]["skipped"]


def test_clusters_that_cannot_start_say_why(images, tmp_path, capsys, monkeypatch):
    from simbench.distributed.cluster import ClusterError, ClusterSession

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert find_main([str(images), "--out", str(tmp_path / "o"), "--quiet", "--method", "hash",
                      "--cluster", "slurm"]) == 2
    assert "sbatch, which is not on PATH" in capsys.readouterr().err
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        with pytest.raises(ClusterError, match="needs dask-cuda"):
            ClusterSession({"kind": "gpu"}).start()
    with pytest.raises(ClusterError, match="unknown cluster kind"):
        ClusterSession({"kind": "cloud"})


def test_local_sizes_follow_the_machine():
    from simbench.distributed.cluster import AUTO_LOCAL_FILES, ClusterSession, local_sizes

    n, threads, memory = local_sizes()
    assert n >= 1 and threads == 1 and memory > 0
    assert local_sizes(3, 2, "2GiB") == (3, 2, "2GiB")
    small = ClusterSession({"kind": "none"}, auto=True)
    assert small.start(AUTO_LOCAL_FILES) is None  # in-process up to the rule's size
    quiet = ClusterSession({"kind": "none", "auto_local": False}, auto=True)
    assert quiet.start(AUTO_LOCAL_FILES + 1) is None


def kill_own_worker_once(function, marker: Path):
    """function, except that its first call on a worker SIGKILLs that worker process (its nanny starts a
    new one); the marker file, created atomically, holds the killed pid and makes every later call run."""

    def once(*args, **kwargs):
        from distributed import get_worker

        try:
            get_worker()
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except (ValueError, FileExistsError):  # in the client, or the kill happened already
            return function(*args, **kwargs)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)

    return once


def test_workers_killed_while_matching_are_survived(images, doomed_cluster, tmp_path_factory, tmp_path,
                                                    monkeypatch):
    """find --method keypoints on the cluster, where the first descriptor-join task (matching) kills its
    own worker, and later the first RANSAC batch (verification) kills its own: each time what that worker
    held (chunks read from the index, join outputs, pair partitions, df) is lost and computed again, and
    the run gives the in-process pairs, scores and evidence."""
    from simbench.distributed import keypoints as dk
    from simbench.find.outputs import read_pair_evidence

    local, client = doomed_cluster
    expected = in_process(images, tmp_path_factory, "keypoints")
    markers = {task: tmp_path / f"killed-in{task}" for task in ("_join_between", "_verify_batch")}
    workers = set(client.run(os.getpid).values())
    for task, marker in markers.items():
        monkeypatch.setattr(dk, task, kill_own_worker_once(getattr(dk, task), marker))
    monkeypatch.setattr(dk, "task_budget", lambda client: 2 << 20)  # chunks of a few images on every worker
    found = run_find(images, tmp_path / "out", "keypoints", "--scheduler", local.scheduler_address,
                     f"cluster.files_per_task={FILES_PER_TASK}")
    killed = [int(m.read_text()) for m in markers.values()]  # each marker: written by the task that killed
    assert found == expected
    mine, theirs = (read_pair_evidence(d / "evidence.npz") for d in (tmp_path / "out", _in_process["keypoints"]))
    assert mine and mine == theirs
    assert killed[0] in workers and not set(killed) & set(client.run(os.getpid).values())


def test_an_index_reading_task_opens_only_the_shards_of_its_images(tmp_path, monkeypatch, random_keypoint_sets):
    """load_keypoints on an in-process cluster (tasks run in this process, so the index reader can be
    watched): no task lists or reads a manifest, and each reads exactly the shards its images' records
    are taken from, once, including a file stored again (the newer shard serves) and a damaged newest
    shard (the older one serves, as in FeatureStore.get_many); the chunks, rows and reasons equal
    pipeline.load_features' on the whole store."""
    import hashlib
    import threading
    from types import SimpleNamespace

    from distributed import Client, LocalCluster

    from simbench.distributed import keypoints as dk
    from simbench.find import index, pipeline
    from simbench.find.index import FeatureStore, split_features

    section, pkey = "keypoints-test", "pk"
    per_image = split_features(random_keypoint_sets(5, n_images=20), np.arange(20), 20)
    per_image[2] = "no features"  # (its record has no descriptors)
    files = [hashlib.sha256(f"file {f}".encode()).hexdigest() for f in range(10)]  # file f: images 2f, 2f+1
    store = FeatureStore(tmp_path)
    shard_of = {}

    def put(name, numbers):
        store.put_batch(section, pkey, {files[f]: per_image[2 * f : 2 * f + 2] for f in numbers})
        shard_of[name] = store.manifests_of(section, pkey, [files[numbers[0]]])[0]["shard"]  # the newest

    for name, numbers in (("A", [0, 1, 2]), ("B", [3, 4, 5]), ("C", [6, 7, 8]), ("D", [9]), ("E", [4]), ("F", [7])):
        put(name, numbers)
    damaged = tmp_path / section / pkey / shard_of["F"]
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"!")

    items = [SimpleNamespace(source=f"file {f}") for f in range(10) for _ in range(2)]
    digests = [files[k // 2] for k in range(20)]
    stage = SimpleNamespace(section=section, extractor=SimpleNamespace(kind="keypoints", max_features=8, mirror=False))
    exclude = {3: "blank image"}

    reads = {}  # task key (None: the client) -> names of the shards and manifests it read
    read_shard, read_manifest = FeatureStore._read_shard, index._read_manifest

    def running_task():
        from distributed import get_worker

        try:
            return get_worker().active_threads.get(threading.get_ident())
        except ValueError:  # not in a worker
            return None

    def spy_read_shard(self, section, pkey, manifest, kind):
        reads.setdefault(running_task(), []).append(manifest["shard"])
        return read_shard(self, section, pkey, manifest, kind)

    def spy_read_manifest(path):
        reads.setdefault(running_task(), []).append(path.name)
        return read_manifest(path)

    monkeypatch.setattr(FeatureStore, "_read_shard", spy_read_shard)
    monkeypatch.setattr(index, "_read_manifest", spy_read_manifest)
    monkeypatch.setattr(dk, "task_budget", lambda client: 5 * dk.LOAD_ROW_BYTES * 8)  # 5 images a task
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as local, \
            Client(local) as client:
        chunks, rows, reasons = dk.load_keypoints(client, stage, items, digests, FeatureStore(tmp_path), exclude,
                                                  pkey)
        got = chunks.gather()
    A, B, C, D, E, F = (shard_of[name] for name in "ABCDEF")
    client_reads = sorted(reads.pop(None))
    by_first_image = {int(key.split("-")[2]): sorted(names) for key, names in reads.items()}  # kp-read-{first}-...
    assert by_first_image == {0: [A], 5: sorted([A, B, E]), 10: sorted([B, C, F]), 15: sorted([C, D, F])}
    assert client_reads == sorted(f"{Path(s).stem}.json" for s in shard_of.values())  # the client: each once

    monkeypatch.setattr(pipeline, "feature_key", lambda stage: pkey)
    features, want_rows, want_reasons = pipeline.load_features(stage, items, digests, FeatureStore(tmp_path), exclude)
    assert rows.tolist() == want_rows.tolist() and reasons == want_reasons == {2: "no features", 3: "blank image"}
    for field in ("descriptors", "offsets", "points", "sizes", "angles", "responses", "image_sizes"):
        assert np.array_equal(getattr(got, field), getattr(features, field)), field


def test_task_sizes_ask_the_scheduler_for_the_workers(cluster, monkeypatch):
    """Client.scheduler_info hands back a cache that the client's periodic refresh overwrites with an
    identity without workers; task_budget read that (empty) and failed now and then. Sizes come from
    the scheduler itself."""
    from simbench.distributed import match as dm

    _, client = cluster
    monkeypatch.setattr(client, "scheduler_info", lambda *args, **kwargs: {"workers": {}})  # the refreshed cache
    assert len(dm._workers(client)) == 2
    assert dm.task_budget(client) == int(WORKER_MEMORY_GIB * 2**30 * dm.TASK_SHARE)  # one thread per worker


def _run_runner(tmp_path, name: str, overrides: list[str]):
    """run_experiment (python -m simbench) on a small synthetic set with these overrides, caching under
    tmp_path: (result.json's dict, pairs.npz's a, b and score)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from simbench.run import CONFIG_DIR, run_experiment

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            *overrides, f"cache_dir={tmp_path / 'cache'}", "progress=false", "dataset.n_references=4",
            "dataset.n_distractors=4", "dataset.long_side=256"])
    HydraConfig.instance().set_config(cfg)
    result = run_experiment(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), tmp_path / name)
    with np.load(tmp_path / name / "pairs.npz") as pairs:
        return result, {k: pairs[k] for k in ("a", "b", "score")}


def _spy_on_gather(monkeypatch) -> dict:
    """What every Client.gather from now on returns, summed up by _received (a dict it keeps updating)."""
    from distributed import Client

    got = {"images": 0, "rows": 0, "largest": 0}
    gather = Client.gather

    def spy_gather(self, futures, *args, **kwargs):
        result = gather(self, futures, *args, **kwargs)
        _received(result, got)
        return result

    monkeypatch.setattr(Client, "gather", spy_gather)
    return got


def test_runner_keypoints_are_read_by_the_workers_from_the_store(doomed_cluster, tmp_path, monkeypatch):
    """python -m simbench method=keypoints on the cluster: extraction tasks write the features to a store
    and the workers read them back for matching (scatter_keypoints is not used, the client receives no
    descriptors), a worker killed in a descriptor-join task is survived, and result.json's metrics and
    skipped inputs and pairs.npz equal the in-process run's; a second run reads the stored features."""
    from simbench.distributed import keypoints as dk

    local, _ = doomed_cluster
    settings = ["method=keypoints", "method.verify=true"]
    alone, alone_pairs = _run_runner(tmp_path, "alone", settings)
    assert alone["method_stats"]["verified"] > 0  # RANSAC ran on the workers too
    got = _spy_on_gather(monkeypatch)

    def no_scatter(*args, **kwargs):
        raise AssertionError("the runner sent features from the client")

    monkeypatch.setattr(dk, "scatter_keypoints", no_scatter)
    monkeypatch.setattr(dk, "task_budget", lambda client: 2 << 20)  # chunks of a few images on every worker
    monkeypatch.setattr(dk, "_join_between", kill_own_worker_once(dk._join_between, tmp_path / "killed"))
    on_cluster = ["cluster=local", f"cluster.scheduler={local.scheduler_address}", "cluster.files_per_task=4"]
    for name in ("dask", "dask-again"):
        result, pairs = _run_runner(tmp_path, name, settings + on_cluster)
        assert result["timing"]["extract_cached"] is (name == "dask-again")
        assert len(pairs["a"]) and all(np.array_equal(pairs[k], alone_pairs[k]) for k in pairs)
        assert result["metrics"] == alone["metrics"] and result["skipped"] == alone["skipped"]
        assert result["method_stats"]["verified"] == alone["method_stats"]["verified"]
    assert (tmp_path / "killed").exists() and got["images"] == got["rows"] == 0


def _close(got, want) -> bool:
    """Equal nested metrics, numbers to 1e-6 (a threshold is a score: equal up to the last float32 ulps)."""
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want)
    if isinstance(want, (int, float)) and not isinstance(want, bool):
        return isinstance(got, (int, float)) and abs(got - want) <= 1e-6
    return got == want


def test_runner_embeddings_are_read_by_the_workers_from_the_store(cluster, tmp_path, monkeypatch):
    """python -m simbench method=cnn on the cluster: extraction tasks write the embeddings to a store, the
    workers read them back and search them (exact range search and top-k, centred, normalised scores);
    the client receives no embedding (nothing scattered or gathered, no array as wide as one) and
    result.json's metrics and skipped inputs and pairs.npz equal the in-process run's; a second run
    reads the stored embeddings."""
    from simbench.distributed import cnn as dc

    local, _ = cluster
    settings = ["method=cnn", "backbone=resnet18", "backbone.weights=none", "backbone.image_size=64",
                "backbone.runtime=torch", "backbone.workers=0", "backbone.batch_size=4", "method.neighbours=3",
                "method.normalise_k=2", "+method.centre=true"]
    alone, alone_pairs = _run_runner(tmp_path, "alone", settings)
    got = _spy_on_gather(monkeypatch)

    def sent(*args, **kwargs):
        raise AssertionError("the runner moved embeddings between the client and the workers")

    monkeypatch.setattr(dc, "scatter_embeddings", sent)
    monkeypatch.setattr(dc.EmbeddingChunks, "gather", sent)
    monkeypatch.setattr(dc.EmbeddingChunks, "take", sent)
    monkeypatch.setattr(dc, "task_budget", lambda client: 1 << 19)  # chunks of 8 images on both workers
    on_cluster = ["cluster=local", f"cluster.scheduler={local.scheduler_address}", "cluster.files_per_task=4"]
    for name in ("dask", "dask-again"):
        result, pairs = _run_runner(tmp_path, name, settings + on_cluster)
        assert result["timing"]["extract_cached"] is (name == "dask-again")
        assert len(pairs["a"]) and np.array_equal(pairs["a"], alone_pairs["a"])
        assert np.array_equal(pairs["b"], alone_pairs["b"])
        # The same block products as in one process; see simbench.distributed.match on the last float32 ulps.
        np.testing.assert_allclose(pairs["score"], alone_pairs["score"], rtol=0, atol=1e-6)
        assert _close(result["metrics"], alone["metrics"]) and result["skipped"] == alone["skipped"]
    assert len(list((tmp_path / "cache" / "features").glob("*.index/summary.json"))) == 1
    assert 0 < got["widest"] < 512  # neighbour lists came back; no 512-d embedding did


def test_dataset_whitening_is_learnt_from_all_embeddings_in_this_process(images, tmp_path, caplog):
    """whitening=dataset is fitted on all the embeddings at once: with a cluster the runner extracts them
    in this process (and says so) rather than whitening each task's chunk on its own."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from simbench.features.cnn import CnnExtractor
    from simbench.run import extract_cached

    class Unused:
        def __getattr__(self, name):
            raise AssertionError(f"the cluster was used ({name})")

    extractor = CnnExtractor("resnet18", weights="none", image_size=64, workers=0, batch_size=4, runtime="torch",
                             whitening="dataset")
    dataset = SimpleNamespace(paths=sorted(images.glob("*_crop.jpg"))[:6])
    cfg = OmegaConf.create({"cache_dir": str(tmp_path), "cache_features": False, "progress": False})
    alone = extract_cached(extractor, dataset, cfg)[0]
    whitened = extract_cached(extractor, dataset, cfg, Unused())[0]
    assert np.array_equal(whitened.features.vectors, alone.features.vectors) and len(whitened.rows) == 6
    assert "whitening=dataset is learnt from all the embeddings at once" in caplog.text


def test_a_runner_chunk_stored_by_an_earlier_attempt_is_not_extracted_again(images, tmp_path, monkeypatch):
    """The runner's extraction task tried again (its worker killed after it stored its chunk) reads its own
    shard back instead of extracting, and returns the same skipped inputs."""
    from simbench.distributed.extract import path_keys, store_rows
    from simbench.features.keypoints import KeypointExtractor

    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"not a JPEG")
    paths = [str(p) for p in sorted(images.glob("*_crop.jpg"))[:2]] + [str(bad)]
    extract, calls = KeypointExtractor.extract, []
    monkeypatch.setattr(KeypointExtractor, "extract", lambda self, *a, **k: calls.append(1) or extract(self, *a, **k))
    extractor, keys = KeypointExtractor(max_features=50), path_keys(paths)
    first = store_rows(extractor, paths, keys, str(tmp_path / "store"), "kp", "pk", "0123456789ab")
    assert [s.path for s in first] == [str(bad)] and len(calls) == 1
    assert store_rows(extractor, paths, keys, str(tmp_path / "store"), "kp", "pk", "0123456789ab") == first
    assert len(calls) == 1 and len(list((tmp_path / "store" / "kp" / "pk").glob("*.npz"))) == 1
