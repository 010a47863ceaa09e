"""Checksums of every file of a store, written at commit; `verify` re-hashes and names what changed.

A damaged file is reported by where it sits in the store (feature set, array, and the clip rows its shard
holds), so a user knows which clips to re-extract. Files are reached through the store's Location, so the
same code checks a local folder and a bucket (where each object is one "file").

Each entry keeps the file's stamp (stores/location.py) beside its size and sha256: while a file's stamp is
the same, its sum is known without reading it. The workers hash the shards they write from the bytes in
memory (stores/shard_files.py); the extract client records those sums in RECORDED at each commit, before
the rows are marked done, and the run's list is made from them, so neither a first run nor a run after a
killed one reads the store's shards again to hash them (at CREMA-D size ~15 GB, on S3 a download).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stores.location import Location, locate, reading, store_or_default
from stores.store import FeatureStore, StoreError

CHECKSUMS = "avstore-checksums.json"
RECORDED = ".avstore-sums"
"""Folder of the sums a running extract has received from its tasks, one small file per commit; merged into
CHECKSUMS when the run finishes, then removed. A run that is killed leaves it for the next one."""
IGNORED = {CHECKSUMS, ".avstore-writer.lock", ".avstore-unfinished"}  # the writer's lock and marker (stores/state.py)


def _covered(rel: str) -> bool:
    """Whether checksums cover this file: not the lock, the list itself, the recorded sums, or temp files."""
    return rel.rsplit("/", 1)[-1] not in IGNORED and not rel.endswith(".partial") and not rel.startswith(RECORDED + "/")


def _files(location: Location) -> dict[str, int]:
    """The store's files that checksums cover (relative path -> size)."""
    return {rel: size for rel, size in location.files().items() if _covered(rel)}


def _listing(location: Location) -> dict[str, tuple[int, str]]:
    """The store's files that checksums cover (relative path -> (size, stamp))."""
    return {rel: entry for rel, entry in location.listing().items() if _covered(rel)}


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
    """Hash every file of the store and write the list (when nothing recorded can be trusted)."""
    location = locate(store)
    files = _listing(location)
    sums = _write(location, files, digests(location, sorted(files)))
    location.remove_folder(RECORDED)
    return sums


def record_sums(store: str | Path | Location, name: str, sums: dict[str, dict]) -> None:
    """Keep the entries of files a task wrote (rel -> entry) in RECORDED/`name`.json, before their rows are
    committed: a run killed later leaves them for the next run's list."""
    locate(store).write_bytes(f"{RECORDED}/{name}.json", json.dumps(sums, separators=(",", ":")).encode())


def recorded_sums(store: str | Path | Location, listing: dict | None = None) -> list[dict[str, dict]]:
    """Every recorded file of sums (see record_sums), in no particular order: match by stamp. `listing`: the
    store's, if the caller has it (no second listing)."""
    location = locate(store)
    names = sorted(rel for rel in (location.files() if listing is None else listing) if rel.startswith(RECORDED + "/") and rel.endswith(".json"))
    out = []
    for _, data in location.read_many(names):
        try:
            out.append(json.loads(data))
        except ValueError:  # cannot happen with whole-file writes; a damaged one is only a sum less
            continue
    return out


def refresh_checksums(store: str | Path | Location, touched: dict[str, set[int]], known: dict[str, dict] | None = None,
                      *, trust_list: bool = True) -> dict[str, int]:
    """Write the run's list; return the files it hashed (rel -> size).

    A file's sum is taken, without reading the file, from the first of these that describes the file as it is
    (same size and stamp): `known` (rel -> entry: what this run's tasks wrote), the sums recorded in RECORDED
    (tasks of this run or of a killed one), the last list. With `trust_list` (the last list matched the
    listing when the run began and no killed writer was taken over: run.py) the last list's sum is also kept
    for a file this run did not write (`touched`: feature set name -> clip rows) whose size is unchanged,
    even if its stamp changed: a file damaged on disk keeps the sum of its good bytes, so `verify` still
    finds it. Every other file is hashed: the metadata (each zarr.json, the clip table), the small arrays'
    chunks this run wrote, and files nothing describes. `verify` still re-hashes everything."""
    location = locate(store)
    everything = location.listing()
    files = {rel: entry for rel, entry in everything.items() if _covered(rel)}
    old = read_checksums(location) if CHECKSUMS in everything else {}
    candidates = [known or {}, *recorded_sums(location, everything), old]
    shards = _touched_shards(location, files, touched) if trust_list else {}

    def current(rel: str) -> dict | None:
        size, stamp = files[rel]
        for sums in candidates:
            entry = sums.get(rel)
            if entry and entry["size"] == size and entry.get("stamp") == stamp:
                return entry
        return None

    def kept(rel: str) -> bool:  # the old rule: the last list is current, and this run did not write the file
        parts = rel.split("/")
        if not trust_list or old.get(rel, {}).get("size") != files[rel][0] or parts[0] != "features" or parts[-1] == "zarr.json":
            return False
        if "c" not in parts or parts[1] not in touched:
            return True
        array = "/".join(parts[: parts.index("c")])
        return int(parts[parts.index("c") + 1]) not in shards.get(array, ())

    sums: dict[str, str] = {}
    for rel in files:
        entry = current(rel)
        if entry is not None:
            sums[rel] = entry["sha256"]
        elif kept(rel):
            sums[rel] = old[rel]["sha256"]
    todo = [rel for rel in sorted(files) if rel not in sums]
    sums.update(digests(location, todo))
    _write(location, files, sums)
    location.remove_folder(RECORDED)
    return {rel: files[rel][0] for rel in todo}


def _touched_shards(location: Location, files: dict, touched: dict[str, set[int]]) -> dict[str, set[int]]:
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


def _write(location: Location, files: dict[str, tuple[int, str]], hashes: dict[str, str]) -> dict[str, dict]:
    sums = {rel: {"size": files[rel][0], "sha256": hashes[rel], "stamp": files[rel][1]} for rel in sorted(files)}
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
