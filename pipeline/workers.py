"""Local Dask workers forked from one server that imported their libraries once.

Why: before its first clip a worker spends ~3.5 CPU-seconds importing torch; spawned workers on a laptop's few
cores all paid that at once. With Dask's `forkserver`
start method, the server imports pipeline/worker_imports.py once and every worker is a fork of it.

The server starts with the first local cluster, once a run knows it has clips to compute: started earlier (beside
the planning, ~1 s sooner to the first clip) it cost a re-run with nothing to do ~6 CPU-s of imports in the
background, and a caller capturing the output waited for them, since the server holds the same stdout.
"""

from __future__ import annotations

import logging
import multiprocessing
from contextlib import contextmanager

WORKER_IMPORTS = "pipeline.worker_imports"
PRELOAD = ["distributed", WORKER_IMPORTS]
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
    from multiprocessing import forkserver

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        multiprocessing.get_context("forkserver").set_forkserver_preload(PRELOAD)
        forkserver.ensure_running()
        yield


def local_cluster(workers: int):
    """`workers` single-threaded worker processes on this machine, forked from the import server, without Dask's
    statistical profilers (a stack walk every 10 ms, for a dashboard a local run does not have: ~3 % of a clip)."""
    import dask
    from dask.distributed import LocalCluster

    with forked_workers(), dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
