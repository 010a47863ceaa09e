#!/usr/bin/env bash
# Download, here, the wheels the GPU machine's image lacks, into .whl/ (gitignored) for a session to carry:
#
#     bash bench/fetch_wheels.sh && du -sh .whl     # then: run(..., carry=[".whl"]) and `bash bench/gpu.sh`
#
# The GPU image has Python 3.12 with torch 2.11 + torchvision 0.26, scipy, numba, scikit-learn, typer and
# their kin, but no zarr, dask, librosa, PyAV or facenet-pytorch, and no network. Wheels are for cp312
# manylinux x86_64; what the image already has is removed after the download, leaving ~43 MB (PyAV 35 MB),
# under the 64 MiB a carry may take with the working tree. No ffmpeg CLI is needed there: extraction decodes
# with PyAV, and a sample corpus made here can travel (bench/README.md).
set -euo pipefail
DEST=${DEST:-.whl}
PY=${PY:-/work/main/.venv/bin/python}
mkdir -p "$DEST"
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
          --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
pinned() { grep -iE "^($1)==" requirements.lock; }  # the versions this project is tested with
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" $(pinned "zarr|dask|distributed|librosa|typer|av")
$PY -m pip download -q -d "$DEST" "${PLATFORM[@]}" --no-deps $(pinned "facenet-pytorch")  # pins an older torch; installed --no-deps
cd "$DEST"
rm -f torch-* torchvision-* numpy-* nvidia_* triton-* sympy-* mpmath-* networkx-* jinja2-* MarkupSafe-* markupsafe-* filelock-* fsspec-* \
      pillow-* typing_extensions-* setuptools-* llvmlite-* numba-* scipy-* scikit_learn-* joblib-* threadpoolctl-* pydantic* pygments-* \
      pyyaml-* PyYAML-* narwhals-* msgpack-* rich-* charset_normalizer-* psutil-* packaging-* urllib3-* certifi-* click-* typer-* \
      markdown_it_py-* mdurl-* requests-* idna-* toolz-* importlib_metadata-* zipp-* sortedcontainers-* cloudpickle-* \
      typing_inspection-* annotated_types-* annotated_doc-* shellingham-* lazy_loader-*  # the image has these
du -sh . && ls
