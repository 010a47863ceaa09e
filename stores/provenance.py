"""Who made a feature set, when, and with which versions: stored as attributes next to the parameters."""

from __future__ import annotations

import getpass
import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

LIBRARIES = ("numpy", "zarr", "dask", "librosa", "torch", "torchvision", "facenet-pytorch", "opencv-python-headless", "imageio-ffmpeg")


def code_commit() -> str:
    """The git commit of avstore's code, with '+dirty' when the work tree has changes; '' outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}{'+dirty' if dirty else ''}" if commit else ""


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def provenance(**extra: str) -> dict:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {
        "made_by": f"{user}@{socket.gethostname()}",
        "made_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "avstore_commit": code_commit(),
        "versions": library_versions(),
        **extra,
    }
