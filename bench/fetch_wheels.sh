#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's image lacks, into .whl/ (gitignored) for a session to carry:
#
#     bash bench/fetch_wheels.sh && du -sh .whl     # then: run(..., carry=[".whl"]) and `bash bench/gpu.sh`
#
# The GPU image has Python 3.12 with torch 2.11 + torchvision 0.26 (and their numpy, pillow, ...), but no
# zarr, dask, librosa, typer, facenet-pytorch or imageio-ffmpeg, and no network. Wheels are for cp312
# manylinux x86_64; what the image already has (torch, numpy, nvidia-*, ...) is removed after the download.
# A carry travels with the working tree under a 64 MiB limit, and the whole set is ~185 MB (measured):
# imageio-ffmpeg 66 MB (unneeded where the image has an `ffmpeg` on PATH: pipeline/media.py prefers it),
# llvmlite 58 MB + numba (librosa), scipy 35 MB + scikit-learn 9 MB (librosa), the rest ~15 MB. Carry them
# in parts over successive calls to the same warm machine (installed packages stay while it is held), e.g.
# `.whl/a` (the rest), `.whl/b` (llvmlite, numba), `.whl/c` (scipy, scikit-learn), dropping what it has.
set -euo pipefail
DEST=${DEST:-.whl}
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p "$DEST"
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
pinned() { grep -iE "^($1)==" requirements.lock; }  # the versions this project is tested with
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" $(pinned "zarr|dask|distributed|librosa|typer|imageio-ffmpeg")
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" --no-deps $(pinned "facenet-pytorch")  # pins an older torch; installed --no-deps
cd "$DEST"
rm -f torch-* torchvision-* numpy-* nvidia_* triton-* sympy-* mpmath-* networkx-* jinja2-* MarkupSafe-* filelock-* fsspec-* pillow-* typing_extensions-* setuptools-*
du -sh . && ls
