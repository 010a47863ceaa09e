"""What produced a clip's row: its source file's size, modification time and a hash of its ends.

Why: a clip extracted while its file was still arriving (a `git lfs pull` not finished, a copy cut short)
must be redone once the file is whole, and nothing else should be. Size and mtime are a stat away, so a
re-run over 7,442 clips costs no reads; the hash of the first and last MiB is only computed for the clips
being extracted and when a stat differs, so a file merely copied or touched is not taken for a new one.
"""

from __future__ import annotations

import hashlib
import json
import os

END_BYTES = 1 << 20


def file_signature(path: str | None) -> str:
    """Canonical JSON of `path`'s size, mtime (ns) and sha256 of its first and last MiB ("" without a path)."""
    if not path:
        return ""
    try:
        stat = os.stat(path)
        return json.dumps({"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ends_sha256": ends_hash(path, stat.st_size)}, sort_keys=True)
    except OSError as err:
        return json.dumps({"missing": err.strerror or type(err).__name__}, sort_keys=True)


def ends_hash(path: str, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(END_BYTES))
        if size > END_BYTES:
            f.seek(max(END_BYTES, size - END_BYTES))
            digest.update(f.read(END_BYTES))
    return digest.hexdigest()


def source_changed(stored: str, path: str | None) -> bool:
    """Whether `path` is no longer the file recorded in `stored` (file_signature's JSON). A row recorded
    without a signature counts as unchanged: there is nothing to compare with."""
    if not stored or not path:
        return False
    before = json.loads(stored)
    try:
        stat = os.stat(path)
    except OSError:
        return "missing" not in before
    if "missing" in before or before["size"] != stat.st_size:
        return True
    if before["mtime_ns"] == stat.st_mtime_ns:
        return False
    return before["ends_sha256"] != ends_hash(path, stat.st_size)
