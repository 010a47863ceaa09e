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

from stores.location import Location, locate, reading, store_or_default
from stores.store import FeatureStore, StoreError

CHECKSUMS = "avstore-checksums.json"
IGNORED = {CHECKSUMS, ".avstore-writer.lock", ".avstore-unfinished"}  # the writer's lock and marker (stores/state.py)


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
    """Hash every file of the store and write the list (a new store, or one whose last list cannot be trusted)."""
    location = locate(store)
    files = _files(location)
    return _write(location, files, digests(location, sorted(files)))


def refresh_checksums(store: str | Path | Location, touched: dict[str, set[int]]) -> list[str]:
    """Update the list after a run that wrote only `touched` (feature set name -> clip rows); the files hashed.

    Re-hashed: the files of the shards holding those rows, every metadata file (each zarr.json, the clip table,
    small), and any file new or of another size; every other file keeps the hash the last list gave it, so
    adding one actor's clips to CREMA-D hashes a few shards instead of ~32 GB. The caller must know the last
    list is current (run.py: it matched the listing when the run began, and no killed writer was taken over).
    `verify` still re-hashes everything."""
    location = locate(store)
    if not location.exists(CHECKSUMS):
        return sorted(write_checksums(location))
    files, old = _files(location), read_checksums(location)
    shards = _touched_shards(location, files, touched)

    def stale(rel: str) -> bool:
        parts = rel.split("/")
        if old.get(rel, {}).get("size") != files[rel] or parts[0] != "features" or parts[-1] == "zarr.json":
            return True
        if "c" not in parts or parts[1] not in touched:
            return False
        array = "/".join(parts[: parts.index("c")])
        return int(parts[parts.index("c") + 1]) in shards.get(array, ())

    todo = [rel for rel in sorted(files) if stale(rel)]
    hashes = digests(location, todo)
    _write(location, files, {**{rel: old[rel]["sha256"] for rel in files if rel not in hashes}, **hashes})
    return todo


def _touched_shards(location: Location, files: dict[str, int], touched: dict[str, set[int]]) -> dict[str, set[int]]:
    """Array path -> indices of the shards (or chunks) along the clip axis that hold the touched rows."""
    found: dict[str, set[int]] = {}
    for name, rows in touched.items():
        if not rows:
            continue
        for rel in files:
            parts = rel.split("/")
            if len(parts) == 4 and parts[:2] == ["features", name] and parts[3] == "zarr.json":
                meta = json.loads(location.read_bytes(rel))
                if meta.get("node_type") == "array":
                    step = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0])
                    found[f"features/{name}/{parts[2]}"] = {row // step for row in rows}
    return found


def _write(location: Location, files: dict[str, int], hashes: dict[str, str]) -> dict[str, dict]:
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


def verify_and_report(store: str | None) -> int:
    """`cli.py verify`: re-hash `store` (default: the default store), print each damaged file; exit code 1 if any."""
    store = store_or_default(store)
    with reading(f"store '{store}'"):
        FeatureStore.open(store)
        if not has_checksums(store):
            raise StoreError(f"'{store}' has no {CHECKSUMS}; it was never committed by a finished extract run")
        damage = verify(store)
    for d in damage:
        print(str(d))
    if damage:
        print(f"{len(damage)} damaged file(s) in {store}; re-extract the rows named above (delete those files, run extract again)")
        return 1
    print(f"{store}: every file matches its checksum")
    return 0
