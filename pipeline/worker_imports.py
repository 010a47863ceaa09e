"""The libraries every extraction worker needs, imported once by the process the workers are forked from.

Why: before its first clip a worker spends ~3.5 CPU-seconds importing torch (and took ~6.5 while MTCNN came
from facenet-pytorch, whose torchvision import loads torch._dynamo; pipeline/mtcnn.py). Workers spawned together
on a laptop's few cores pay that once each, at the same time. Started with Dask's `forkserver` method (pipeline/workers.py), every worker is instead a fork
of one server that imported these once, and shares their pages copy-on-write.

Importing only: no thread pool, event loop or CUDA context exists in the server (checked by a test), so
forking it is safe. Dask's nanny sets the thread variables below in a worker's environment before spawning it
(`distributed.nanny.pre-spawn-environ`); a fork cannot receive them that way, so they are set here, before the
libraries read them: this module comes first in workers.PRELOAD, before Dask's, which imports numpy. Loaded with
2 threads, numpy's OpenBLAS kept a second thread that spun ~110 CPU-ms a clip, though every feature kernel is
pinned to one thread inside its task (numeric.py).
"""

import os
import signal

# Ctrl-C reaches every process of the terminal's group, the workers too: each printed a 33-line traceback over
# the client's one-line summary. The client alone handles it (cli.py extract) and closes the cluster. The fork
# server hands its children the SIGINT handler it found after its preload (multiprocessing.forkserver.main), so
# workers forked from it ignore the signal; one a nanny respawns later does not (rare, and only noisier).
signal.signal(signal.SIGINT, signal.SIG_IGN)

for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

import av  # noqa: E402,F401
import cv2  # noqa: E402,F401
import numpy  # noqa: E402,F401
import torch  # noqa: E402,F401

import pipeline.mtcnn  # noqa: E402,F401
