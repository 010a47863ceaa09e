"""Stores in a bucket: extract (killed and resumed), info, verify, diff, read-only consumers, the S3 writer lock.

A real S3 server (moto, IAM enforced) on 127.0.0.1; the CLI runs as subprocesses configured only through the
standard AWS_* environment variables.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import zarr

from stores.integrity import verify, write_checksums
from stores.lock import LOCK_NAME, StoreLockedError, WriterLock
from stores.location import locate
from tests.conftest import REPO
from tests.remote_helpers import (
    N_CLIPS, arrays_of, assert_same_arrays, cli, extract_args, moto_s3, reference_store, sample_corpus,
)


@pytest.fixture(scope="module")
def s3():
    with moto_s3(buckets=("lab",)) as server:
        yield server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return sample_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_store(tmp_path_factory)


@pytest.fixture(scope="module")
def bucket_store(s3, corpus, reference) -> str:
    """s3://lab/sample.zarr, extracted with --commit-every 3 into shards of 4 rows (tasks of 4 clips, each writing
    its shards into the bucket: one PUT each), killed with SIGKILL mid-run, then resumed."""
    url = "s3://lab/sample.zarr"
    env = {**s3.env(), "AVSTORE_SHARD_ROWS": "4"}
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *extract_args(corpus, url, "--commit-every", "3")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, done = time.time() + 180, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            done = _faces_done(url)
            if done >= 1:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9 (a no-op if it already exited)
        proc.wait()
    assert 1 <= done < N_CLIPS, f"the kill did not land mid-run (done={done})"
    assert s3.fs().exists(f"lab/sample.zarr/{LOCK_NAME}")  # the dead writer's lock is still there...
    resumed = cli(*extract_args(corpus, url), env=env)  # ...and is taken over: same host, pid gone
    assert resumed.returncode == 0, resumed.stderr
    faces_redone = int(re.search(r"processed \(faces (\d+)", resumed.stdout).group(1))
    assert faces_redone <= N_CLIPS - done  # rows committed before the kill were kept, not recomputed
    assert not s3.fs().exists(f"lab/sample.zarr/{LOCK_NAME}")
    return url


def _faces_done(url: str) -> int:
    try:
        features = zarr.open_group(locate(url).zarr_store(read_only=True), mode="r")["features"]
        faces = [g for k, g in features.groups() if k.startswith("faces-")]
        return int(faces[0]["done"][:].sum()) if faces else 0
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


@pytest.mark.heavy
def test_killed_and_resumed_bucket_extraction_equals_a_local_run(bucket_store, reference):
    assert_same_arrays(arrays_of(reference), arrays_of(bucket_store))
    assert verify(bucket_store) == []  # the checksums were written through fsspec at the end of the resumed run


@pytest.mark.slow
def test_info_on_a_bucket_shows_provenance(bucket_store, s3):
    result = cli("info", "--store", bucket_store, "--json", env=s3.env("reader"))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["dataset"] == "sample" and info["clips"] == N_CLIPS and info["bytes"] > 0
    faces = next(fs for fs in info["feature_sets"] if fs["kind"] == "faces")
    assert faces["params"]["frames"] == 10 and faces["status"] == {"ok": N_CLIPS}
    assert faces["made_by"] and faces["made_at"] and faces["versions"]["zarr"] == zarr.__version__


@pytest.mark.slow
def test_a_flipped_object_fails_verify(bucket_store, s3):
    fs = s3.fs()
    fs.copy("lab/sample.zarr", "lab/flipped.zarr", recursive=True)
    faces = next(p for p in fs.ls("lab/flipped.zarr/features") if p.rsplit("/", 1)[-1].startswith("faces-"))
    shard = f"{faces}/crops/c/0/0/0/0/0"
    data = bytearray(fs.cat_file(shard))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file(shard, bytes(data))
    result = cli("verify", "--store", "s3://lab/flipped.zarr", env=s3.env("reader"))
    assert result.returncode == 1
    name = faces.rsplit("/", 1)[-1]
    assert f"changed: features/{name}/crops/c/0/0/0/0/0 (array features/{name}/crops, clip rows 0-3)" in result.stdout  # shards of 4 rows


@pytest.mark.slow
def test_a_read_only_bucket_serves_consumers_and_refuses_extract(bucket_store, corpus, s3):
    reader = s3.env("reader")
    assert cli("info", "--store", bucket_store, env=reader).returncode == 0
    assert cli("verify", "--store", bucket_store, env=reader).returncode == 0
    before = sorted(s3.fs().find("lab/sample.zarr"))
    result = cli(*extract_args(corpus, bucket_store), env=reader)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "read-only for this user" in result.stderr and result.stderr.strip().count("\n") == 0
    s3.fs().invalidate_cache()
    assert sorted(s3.fs().find("lab/sample.zarr")) == before  # nothing written, not even a lock


@pytest.mark.slow
def test_diff_bucket_against_local_then_after_a_changed_parameter(bucket_store, reference, corpus, tmp_path, s3):
    same = cli("diff", bucket_store, str(reference), env=s3.env("reader"))
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.strip() == "no difference"

    changed = tmp_path / "mels24.zarr"
    shutil.copytree(reference, changed)
    result = cli(*[a if a != "32" else "24" for a in extract_args(corpus, str(changed))])  # n_mels 32 -> 24
    assert result.returncode == 0, result.stderr
    different = cli("diff", bucket_store, str(changed), "--json", env=s3.env("reader"))
    assert different.returncode == 1, different.stdout + different.stderr
    report = json.loads(different.stdout)
    assert not report["identical"] and not report["feature_sets"]["only_a"]
    assert sorted(name.split("-")[0] for name in report["feature_sets"]["only_b"]) == ["audio", "fusion"]
    audio = next(c for c in report["feature_sets"]["param_changes"] if c["kind"] == "audio")
    assert audio["params"] == {"n_mels": [32, 24]}
    assert not report["arrays"] and not report["clips"]["only_a"] and not report["clips"]["only_b"]


@pytest.mark.slow
def test_diff_finds_one_changed_clip(reference, tmp_path):
    """A single committed row changed (and re-checksummed, as a finished run would): named by clip id."""
    changed = tmp_path / "one.zarr"
    shutil.copytree(reference, changed)
    root = zarr.open_group(str(changed), mode="r+")
    audio = next(g for k, g in root["features"].groups() if k.startswith("audio-"))
    clip = str(root["clips/clip_id"][5])
    mel = audio["mel"][5]
    audio["mel"][5] = mel + 1
    write_checksums(changed)
    result = cli("diff", str(reference), str(changed))
    assert result.returncode == 1
    assert f"audio-{audio.attrs['fingerprint']}/mel: differs for {clip}" in result.stdout
    assert result.stdout.count("differs for") == 1


def test_the_s3_writer_lock_is_exclusive_and_a_dead_writers_lock_is_taken_over(s3):
    url = "s3://lab/locked.zarr"
    with WriterLock(url):
        with pytest.raises(StoreLockedError, match=f"is being written by pid {os.getpid()}"):
            WriterLock(url).acquire()
    assert not s3.fs().exists(f"lab/locked.zarr/{LOCK_NAME}")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    import socket

    s3.fs().pipe_file(f"lab/locked.zarr/{LOCK_NAME}", json.dumps({"pid": int(dead), "host": socket.gethostname(), "since": "then"}).encode())
    with WriterLock(url) as lock:
        assert lock.held
    other_host = json.dumps({"pid": 1, "host": "another-node", "since": "then"}).encode()
    s3.fs().pipe_file(f"lab/locked.zarr/{LOCK_NAME}", other_host)
    with pytest.raises(StoreLockedError, match="on another-node"):
        WriterLock(url).acquire()


def test_a_missing_bucket_or_backend_is_one_line_exit_2(s3, corpus):
    result = cli(*extract_args(corpus, "s3://no-such-bucket/x.zarr"), env=s3.env())
    assert result.returncode == 2 and "bucket 'no-such-bucket' does not exist" in result.stderr
    assert result.stderr.strip().count("\n") == 0
    result = cli("info", "--store", "s3://lab/nothing-here.zarr", env=s3.env("reader"))
    assert result.returncode == 2 and "no avstore store at 's3://lab/nothing-here.zarr'" in result.stderr
    result = cli("info", "--store", "s3://lab/nothing-here.zarr", env={**s3.env("reader"), "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.strip().count("\n") == 0
