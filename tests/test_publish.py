"""`cli.py publish`: finished stores only, verified on arrival, visible only when complete, read-only when local."""

from __future__ import annotations

import shutil
import stat
import threading
from pathlib import Path

import pytest

from stores.integrity import CHECKSUMS, read_checksums
from stores.lock import LOCK_NAME
from tests.remote_helpers import arrays_of, assert_same_arrays, cli, extract_args, moto_s3, reference_store, sample_corpus


@pytest.fixture(scope="module")
def s3():
    with moto_s3(buckets=("pub",)) as server:
        yield server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return sample_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return reference_store(tmp_path_factory)


def n_files(reference: Path) -> int:
    return len(read_checksums(reference)) + 1  # every checksummed file, and the checksums


class Watcher(threading.Thread):
    """Polls a destination while a publish runs and records how complete it was each time it looked there."""

    def __init__(self, looks_there, count):
        super().__init__(daemon=True)
        self.looks_there, self.count, self.seen, self.stop = looks_there, count, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.looks_there():
                self.seen.append(self.count())
            self.stop.wait(0.02)

    def __enter__(self) -> "Watcher":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join()


@pytest.mark.slow
def test_publish_to_a_local_folder_is_atomic_verified_and_read_only(reference, corpus, tmp_path):
    dest = tmp_path / "lab" / "sample.zarr"
    with Watcher(dest.exists, lambda: sum(p.is_file() for p in dest.rglob("*"))) as watcher:
        result = cli("publish", "--store", str(reference), "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert "checksums verified on arrival" in result.stdout
    assert set(watcher.seen) <= {n_files(reference)}  # never seen half-copied
    assert [p.name for p in dest.parent.iterdir()] == ["sample.zarr"]  # the hidden temp folder is gone
    assert all(not stat.S_IMODE(p.stat().st_mode) & 0o222 for p in [dest, *dest.rglob("*")])
    assert_same_arrays(arrays_of(reference), arrays_of(dest))

    # consumers read it; extract refuses it (even for root, who could write it: it has no write bit at all)
    assert cli("info", "--store", str(dest)).returncode == 0
    assert cli("verify", "--store", str(dest)).returncode == 0
    refused = cli(*extract_args(corpus, str(dest)))
    assert refused.returncode == 2 and "read-only for this user" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0

    again = cli("publish", "--store", str(reference), "--to", str(dest))
    assert again.returncode == 2 and "already exists" in again.stderr and again.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_publish_to_a_bucket_and_back(reference, s3, tmp_path):
    fs, prefix = s3.fs(), "pub/sample.zarr"

    def count() -> int:
        fs.invalidate_cache()
        return len(fs.find(prefix))

    with Watcher(lambda: fs.exists(f"{prefix}/zarr.json"), count) as watcher:
        up = cli("publish", "--store", str(reference), "--to", f"s3://{prefix}", env=s3.env("writer"))
    assert up.returncode == 0, up.stderr
    assert set(watcher.seen) <= {n_files(reference)}  # the root zarr.json went last: openable means complete
    assert cli("verify", "--store", f"s3://{prefix}", env=s3.env("reader")).returncode == 0

    back = tmp_path / "back.zarr"  # publishing from a bucket needs only read access to it
    down = cli("publish", "--store", f"s3://{prefix}", "--to", str(back), env=s3.env("reader"))
    assert down.returncode == 0, down.stderr
    assert_same_arrays(arrays_of(reference), arrays_of(back))
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == sorted([*read_checksums(reference), CHECKSUMS])

    taken = cli("publish", "--store", str(reference), "--to", f"s3://{prefix}", env=s3.env("writer"))
    assert taken.returncode == 2 and "already exists" in taken.stderr
    denied = cli("publish", "--store", str(reference), "--to", "s3://pub/by-reader.zarr", env=s3.env("reader"))
    assert denied.returncode == 2 and denied.stderr.strip().count("\n") == 0
    assert not fs.exists("pub/by-reader.zarr/zarr.json")


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    ("no-checksums", f"has no {CHECKSUMS}"),
    ("writer-lock", "holds a writer lock"),
    ("flipped-byte", "fails verify"),
])
def test_an_unfinished_or_damaged_store_is_not_published(reference, tmp_path, damage, message):
    src = tmp_path / "src.zarr"
    shutil.copytree(reference, src)
    if damage == "no-checksums":
        (src / CHECKSUMS).unlink()
    elif damage == "writer-lock":
        (src / LOCK_NAME).write_text('{"pid": 1, "host": "elsewhere"}')
    else:
        shard = next(p for p in sorted(src.rglob("c/*")) if p.is_file())
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    dest = tmp_path / "out" / "sample.zarr"
    result = cli("publish", "--store", str(src), "--to", str(dest))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert not dest.parent.exists()  # refused before anything was written
