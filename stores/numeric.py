"""Pinned numeric kernels: a stored feature must not depend on how many threads computed it.

Why: OpenBLAS splits a matrix product differently for 1 and 2 threads, so `mel_basis @ magnitude` rounds
differently (thousands of float32 elements of a 3 s clip move by an ulp), and torch's convolutions (MTCNN)
do the same with their intra-op threads. Dask's nannies start workers with 1 thread, an in-process run has
every core, a lab's own cluster has whatever its admin chose. So every float kernel of the feature path runs
inside `single_threaded()`: BLAS, OpenMP, torch and OpenCV all on one thread, whatever the process was given.
Parallelism comes from running clips in several processes, which is also faster for this workload.

The pin is applied in the pure stage functions themselves (log-mel, face tracking, fusion) and around the
whole per-clip task, so a caller who never heard of Dask (a notebook, another project's cluster) gets the
same bytes. Nested uses cost nothing; the limits are restored when the outermost one ends.

It lives in `stores/` because both sides of the store compute stored floats: `pipeline/` (mel, faces, LLDs,
fusion) and `encoders/embed.py` (face embeddings from the stored crops); `pipeline.numeric` re-exports it.

What it cannot pin: the CPU's own instruction set. OpenBLAS and oneDNN pick kernels by architecture
(`numeric_environment()` records which), and another architecture may round differently. `diff --tolerance`
exists for that case.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from threadpoolctl import ThreadpoolController, threadpool_info

THREADS = 1
"""Threads every feature kernel runs on; recorded with the features."""

_lock = threading.Lock()
_depth = 0
_undo: list[Callable[[], None]] = []  # what restores the limits, innermost last
_torch_pinned = False
_controller: ThreadpoolController | None = None  # threadpoolctl's list of the loaded BLAS and OpenMP libraries
_modules_when_listed = 0

F = TypeVar("F", bound=Callable)


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run BLAS, OpenMP, torch and OpenCV kernels on one thread until the outermost `with` ends.

    Reference-counted across threads, so concurrent tasks in one process (a Dask worker with --nthreads 4)
    never see the limits lifted under them by another task finishing first. torch is pinned as soon as it
    is imported: a `with` entered after `import torch` (e.g. around the detector call) pins it too.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _undo.extend(_pin_pools())
        _pin_torch_if_imported()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore_all()


def pinned(function: F) -> F:
    """Decorator form of `single_threaded()` for a pure stage function."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with single_threaded():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _pin_pools() -> list[Callable[[], None]]:
    """BLAS and OpenMP pools (libgomp, including torch's) and OpenCV's, set to THREADS."""
    import cv2

    pools = thread_pools().limit(limits=THREADS)
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(THREADS)
    return [pools.restore_original_limits, lambda: cv2.setNumThreads(cv2_threads)]


def thread_pools() -> ThreadpoolController:
    """The loaded BLAS and OpenMP libraries, listed again only after new modules were imported: listing them
    reads the process's memory map, ~2 ms, once per clip when done at every pin."""
    global _controller, _modules_when_listed
    if _controller is None or len(sys.modules) != _modules_when_listed:
        _controller, _modules_when_listed = ThreadpoolController(), len(sys.modules)
    return _controller


def _pin_torch_if_imported() -> None:
    """torch's intra-op threads; if torch is not imported, none of its kernels can run yet."""
    global _torch_pinned
    torch = sys.modules.get("torch")
    if _torch_pinned or torch is None or not hasattr(torch, "set_num_threads"):
        return
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    _torch_pinned = True
    _undo.append(lambda: torch.set_num_threads(before))


def _restore_all() -> None:
    global _torch_pinned
    while _undo:
        _undo.pop()()
    _torch_pinned = False


def numeric_environment() -> dict:
    """What can still change a feature's last bits when threads are pinned: the CPU, and which BLAS and
    OpenMP libraries run which kernels on it. Stored with each feature set; shown by `info` and `diff`."""
    import cv2

    torch = sys.modules.get("torch")  # its CPU capability matters only where its kernels ran (MTCNN)
    libraries = [
        {k: info.get(k) for k in ("user_api", "internal_api", "version", "architecture", "threading_layer") if info.get(k)}
        for info in threadpool_info()
    ]
    return {
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "pinned_threads": THREADS,
        "libraries": sorted(libraries, key=lambda lib: (lib.get("user_api", ""), lib.get("internal_api", ""))),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability() if torch is not None else None,
        "opencv": cv2.__version__,
        # these choose OpenBLAS's kernels (thread variables do not matter: the kernels are pinned)
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ},
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
