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
