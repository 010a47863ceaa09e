"""Workers write their own shards; the client commits small values and the sums the tasks computed.

Real parts throughout: a real Dask cluster (LocalCluster, worker processes), real ffmpeg and MTCNN, real zarr on
disk, a real SIGKILL. See stores/shard_files.py, pipeline/run.py (shards_task), pipeline/commit.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from pipeline.audio import MelConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, remove_partial_files, run_extract
from stores.integrity import CHECKSUMS, RECORDED, verify
from stores.location import locate
from stores.shards import read_shard
from tests.conftest import REPO

CONFIG = ExtractConfig(faces=FaceConfig(frames=8, size=64, detect_every=3), mel=MelConfig(n_mels=32), fusions=("concat",))
CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def large_shards(store: Path) -> dict[str, int]:
    """Every shard file of a sharded (large) array: store-relative path -> size."""
    root = zarr.open_group(str(store), mode="r")
    out = {}
    for name, group in root["features"].groups():
        for array_name, array in group.arrays():
            if array.shards is not None:
                for path in (store / "features" / name / array_name / "c").rglob("*"):
                    if path.is_file() and not path.name.endswith(".partial"):
                        out[path.relative_to(store).as_posix()] = path.stat().st_size
    return out


def bytes_read_by_this_process() -> int:
    """Every byte this process has read through a system call: files and sockets alike (/proc/self/io)."""
    return int(next(line.split()[1] for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar:")))


@pytest.fixture(scope="module")
def cluster():
    from dask.distributed import Client

    from pipeline.workers import local_cluster

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with local_cluster(2) as running:  # up for the whole module: the tests measure runs, not the start-up
        with Client(running) as client:
            client.wait_for_workers(2)
        yield running


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cluster):
    """18 clips (three actors) extracted through the cluster into shards of 4 rows: five tasks."""
    import stores.store

    corpus = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(corpus, actors=3, sentences=1, seed=0)
    records = load_corpus("sample", corpus)  # the store places the speakers
    store = tmp_path_factory.mktemp("stores") / "workers.zarr"
    one_per_actor = list({r.speaker: r for r in records}.values())
    run_extract(one_per_actor, tmp_path_factory.mktemp("warm") / "s.zarr", CONFIG, dataset="sample", class_names=CLASSES, progress=False,
                scheduler=cluster.scheduler_address)  # this process's first run imports and reads ~2 MB of modules
    shard_rows, stores.store.SHARD_ROWS = stores.store.SHARD_ROWS, 4  # new arrays only: as AVSTORE_SHARD_ROWS=4 would
    try:
        before = bytes_read_by_this_process()
        summary = run_extract(records, store, CONFIG, dataset="sample", class_names=CLASSES, progress=False, scheduler=cluster.scheduler_address)
        read = bytes_read_by_this_process() - before
    finally:
        stores.store.SHARD_ROWS = shard_rows
    assert summary.usable == 18 and not summary.errors
    return corpus, store, summary, read


def test_the_client_never_receives_the_large_arrays(first_run):
    """The workers write every shard: the client process (which here also hosts the scheduler) reads, from its
    sockets and files together, a small fraction of the bytes of the shards it commits. When the client wrote
    the shards it received every encoded array first."""
    _, store, _, read = first_run
    shards = large_shards(store)
    assert {rel.split("/")[2] for rel in shards} >= {"crops", "chunks", "image"}
    assert len([rel for rel in shards if "/crops/" in rel]) == 5  # rows 0-17 in shards of 4
    assert read < sum(shards.values()) / 4, (read, sum(shards.values()))


def test_a_first_run_hashes_no_shard_and_the_sums_from_the_tasks_are_the_files_own(first_run):
    _, store, summary, _ = first_run
    shards = large_shards(store)
    assert summary.hashed and not set(summary.hashed) & set(shards)  # metadata and small arrays only
    listed = json.loads((store / CHECKSUMS).read_text())
    for rel in shards:
        assert listed[rel]["sha256"] == hashlib.sha256((store / rel).read_bytes()).hexdigest(), rel
        assert listed[rel]["size"] == shards[rel]
    assert verify(locate(str(store))) == []
    assert not (store / RECORDED).exists()  # merged into the list, then removed


def test_a_run_that_adds_clips_leaves_committed_shards_unread(first_run, tmp_path, cluster):
    """A fourth actor's clips (rows 18-23) fill shards 4 (read back: it held rows 16-17) and 5; shards 0-3 keep
    their files and their sums, hashed by nobody."""
    import shutil

    import stores.store

    corpus, first, _, _ = first_run
    store = tmp_path / "grown.zarr"
    shutil.copytree(first, store)
    kept = {rel: (entry["sha256"], os.stat(store / rel).st_ino, os.stat(store / rel).st_mtime_ns)
            for rel, entry in json.loads((store / CHECKSUMS).read_text()).items()
            if rel in large_shards(store) and int(rel.split("/c/")[1].split("/")[0]) < 4}
    assert len(kept) >= 4 * 3
    write_sample_corpus(corpus, actors=4, sentences=1, seed=0)  # same files, plus the fourth actor's
    records = load_corpus("sample", corpus)  # the store places the speakers
    shard_rows, stores.store.SHARD_ROWS = stores.store.SHARD_ROWS, 4
    try:
        summary = run_extract(records, store, CONFIG, dataset="sample", class_names=CLASSES, progress=False, scheduler=cluster.scheduler_address)
    finally:
        stores.store.SHARD_ROWS = shard_rows
    assert summary.computed == 6 and summary.usable == 24
    shards = large_shards(store)
    assert not set(summary.hashed) & set(shards)
    listed = json.loads((store / CHECKSUMS).read_text())
    now = {rel: (listed[rel]["sha256"], os.stat(store / rel).st_ino, os.stat(store / rel).st_mtime_ns) for rel in kept}
    assert now == kept  # the same files, untouched, and the same sums
    assert len([rel for rel in shards if "/crops/" in rel]) == 6
    assert verify(locate(str(store))) == []


WRITER = """
import sys
sys.path.insert(0, {repo!r})
import numpy as np
from stores.location import locate
from stores.shard_files import ShardedArray, write_shard
where, array = locate({store!r}), ShardedArray("big", shard_rows=4, length=4, ndim=2, chain="compact")
rng = np.random.default_rng(0)
chunks = {{k: rng.bytes(8 << 20) for k in range(4)}}
n = 0
while True:
    write_shard(where, array, 0, chunks)
    n += 1
    print(n, flush=True)
"""


def test_a_shard_file_is_only_ever_seen_whole_even_when_its_writer_is_killed(tmp_path):
    """A process rewrites a 32 MB shard over and over; every read of the file meanwhile finds it whole (its index's
    crc32c right, every chunk in place), and so does the read after a SIGKILL mid-write. What the killed write
    left is a temporary file, which the next extract removes."""
    store = tmp_path / "s.zarr"
    store.mkdir()
    target = store / "big" / "c" / "0" / "0"
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(repo=str(REPO), store=str(store))], stdout=subprocess.PIPE, text=True)
    expected = 4 * (8 << 20) + 4 * 16 + 4
    seen = 0
    try:
        deadline = time.time() + 120
        while seen < 40 and time.time() < deadline and writer.poll() is None:
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            assert len(data) == expected, f"a reader saw {len(data)} of the shard's {expected} bytes"
            assert [len(c) for c in read_shard(data, 4, str(target))] == [8 << 20] * 4
            seen += 1
        assert seen >= 40, "the writer did not get going"
        time.sleep(0.013)  # somewhere inside a write
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    data = target.read_bytes()
    assert len(data) == expected and [len(c) for c in read_shard(data, 4, str(target))] == [8 << 20] * 4
    remove_partial_files(locate(str(store)))
    assert [p.name for p in target.parent.iterdir()] == ["0"]
