"""Memory and hashing stay bounded by what a run touches, not by the size of the store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

from pipeline.audio import MelConfig
from pipeline.extract import audio_arrays, audio_params, face_arrays, face_params, fusion_arrays, fusion_params
from pipeline.faces import FaceConfig
from pipeline.records import ClipRecord
from stores.integrity import refresh_checksums, verify, write_checksums
from stores.store import SHARD_ROWS, FeatureStore
from tests.conftest import REPO

FACES, MEL = FaceConfig(frames=16, size=96), MelConfig(n_mels=32)


def make_store(location, n: int, written: list[int]) -> FeatureStore:
    """n clips whose faces and audio are committed ok, with real data only in `written` (the rest read as zeros),
    and a concat fusion done for every clip but those: what fusing a few late-added clips looks like."""
    store = FeatureStore.create(location, dataset="sample", class_names=["ANG"], split_seed=0)
    store.add_clips([ClipRecord(clip_id=f"c{i:04d}", video_path="v", label=0, emotion="ANG", speaker=str(i % 7)) for i in range(n)])
    rng = np.random.default_rng(0)
    sets = []
    for kind, params, spec in (("faces", face_params(FACES), face_arrays(FACES)),
                               ("audio", audio_params(MEL, FACES.frames, FACES.size), audio_arrays(MEL, FACES.frames, FACES.size))):
        fs = store.ensure_feature_set(kind, params, spec, {})
        arrays = {name: rng.integers(0, 255, (len(written), *shape)).astype(dtype) for name, (shape, dtype) in spec.items()}
        store.write_rows(fs, np.asarray(written), arrays, ["ok"] * len(written), [""] * len(written))
        fs["status"][:] = np.full(n, "ok", dtype=object)
        fs["done"][:] = np.ones(n, np.uint8)
        sets.append(fs)
    fused = store.ensure_feature_set("fusion-concat", fusion_params("concat", sets[0].fingerprint, sets[1].fingerprint, 0),
                                     fusion_arrays("concat", FACES.frames, FACES.size), {})
    done = np.ones(n, np.uint8)
    done[written] = 0
    fused["done"][:] = done
    return store


def fuse_under_cap(location, cap_mb: int) -> subprocess.CompletedProcess:
    """materialise_fusion in a fresh process whose address space may grow only `cap_mb` past its warm size;
    prints (fused count, done rows)."""
    script = textwrap.dedent(f"""
        import resource
        from pipeline.run import materialise_fusion
        from stores.store import FeatureStore
        store = FeatureStore.open({str(location)!r}, mode="r+")
        faces, audio = store.feature_sets("faces")[0], store.feature_sets("audio")[0]
        faces["crops"][0]; audio["chunks"][0]  # warm: zarr's threads and codecs exist before the cap
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + {cap_mb} * 2**20, resource.RLIM_INFINITY))
        fused, count = materialise_fusion(store, "concat", faces, audio, seed=0, progress=False, who={{}})
        print(count, int(fused.done().sum()))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_fusing_scattered_rows_reads_only_those_rows_under_a_memory_cap(tmp_path):
    n, scattered = 600, [3, 250, 598]
    location = tmp_path / "s.zarr"
    make_store(location, n, scattered)
    # The covering range of rows 3..598 holds ~350 MB of crops and chunks; the cap allows 150 MB more than the
    # process uses once everything is imported and warm.
    result = fuse_under_cap(location, cap_mb=150)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["3", str(n)]
    store = FeatureStore.open(location)
    fused = store.feature_sets("fusion-concat")[0]
    faces, audio = store.feature_sets("faces")[0], store.feature_sets("audio")[0]
    row = scattered[1]  # the left half of a concat image is the face, the right half the spectrogram
    image = fused["image"][row]
    assert np.array_equal(image[:, : FACES.size], faces["middle"][row])
    assert np.array_equal(image[:, FACES.size :, 0], audio["spec"][row])


def test_a_run_rehashes_only_the_shards_it_wrote_and_the_list_equals_a_full_rehash(tmp_path):
    location = tmp_path / "s.zarr"
    make_store(location, 5 * SHARD_ROWS, list(range(0, 5 * SHARD_ROWS, 3)))
    write_checksums(location)
    store = FeatureStore.open(location, mode="r+")
    faces = store.feature_sets("faces")[0]
    rows = np.asarray([SHARD_ROWS + 1, SHARD_ROWS + 2])  # both in the second shard
    spec = face_arrays(FACES)
    arrays = {name: np.full((2, *shape), 7, dtype) for name, (shape, dtype) in spec.items()}
    store.write_rows(faces, rows, arrays, ["ok", "ok"], ["", ""])
    hashed = refresh_checksums(location, store.touched)
    data = [rel for rel in hashed if "/c/" in rel and rel.startswith("features/")]  # the rest: metadata and the clip table
    assert data and all(rel.startswith(f"features/{faces.name}/") for rel in data)
    for rel in data:
        array = rel.split("/c/")[0].rsplit("/", 1)[-1]
        sharded = array in spec and np.prod(spec[array][0]) >= 4096
        assert rel.split("/c/")[1].split("/")[0] == ("1" if sharded else "0"), rel  # the second shard only
    incremental = (location / "avstore-checksums.json").read_text()
    assert verify(location) == []
    full = write_checksums(location)  # what re-hashing everything gives: the same list
    assert (location / "avstore-checksums.json").read_text() == incremental
    crops = f"features/{faces.name}/crops/c/"
    assert sum(rel.startswith(crops) for rel in full) == 5 and sum(rel.startswith(crops) for rel in data) == 1


def test_uncommitting_rows_for_a_retry_counts_as_touching_them(tmp_path):
    """A retried row is first marked not done; if its redo then fails, nothing rewrites it, so the un-commit
    itself must be in what the incremental checksum list re-hashes."""
    location = tmp_path / "s.zarr"
    make_store(location, 2 * SHARD_ROWS, [0, 1])
    write_checksums(location)
    store = FeatureStore.open(location, mode="r+")
    faces = store.feature_sets("faces")[0]
    store.uncommit_rows(faces, np.asarray([SHARD_ROWS + 3]))
    assert store.touched == {faces.name: {SHARD_ROWS + 3}}
    hashed = refresh_checksums(location, store.touched)
    assert f"features/{faces.name}/done/c/0" in hashed
    assert verify(location) == []


def test_fusing_whole_shards_stays_within_a_shards_memory(tmp_path):
    """Extraction fuses a shard's worth of neighbouring rows at a time. Reading them by orthogonal selection
    made zarr decode the whole shard once per row (32x the memory: 10 GB at 224 px); slices read each once."""
    n = 2 * SHARD_ROWS
    location = tmp_path / "s.zarr"
    make_store(location, n, list(range(n)))
    fused = FeatureStore.open(location, mode="r+").feature_sets("fusion-concat")[0]
    fused["done"][:] = 0  # every row still to fuse
    result = fuse_under_cap(location, cap_mb=200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [str(n), str(n)]
