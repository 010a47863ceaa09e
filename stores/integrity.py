"""Checksums of every file of a store, written at commit; `verify` re-hashes and names what changed.

A damaged file is reported by where it sits in the store (feature set, array, and the clip rows its shard
holds), so a user knows which clips to re-extract. Files are reached through the store's Location, so the
same code checks a local folder and a bucket (where each object is one "file").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stores.location import Location, locate

CHECKSUMS = "avstore-checksums.json"
IGNORED = {CHECKSUMS, ".avstore-writer.lock"}


def _files(location: Location) -> dict[str, int]:
    """The store's files that checksums cover (relative path -> size): not the lock, the list itself, or temp files."""
    return {rel: size for rel, size in location.files().items()
            if rel.rsplit("/", 1)[-1] not in IGNORED and not rel.endswith(".partial")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digests(location: Location, rels: list[str]) -> dict[str, str]:
    """sha256 of each file: streamed from disk locally, fetched in concurrent batches remotely."""
    if location.is_local:
        return {rel: sha256(location.local_path / rel) for rel in rels}
    return {rel: hashlib.sha256(data).hexdigest() for rel, data in location.read_many(rels)}


def has_checksums(store: str | Path | Location) -> bool:
    return locate(store).exists(CHECKSUMS)


def read_checksums(store: str | Path | Location) -> dict[str, dict]:
    return json.loads(locate(store).read_bytes(CHECKSUMS))


def checksums_match_listing(store: str | Path | Location) -> bool:
    """Whether the checksum list names exactly the files present, with their sizes: a listing, no hashing.

    A writer that wrote nothing uses this to keep the list it has instead of re-hashing the whole store
    (minutes for all of CREMA-D); a run killed after writing but before its list is caught here, since
    its new or grown files are not listed."""
    location = locate(store)
    if not location.exists(CHECKSUMS):
        return False
    listed = {rel: entry["size"] for rel, entry in read_checksums(location).items()}
    return listed == _files(location)


def write_checksums(store: str | Path | Location) -> dict[str, dict]:
    location = locate(store)
    files = _files(location)
    hashes = digests(location, sorted(files))
    sums = {rel: {"size": files[rel], "sha256": hashes[rel]} for rel in sorted(files)}
    location.write_bytes(CHECKSUMS, json.dumps(sums, indent=0, sort_keys=True).encode())
    return sums


@dataclass
class Damage:
    path: str
    problem: str  # changed | missing | unexpected
    where: str

    def __str__(self) -> str:
        return f"{self.problem}: {self.path} ({self.where})"


def describe(store: str | Path | Location, path: str) -> str:
    """'features/faces-ab12/crops/c/3/0/0/0/0' -> 'array features/faces-ab12/crops, clip rows 96-127'."""
    parts = path.split("/")
    if "c" not in parts:
        return "metadata"
    array = "/".join(parts[: parts.index("c")])
    index = int(parts[parts.index("c") + 1])
    try:
        meta = json.loads(locate(store).read_bytes(f"{array}/zarr.json"))
        rows = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
    except (OSError, ValueError, KeyError):
        return f"array {array}"
    return f"array {array}, clip rows {index * rows}-{(index + 1) * rows - 1}"


def verify(store: str | Path | Location) -> list[Damage]:
    """Every difference between the store's files and the checksums written at its last commit."""
    location = locate(store)
    listed = read_checksums(location)
    present = _files(location)
    same_size = [rel for rel, expected in listed.items() if present.get(rel) == expected["size"]]
    hashes = digests(location, same_size)
    damage = []
    for rel, expected in listed.items():
        if rel not in present:
            damage.append(Damage(rel, "missing", describe(location, rel)))
        elif present[rel] != expected["size"] or hashes[rel] != expected["sha256"]:
            damage.append(Damage(rel, "changed", describe(location, rel)))
    damage += [Damage(rel, "unexpected", describe(location, rel)) for rel in sorted(set(present) - set(listed))]
    return damage
