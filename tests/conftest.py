"""Shared fixtures. Real data from ../shared is used where present; tests that need it skip otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AVSTORE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cremad_meta() -> Path:
    path = SHARED_DATA / "crema-d"
    if not (path / "SentenceFilenames.csv").is_file():
        pytest.skip(f"real CREMA-D metadata tables not found at {path} (set AVSTORE_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def grid_dir() -> Path:
    path = SHARED_DATA / "grid"
    if not sorted(path.glob("*.mpg")):
        pytest.skip(f"real GRID clips not found at {path} (set AVSTORE_SHARED_DATA)")
    return path


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a real subprocess."""
    return subprocess.run(
        [sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=timeout
    )


def run_cli_unprivileged(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as an ordinary user (nobody), so that file permissions bind even when the tests run as root.

    `cwd` must be a folder that user can write (the caller makes it world-writable).
    """
    if os.geteuid() != 0:
        return run_cli(*args, cwd=cwd, timeout=timeout)
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to bind")
    env = {**os.environ, "HOME": str(cwd), "MPLCONFIGDIR": str(cwd), "NUMBA_CACHE_DIR": str(cwd)}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, str(REPO / "cli.py"), *args],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env,
    )


def open_up(path: Path) -> None:
    """Let the unprivileged user traverse and read `path` and its parents (pytest makes them 0700)."""
    for folder in [path, *path.parents]:
        if str(folder) in ("/", "/tmp"):
            break
        folder.chmod(folder.stat().st_mode | 0o755)


def extract_sample_store(tmp_path_factory, name: str, *, actors: int, sentences: int, seed: int, frames: int, size: int,
                         detect_every: int = 2, fusions: tuple[str, ...] = ("concat",)) -> str:
    """A small sample corpus extracted in process into a fresh store (CREMA-D's six classes, the stored split):
    the module fixtures of the training and store tests differ only in these numbers."""
    from pipeline.audio import MelConfig
    from pipeline.corpora import load_corpus
    from pipeline.corpora.sample import write_sample_corpus
    from pipeline.faces import FaceConfig
    from pipeline.run import ExtractConfig, run_extract
    from pipeline.splits import assign_splits

    corpus = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(corpus, actors=actors, sentences=sentences, seed=seed)
    records = assign_splits(load_corpus("sample", corpus), seed=0)
    location = str(tmp_path_factory.mktemp("store") / name)
    config = ExtractConfig(faces=FaceConfig(frames=frames, size=size, detect_every=detect_every), mel=MelConfig(n_mels=size), fusions=fusions)
    run_extract(records, location, config, dataset="sample", class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=0, progress=False)
    return location
