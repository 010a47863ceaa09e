#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's image lacks, into .whl/ (gitignored) for a session to carry:
#
#     bash bench/fetch_wheels.sh && du -sh .whl     # then: run(..., carry=[".whl"]) and `bash bench/gpu.sh`
#
# The GPU image has Python 3.12 with torch 2.11 + torchvision 0.26 (and their numpy, pillow, ...), but no
# zarr, dask, librosa, typer, facenet-pytorch or imageio-ffmpeg, and no network. Wheels are for cp312
# manylinux x86_64; what the image already has (torch, numpy, nvidia-*, ...) is removed after the download.
# A carry travels with the working tree under a 64 MiB limit: the script reports the size, and the largest
# wheels (llvmlite/numba for librosa, scipy, imageio-ffmpeg's bundled ffmpeg) are the ones to split over
# two sessions or drop if the image turns out to have them.
set -euo pipefail
DEST=${DEST:-.whl}
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p "$DEST"
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" zarr dask distributed librosa typer imageio-ffmpeg
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" --no-deps facenet-pytorch  # pins an older torch; installed --no-deps
cd "$DEST"
rm -f torch-* torchvision-* numpy-* nvidia_* triton-* sympy-* mpmath-* networkx-* jinja2-* MarkupSafe-* filelock-* fsspec-* pillow-* typing_extensions-* setuptools-*
du -sh . && ls
