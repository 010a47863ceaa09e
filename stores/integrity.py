"""Checksums of every file of a store, written at commit; `verify` re-hashes and names what changed.

A damaged file is reported by where it sits in the store (feature set, array, and the clip rows its shard
holds), so a user knows which clips to re-extract.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

CHECKSUMS = "avstore-checksums.json"
IGNORED = {CHECKSUMS, ".avstore-writer.lock"}


def _files(location: Path) -> list[Path]:
    return sorted(p for p in location.rglob("*") if p.is_file() and p.name not in IGNORED and not p.name.endswith(".partial"))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(location: Path) -> dict[str, dict]:
    sums = {p.relative_to(location).as_posix(): {"size": p.stat().st_size, "sha256": sha256(p)} for p in _files(location)}
    tmp = location / f"{CHECKSUMS}.partial"
    tmp.write_text(json.dumps(sums, indent=0, sort_keys=True))
    os.replace(tmp, location / CHECKSUMS)
    return sums


@dataclass
class Damage:
    path: str
    problem: str  # changed | missing | unexpected
    where: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.path} ({self.where})"


def describe(location: Path, path: str) -> str:
    """'features/faces-ab12/crops/c/3/0/0/0/0' -> 'array features/faces-ab12/crops, clip rows 96-127'."""
    parts = path.split("/")
    if "c" not in parts:
        return "metadata"
    array = "/".join(parts[: parts.index("c")])
    index = int(parts[parts.index("c") + 1])
    try:
        meta = json.loads((location / array / "zarr.json").read_text())
        rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    except (OSError, ValueError, KeyError):
        return f"array {array}"
    return f"array {array}, clip rows {index * rows}-{(index + 1) * rows - 1}"


def verify(location: Path) -> list[Damage]:
    """Every difference between the store's files and the checksums written at its last commit."""
    listed = json.loads((location / CHECKSUMS).read_text())
    present = {p.relative_to(location).as_posix(): p for p in _files(location)}
    damage = []
    for rel, expected in listed.items():
        if rel not in present:
            damage.append(Damage(rel, "missing", describe(location, rel)))
        elif present[rel].stat().st_size != expected["size"] or sha256(present[rel]) != expected["sha256"]:
            damage.append(Damage(rel, "changed", describe(location, rel)))
    damage += [Damage(rel, "unexpected", describe(location, rel)) for rel in sorted(set(present) - set(listed))]
    return damage
