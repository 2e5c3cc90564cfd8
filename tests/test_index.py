"""The `--index` store (simbench.find.index) and the runner's cache (simbench.cache): no pickle, batched
shards, damaged or forged records caught one by one, and a run killed with SIGKILL resumes to the same pairs."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from simbench import cache
from simbench.find import cascade, pipeline
from simbench.find.index import (FeatureStore, SOURCES_KIND, consistent, join_features, record_types,
                                 shard_groups, split_features)
from simbench.find.sources import SourceRecord
from simbench.types import BinaryCodes, Embeddings, KeypointSets, Skipped

from conftest import PHOTOS, photo


class Boom:
    """A pickle payload that, if ever unpickled, creates the folder `marker` (the code a forged index
    would run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickling while reading the index fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used to read the index")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


# ---------------------------------------------------------------------------------------------------
# Records: shards round trip, per feature kind


def random_features(kind: str, rng: np.random.Generator, n: int):
    if kind == "hash":
        return BinaryCodes(rng.integers(0, 2**63, (n, 4), dtype=np.uint64), 256)
    if kind == "cnn":
        v = rng.standard_normal((n, 16)).astype(np.float32)
        return Embeddings(v / np.linalg.norm(v, axis=1, keepdims=True))
    counts = rng.integers(0, 9, n)
    counts[1] = 0  # an image without keypoints
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    m = int(offsets[-1])
    return KeypointSets(descriptors=rng.integers(0, 256, (m, 64), dtype=np.uint8), offsets=offsets,
                        points=rng.random((m, 2), dtype=np.float32) * 100, sizes=rng.random(m, dtype=np.float32),
                        angles=rng.random(m, dtype=np.float32), responses=rng.random(m, dtype=np.float32),
                        image_sizes=rng.integers(10, 500, (n, 2)), binary=True, mirrored=rng.random(m) < 0.5)


EXTRACTOR_KIND = {"hash": "binary", "keypoints": "keypoints", "cnn": "embedding"}


def assert_same_entry(got, want):
    if isinstance(want, str):
        assert got == want
        return
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[key], np.ndarray) and got[key].dtype == value.dtype, key
            assert got[key].shape == value.shape and np.array_equal(got[key], value), key
        else:
            assert got[key] == value and type(got[key]) is type(value), key


@pytest.mark.parametrize("kind", ["hash", "keypoints", "cnn"])
def test_shards_give_back_every_record_as_written(tmp_path, kind, no_unpickling):
    rng = np.random.default_rng(7)
    images_per_file = [1, 3, 0, 1, 2, 5, 1, 1, 4, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1]  # a PDF gives several
    n_files = len(images_per_file)
    n_images = sum(images_per_file) - 1  # the last image failed in the extractor: a reason, no features
    features = random_features(kind, rng, n_images)
    rows = np.arange(n_images)
    per_image = split_features(features, rows, n_images) + ["cannot decode image"]
    digests = [hashlib.sha256(f"file {k}".encode()).hexdigest() for k in range(n_files)]
    written, cursor = {}, 0
    for digest, n in zip(digests, images_per_file):
        written[digest] = per_image[cursor:cursor + n]
        cursor += n

    store = FeatureStore(tmp_path / "index")
    section, pkey = f"{kind}-x", "params"
    for group in shard_groups(images_per_file, 4):  # as the pipeline batches extraction
        store.put_batch(section, pkey, {digests[k]: written[digests[k]] for k in group})

    reopened = FeatureStore(tmp_path / "index")
    shards = sorted((tmp_path / "index" / section / pkey).glob("*.npz"))
    assert len(shards) == len(shard_groups(images_per_file, 4)) > 1
    for shard in shards:  # the archives open without pickle
        with np.load(shard, allow_pickle=False) as z:
            assert all(z[name].dtype != object for name in z.files)
    assert reopened.check(section, pkey, digests, EXTRACTOR_KIND[kind]) == {d: None for d in digests}
    got = reopened.get_many(section, pkey, digests, EXTRACTOR_KIND[kind])
    assert list(got) == digests
    for digest in digests:
        assert len(got[digest]) == len(written[digest])
        for g, w in zip(got[digest], written[digest]):
            assert_same_entry(g, w)
    # Joined back, the records are the features that were split.
    flat = [e if not isinstance(e, str) else None for d in digests for e in got[d]]
    joined, joined_rows = join_features(flat, EXTRACTOR_KIND[kind])
    assert np.array_equal(joined_rows, rows)
    for name in ("words", "vectors", "descriptors", "offsets", "points", "sizes", "angles", "responses",
                 "image_sizes", "mirrored"):
        if hasattr(features, name):
            assert np.array_equal(getattr(joined, name), getattr(features, name)), name
    assert getattr(joined, "bits", None) == getattr(features, "bits", None)


def test_sources_records_round_trip(tmp_path, no_unpickling):
    pdf = SourceRecord("pdf", images=[
        {"id": "1-1", "suffix": "#page=1&image=1", "page": 1, "bbox": "10 20 300 400", "digest": "pdf:ab",
         "thumb": b"\xff\xd8jpeg bytes"},
        {"id": "2-1", "suffix": "#page=2&image=1", "page": 2, "bbox": "0 0 5.5 6.25", "digest": "pdf:cd",
         "thumb": b""}], skipped=[("#page=3&image=1", "smaller than 32 px")])
    image = SourceRecord("image", images=[{"id": "0", "suffix": "", "page": None, "bbox": None,
                                           "digest": "file:ef", "thumb": bytes(range(256))}])
    broken = SourceRecord("image", skipped=[("", "cannot decode image: truncated file")])
    records = {hashlib.sha256(bytes([k])).hexdigest(): r for k, r in enumerate([pdf, image, broken])}
    FeatureStore(tmp_path).put_batch("sources", "k", records)
    got = FeatureStore(tmp_path).get_many("sources", "k", list(records), SOURCES_KIND)
    assert got == records


def test_runner_cache_holds_no_pickle_and_refuses_one(tmp_path, caplog, no_unpickling):
    from simbench.features.base import Extracted

    extracted = Extracted(random_features("keypoints", np.random.default_rng(1), 4), np.array([0, 2, 3, 5]),
                          [Skipped("b.png", "cannot decode image")])
    path = tmp_path / "entry.npz"
    cache.save(path, {"extracted": extracted, "extract_s": 1.25})
    hit = cache.load(path)
    assert hit["extract_s"] == 1.25 and hit["extracted"].skipped == extracted.skipped
    for name in ("descriptors", "offsets", "points", "mirrored", "image_sizes"):
        assert np.array_equal(getattr(hit["extracted"].features, name), getattr(extracted.features, name))
    # A pickle where an entry belongs: a miss with a warning, and its code never runs.
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps(Boom(marker)))
    with caplog.at_level(logging.WARNING, logger="simbench"):
        assert cache.load(path) is None
    assert "pickled or object data, which simbench never loads" in caplog.text and not marker.exists()
    # A dataclass outside the allowlist is refused by name.
    with pytest.raises(cache.UnsafeEntry, match="not allowed"):
        cache.loads(cache.dumps(SourceRecord("image")))


def test_consistent_flags_the_odd_record_out():
    good = {"vector": np.zeros(16, np.float32)}
    odd = {"vector": np.zeros(8, np.float32)}
    odd_out = "index record does not match the others (shape or type)"
    assert consistent([good, None, odd, good]) == [None, None, odd_out, None]


# ---------------------------------------------------------------------------------------------------
# A damaged or forged index: a clear error per record, and the run goes on


def make_collection(folder: Path, names=PHOTOS, side: int = 256) -> None:
    """Each photo, a crop of it, and a smaller rotated copy: duplicate pairs to find."""
    folder.mkdir()
    for i, name in enumerate(names):
        im = Image.fromarray(photo(name))
        im.thumbnail((side, side))
        w, h = im.size
        im.save(folder / f"{i:02d}-{name}.jpg", quality=90)
        im.crop((w // 8, h // 8, w, h)).save(folder / f"{i:02d}-{name}-crop.jpg", quality=85)
        im.resize((w * 3 // 4, h * 3 // 4)).rotate(90, expand=True).save(folder / f"{i:02d}-{name}-rot.png")


@pytest.fixture(scope="module")
def hash_index(tmp_path_factory):
    """A collection, the pairs.csv of a run over it, and the index that run made (batches of 4 images)."""
    root = tmp_path_factory.mktemp("hash-index")
    make_collection(root / "photos", PHOTOS[:6])
    run_find(root / "photos", root / "out", root / "index")
    return root


def run_find(folder: Path, out: Path, index: Path):
    cfg = cascade.make_config("hash", ["index_batch=4"])
    return pipeline.find([folder], out, cfg, index=index, progress=False)


def shard_of(index: Path, section: str, position: int = 0) -> tuple[Path, dict]:
    manifests = sorted((index / section).glob("*/*.json"))
    return manifests[position].with_suffix(".npz"), json.loads(manifests[position].read_text())


def replace_shard(shard: Path, data: bytes) -> None:
    """What a forger can do: any shard content, with a manifest that agrees with it."""
    shard.write_bytes(data)
    manifest_path = shard.with_suffix(".json")
    manifest = json.loads(manifest_path.read_text())
    manifest.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def object_array_npz(_shard: Path, marker: Path) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __tree__=np.frombuffer(b"{}", np.uint8), p0=np.array([Boom(marker)], dtype=object))
    return buf.getvalue()


def pickle_payload(_shard: Path, marker: Path) -> bytes:
    return pickle.dumps(Boom(marker))


def malformed_record(shard: Path, _marker: Path) -> bytes:
    records = cache.loads(shard.read_bytes(), record_types())
    first = next(iter(records))
    records[first][0]["words"] = np.zeros(3, np.uint64)  # three words cannot hold a 64-bit code
    return cache.dumps(records)


@pytest.mark.parametrize("forge, says", [(object_array_npz, "pickled or object data"),
                                         (pickle_payload, "pickled or object data"),
                                         (malformed_record, "not a binary code")])
def test_forged_shard_is_reported_and_its_files_read_again(hash_index, tmp_path, caplog, forge, says,
                                                           no_unpickling):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(hash_index / "index", index)
    section = next(p.name for p in index.iterdir() if p.is_dir() and p.name != "sources")
    shard, manifest = shard_of(index, section)
    marker = tmp_path / "pwned"
    replace_shard(shard, forge(shard, marker))
    with caplog.at_level(logging.WARNING, logger="simbench"):
        result = run_find(hash_index / "photos", tmp_path / "out", index)
    assert not marker.exists()
    warned = [r.getMessage() for r in caplog.records if "index record cannot be used" in r.getMessage()]
    assert len(warned) == len(manifest["digests"])  # one clear message per file of the shard
    assert all(says in w and shard.name in w for w in warned)
    assert result.n_new_files == len(manifest["digests"])  # re-read and re-extracted, nothing else
    assert (tmp_path / "out" / "pairs.csv").read_text() == (hash_index / "out" / "pairs.csv").read_text()
    # The re-extracted records are stored again: a third run reads nothing and warns of nothing.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="simbench"):
        assert run_find(hash_index / "photos", tmp_path / "out", index).n_new_files == 0
    assert "cannot be used" not in caplog.text


def test_truncated_shard_and_forged_manifest(hash_index, tmp_path, caplog, no_unpickling):
    import shutil

    index = tmp_path / "index"
    shutil.copytree(hash_index / "index", index)
    shard, manifest = shard_of(index, "sources", 1)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    # A pickle named like a manifest, next to the shards: ignored with a warning, never unpickled.
    marker = tmp_path / "pwned"
    forged = shard.parent / "00000000000000000001-000000000000.json"
    forged.write_bytes(pickle.dumps(Boom(marker)))
    with caplog.at_level(logging.WARNING, logger="simbench"):
        result = run_find(hash_index / "photos", tmp_path / "out", index)
    assert not marker.exists()
    assert f"ignoring index manifest {forged}" in caplog.text
    warned = [r.getMessage() for r in caplog.records if "index record cannot be used" in r.getMessage()]
    assert len(warned) == len(manifest["digests"]) and all("truncated" in w for w in warned)
    assert result.n_new_files == len(manifest["digests"])
    assert (tmp_path / "out" / "pairs.csv").read_text() == (hash_index / "out" / "pairs.csv").read_text()


def test_record_inconsistent_with_the_others_is_skipped_with_a_reason(hash_index, tmp_path):
    """A well-formed record of another shape (here a 128-bit code among 64-bit ones) cannot be compared
    with the rest: that image is listed in skipped.csv and the others are compared as before."""
    import shutil

    index = tmp_path / "index"
    shutil.copytree(hash_index / "index", index)
    section = next(p.name for p in index.iterdir() if p.is_dir() and p.name != "sources")
    shard, _ = shard_of(index, section)
    records = cache.loads(shard.read_bytes(), record_types())
    first = next(iter(records))
    records[first][0] = {"words": np.zeros(2, np.uint64), "bits": 128}
    replace_shard(shard, cache.dumps(records))
    result = run_find(hash_index / "photos", tmp_path / "out", index)
    odd = [s for s in result.skipped if "does not match the others" in s.reason]
    assert len(odd) == 1
    baseline = (hash_index / "out" / "pairs.csv").read_text().splitlines()
    kept = [line for line in baseline if Path(odd[0].path).name not in line]
    assert (tmp_path / "out" / "pairs.csv").read_text().splitlines() == kept


def test_index_of_another_version_is_refused_clearly(tmp_path):
    (tmp_path / "VERSION").write_text("1\n")
    with pytest.raises(ValueError, match="version '1'.*delete this one"):
        FeatureStore(tmp_path)


# ---------------------------------------------------------------------------------------------------
# SIGKILL mid-extraction, then the same command again


def find_command(folder: Path, out: Path, index: Path) -> list[str]:
    return [sys.executable, "-m", "simbench", "find", str(folder), "--out", str(out), "--index", str(index),
            "--method", "keypoints", "-q", "index_batch=3"]


def indexed_digests(index: Path) -> set[str]:
    """Files whose sources record is committed (the last shard of each batch)."""
    return {d for m in index.glob("sources/*/*.json") for d in json.loads(m.read_text())["digests"]}


def test_run_killed_mid_extraction_resumes_to_the_same_pairs(tmp_path):
    folder = tmp_path / "photos"
    make_collection(folder, PHOTOS[:10], side=200)
    n_files = 30
    index = tmp_path / "index"
    proc = subprocess.Popen(find_command(folder, tmp_path / "killed", index),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while not indexed_digests(index) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[0][-2000:]!r}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = indexed_digests(index)
    assert 0 < len(done) < n_files  # killed mid-extraction: some batches stored, not all
    assert not (tmp_path / "killed" / "pairs.csv").exists()

    resumed = subprocess.run(find_command(folder, tmp_path / "resumed", index), check=False, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    new = int(re.search(r"(\d+) new to the index", resumed.stdout).group(1))
    assert new == n_files - len(done)  # the finished batches were not extracted again
    fresh = subprocess.run(find_command(folder, tmp_path / "fresh", tmp_path / "fresh-index"),
                           check=False, capture_output=True, text=True, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    pairs = (tmp_path / "resumed" / "pairs.csv").read_text()
    assert len(pairs.splitlines()) > 10  # the collection has pairs to find
    assert pairs == (tmp_path / "fresh" / "pairs.csv").read_text()
