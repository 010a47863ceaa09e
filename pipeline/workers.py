"""Local Dask workers forked from one server that imported their libraries once.

Why: before its first clip a worker spends ~3.5 CPU-seconds importing torch; spawned workers on a laptop's few
cores all paid that at once. With Dask's `forkserver` start method, the server imports pipeline/worker_imports.py
once and every worker is a fork of it.

The server starts once a run knows it has clips to compute: for a fresh store as soon as its clips are recorded
(`start_import_server`, beside the planning), otherwise with the first local cluster. Started before that, it
cost a re-run with nothing to do ~3.5 CPU-s of imports in the background, and a caller capturing the output
waited for them, since the server holds the same stdout.
"""

from __future__ import annotations

import logging
import multiprocessing
from contextlib import contextmanager

WORKER_IMPORTS = "pipeline.worker_imports"
PRELOAD = [WORKER_IMPORTS, "distributed"]  # ours first: its thread variables must be set before numpy loads OpenBLAS
FORKSERVER = "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows: spawned workers there, as Dask's default


@contextmanager
def forked_workers():
    """Dask worker processes started within this block are forks of the import server, started here with our
    preload list if it is not running yet (Dask sets its own list on first use; that reaches no running server).

    Workers a nanny restarts after this block are spawned as usual (the same code, slower to start)."""
    import dask

    if not FORKSERVER:
        yield
        return
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        start_import_server()
        yield


def start_import_server() -> None:
    """Start the import server, if it is not running, without waiting for its imports.

    run_extract calls it as soon as it knows local workers will be needed (a fresh store), so that the server's
    ~3.5 CPU-s of imports overlap with planning the run and importing Dask here: ~0.8 s of a fresh extraction's
    start-up on 2 cores. Only a run sure to compute may call it: a re-run with nothing to do must not pay them."""
    if FORKSERVER:
        from multiprocessing import forkserver

        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()


QUIET_MONITORS = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.deploy.cluster-repr-interval": "10s",
}
"""Dask's monitors, for a dashboard a local run does not have. The statistical profilers walk each worker's stack
every 10 ms (~3 % of a clip). The scheduler and the workers' nannies run in this process, the one that commits
every clip: the event loop health check every 20 ms, the system monitors (psutil) every 500 ms and each nanny's
check of its worker's memory every 100 ms cost it a fixed share of a core whatever the clip rate (~40 CPU-ms per
second with 2 workers, more with each worker). Every 1 s, 5 s and 1 s they cost a tenth of that; a worker
that outgrows its memory limit is still stopped, within a second."""


def local_cluster(workers: int):
    """`workers` single-threaded worker processes on this machine, forked from the import server, with Dask's
    monitors quiet (QUIET_MONITORS)."""
    import dask
    from dask.distributed import LocalCluster

    with forked_workers(), dask.config.set(QUIET_MONITORS):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
