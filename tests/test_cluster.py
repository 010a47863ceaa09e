"""`extract --scheduler`: a real external Dask cluster (a scheduler and two workers, as a lab would start them).

The scheduler and workers are `.venv/bin/dask` subprocesses on 127.0.0.1 with `PYTHONPATH` at the repository,
so workers can import `pipeline`. Each runs in its own process group and the fixture's finalizer kills every
group, nanny and worker children included, whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import REPO
from tests.remote_helpers import arrays_of, assert_same_arrays, cli, extract_args, reference_store, sample_corpus

DASK = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin" / "dask"


@contextmanager
def dask_cluster(folder: Path, env: dict[str, str]) -> Iterator[str]:
    """tcp://127.0.0.1:PORT of a scheduler with two single-threaded workers, each process with `env`; every one of
    them (nanny and worker children included) is killed on exit, whatever happened."""
    env = {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    processes: list[subprocess.Popen] = []

    def start(*args: str, log: str) -> None:
        with open(folder / log, "w") as out:
            processes.append(subprocess.Popen([str(DASK), *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))

    try:
        scheduler_file = folder / "scheduler.json"
        start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file), log="scheduler.log")
        address = _wait_for(lambda: scheduler_file.is_file() and json.loads(scheduler_file.read_text())["address"], "scheduler", folder)
        for i in range(2):
            start("worker", address, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1", "--no-dashboard",
                  "--memory-limit", "0", "--name", f"w{i}", log=f"worker{i}.log")
        _wait_for(lambda: _worker_count(address) >= 2, "two workers", folder)
        yield address
    finally:
        for proc in processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for proc in processes:  # the nanny's worker children share the group; make sure none survived
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[str]:
    """A scheduler and two workers with this process's environment."""
    if not DASK.is_file():
        pytest.skip(f"{DASK} not found")
    with dask_cluster(tmp_path_factory.mktemp("dask"), dict(os.environ)) as address:
        yield address


def _worker_count(address: str) -> int:
    from dask.distributed import Client

    with Client(address, timeout=10) as client:
        return len(client.scheduler_info()["workers"])


def _wait_for(check, what: str, logs: Path, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.5)
    details = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))
    raise AssertionError(f"{what} did not start within {timeout} s\n{details}")


@pytest.mark.heavy
def test_extract_through_an_external_cluster_equals_a_local_run(cluster, tmp_path_factory, tmp_path):
    corpus, reference = sample_corpus(tmp_path_factory), reference_store(tmp_path_factory)
    store = tmp_path / "cluster.zarr"
    result = cli(*extract_args(corpus, str(store), "--scheduler", cluster, workers=None))
    assert result.returncode == 0, result.stderr
    assert "18 processed" in result.stdout
    assert_same_arrays(arrays_of(reference), arrays_of(store))
    assert cli("verify", "--store", str(store)).returncode == 0


@pytest.mark.slow
@pytest.mark.heavy  # 45 s: `make test` stays under 15 min; `make test-all` runs it
def test_a_worker_lost_mid_run_has_its_clips_redone_and_nothing_written_twice_or_half(cluster, tmp_path_factory, tmp_path):
    """A third worker joins, takes clips, and is killed (SIGKILL, nanny and all) while the extract runs."""
    corpus, reference = sample_corpus(tmp_path_factory), reference_store(tmp_path_factory)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    with open(tmp_path / "doomed.log", "w") as log:
        doomed = subprocess.Popen([str(DASK), "worker", cluster, "--nthreads", "1", "--nworkers", "1", "--host", "127.0.0.1",
                                   "--no-dashboard", "--memory-limit", "0", "--name", "doomed"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _worker_count(cluster) >= 3, "a third worker", tmp_path)
        store = tmp_path / "lost-worker.zarr"
        extract = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *extract_args(corpus, str(store), "--scheduler", cluster, "--commit-every", "1", workers=None)],
                                   cwd=REPO, env={**os.environ, "AVSTORE_SHARD_ROWS": "2"},  # tasks of 2 clips: 9 of them
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda: _faces_done(store) >= 2, "the first committed clips", tmp_path, timeout=180)
        assert extract.poll() is None and _faces_done(store) < 18, "the extract finished before the worker could be lost"
        os.killpg(doomed.pid, signal.SIGKILL)  # the worker is lost with whatever it was computing
        out, err = extract.communicate(timeout=600)
        assert extract.returncode == 0, err[-2000:]
        assert "18 processed" in out
        assert_same_arrays(arrays_of(reference), arrays_of(store))
        assert cli("verify", "--store", str(store)).returncode == 0
    finally:
        try:
            os.killpg(doomed.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        doomed.wait()


def _faces_done(store: Path) -> int:
    import zarr

    try:
        root = zarr.open_group(str(store), mode="r")
        faces = [g for name, g in root["features"].groups() if name.startswith("faces-")]
        return int(faces[0]["done"][:].sum()) if faces else 0
    except Exception:  # noqa: BLE001 - not created yet
        return 0
