"""The feature store: one Zarr (format 3) group per dataset, readable with plain `zarr`.

Layout::

    <store>/                     attrs["avstore"]: format version, dataset, class names, split seed
      clips/                     one row per clip, in the order clips were first added (never reordered)
        clip_id label emotion speaker sentence intensity split video_path broken extra_json
        votes raters agreement   raters' perceived emotion, when the corpus has it (stores/clip_votes.py)
      features/<kind>-<fp>/      a feature set: kind is faces | audio | fusion-<name>; fp the fingerprint
        <arrays>                 row r belongs to clip r; attrs: params, fingerprint, versions, who, when
        status reason            per row: ok / no_face / no_audio / decode_error / too_short / too_long
        done                     per row, 1 once every array of that row is written: the commit marker

Why so: rows are written data first and `done` last, so a reader that selects `done == 1` never sees a half
written clip, and a killed run resumes by redoing rows whose `done` is 0. Large arrays hold one clip per
inner chunk inside shards of SHARD_ROWS clips (few files on NFS or object storage, one chunk read per
sample), each chunk encoded by the lossless chain stores/codecs.py picks for its shape and dtype. One extract writes at a
time (WriterLock): its workers write whole shards of the large arrays (stores/shard_files.py), its client everything
else, and the client alone marks rows done.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from stores.clip_votes import write_votes
from stores.codecs import chain_for, chunk_compressors, chunk_filters, is_large, use_shaped_delta
from stores.fingerprint import fingerprint
from stores.location import locate
from stores.shards import EncodedRow, decode_row, takes_encoded_rows, write_encoded_rows
from stores.splits import SPLIT_RULE

FORMAT_VERSION = 1
SHARD_ROWS = int(os.environ.get("AVSTORE_SHARD_ROWS", "32"))
"""Rows of one shard of a new array. AVSTORE_SHARD_ROWS is for tests, which need several shards (hence several
extraction tasks, pipeline/spans.py) from a few clips; an existing array keeps the shards it was made with."""
META_CHUNK_ROWS = 4096
CLIP_COLUMNS = ("clip_id", "label", "emotion", "speaker", "sentence", "intensity", "split", "video_path", "broken", "extra_json")


class StoreError(ValueError):
    """The store is missing, of another format, or lacks what was asked; the message says what to do."""


class DamagedChunkError(StoreError):
    """A stored chunk fails its checksum: the file changed on disk after it was written. Raised instead of
    handing a trainer wrong values; the message names the file, the rows and the repair."""

    def __init__(self, message: str) -> None:
        # a DataLoader worker's error comes back as its type around the worker's traceback: keep our one line
        if "\n" in message and "DamagedChunkError: " in message:
            message = message.rsplit("DamagedChunkError: ", 1)[1].strip().splitlines()[0]
        super().__init__(message)

    @classmethod
    def of(cls, file: str, array: str, rows: list[int], store: str) -> "DamagedChunkError":
        listed = ", ".join(map(str, rows[:8])) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")
        return cls(f"'{file}' is damaged: row(s) {listed} of {array} fail their checksum; run `python cli.py verify --store {store}` "
                   f"to list every damaged file, then re-extract those clips (delete the damaged files, run `python cli.py extract` again)")


ArraySpec = dict[str, tuple[tuple[int, ...], str]]
"""Array name -> (shape of one clip's entry, dtype). Dtype "str" is a variable-length UTF-8 string."""


@dataclass
class FeatureSet:
    name: str
    group: zarr.Group

    @property
    def kind(self) -> str:
        return self.group.attrs["kind"]

    @property
    def params(self) -> dict[str, Any]:
        return self.group.attrs["params"]

    @property
    def fingerprint(self) -> str:
        return self.group.attrs["fingerprint"]

    def done(self) -> np.ndarray:
        return self.group["done"][:].astype(bool)

    def status(self) -> np.ndarray:
        return self.group["status"][:]

    def ok(self) -> np.ndarray:
        """Rows committed with status ok."""
        return self.done() & (self.status() == "ok")

    def __getitem__(self, array: str) -> zarr.Array:
        return self.group[array]

    @property
    def numeric_environments(self) -> list[dict]:
        """The distinct numeric environments (CPU, BLAS kernels, pinned threads) that computed its rows."""
        return list(self.group.attrs.get("numeric", []))

    def add_numeric_environments(self, environments: Iterable[dict]) -> None:
        """Remember where rows were computed: two stores whose bytes differ can then say why (`diff`)."""
        merged = {json.dumps(env, sort_keys=True): env for env in self.numeric_environments}
        before = len(merged)
        for env in environments:
            merged.setdefault(json.dumps(env, sort_keys=True), env)
        if len(merged) > before:
            self.group.attrs["numeric"] = json.loads(json.dumps(list(merged.values())))


def _create_array(group: zarr.Group, name: str, n_rows: int, clip_shape: tuple[int, ...], dtype: str, chain: str = "compact") -> zarr.Array:
    shape = (n_rows, *clip_shape)
    if dtype == "str":
        return group.create_array(name, shape=shape, dtype=str, chunks=(META_CHUNK_ROWS, *clip_shape), fill_value="")
    if is_large(clip_shape):
        return group.create_array(
            name, shape=shape, dtype=dtype, chunks=(1, *clip_shape), shards=(SHARD_ROWS, *clip_shape), fill_value=0,
            filters=chunk_filters(clip_shape, dtype, chain), compressors=chunk_compressors(chain),
        )
    return group.create_array(name, shape=shape, dtype=dtype, chunks=(META_CHUNK_ROWS, *clip_shape), fill_value=0)


class FeatureStore:
    """A store opened for reading (default) or, by the extract command, for writing."""

    def __init__(self, group: zarr.Group, location: str, writable: bool):
        self.root = group
        self.location = location
        self.writable = writable
        self.touched: dict[str, set[int]] = {}  # feature set name -> rows written by this process (for checksums)
        self.votes_written = False  # add_clips wrote raters' votes (clips/votes, stores/clip_votes.py)

    # ---- opening -------------------------------------------------------------------------------------
    @classmethod
    def open(cls, location: str | Path, *, mode: str = "r") -> "FeatureStore":
        """Open an existing store (a path or an fsspec URL); `mode="r"` for consumers (the default), "r+" for the
        writer. Reading writes nothing, so a chmod a-w folder or a bucket without write permission is fine."""
        location = str(location)
        where = locate(location)
        if where.is_local and where.local_path.is_file():
            raise StoreError(f"'{location}' is a file, not a store (a folder); check --store")
        try:
            group = zarr.open_group(where.zarr_store(read_only=mode == "r"), mode=mode, zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise StoreError(f"no avstore store at '{location}'; run `python cli.py extract` first or check --store") from None
        info = group.attrs.get("avstore")
        if not info:
            raise StoreError(f"'{location}' is a Zarr group but not an avstore store (no 'avstore' attribute)")
        if info.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"'{location}' has store format {info.get('format_version')}, this avstore reads {FORMAT_VERSION}; re-extract it")
        return cls(group, location, writable=mode != "r")

    @classmethod
    def create(cls, location: str | Path, *, dataset: str, class_names: Iterable[str], split_seed: int) -> "FeatureStore":
        location = str(location)
        group = zarr.open_group(locate(location).zarr_store(read_only=False), mode="a", zarr_format=3)  # may hold our lock already
        group.attrs["avstore"] = {
            "format_version": FORMAT_VERSION,
            "dataset": dataset,
            "class_names": list(class_names),
            "split_seed": split_seed,
            "split_rule": SPLIT_RULE,
            "speaker_batches": [0],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        clips = group.create_group("clips")
        for column in CLIP_COLUMNS:
            _create_array(clips, column, 0, (), "int16" if column == "label" else "str")
        group.create_group("features")
        return cls(group, location, writable=True)

    # ---- the clip table --------------------------------------------------------------------------------
    @property
    def info(self) -> dict[str, Any]:
        return self.root.attrs["avstore"]

    @property
    def class_names(self) -> list[str]:
        return list(self.info["class_names"])

    def __len__(self) -> int:
        return self.root["clips/clip_id"].shape[0]

    def clip_table(self) -> dict[str, np.ndarray]:
        return {column: self.root[f"clips/{column}"][:] for column in CLIP_COLUMNS}

    def add_clips(self, records: list) -> np.ndarray:
        """Rows of `records` in the store; clips new to the store are appended and every feature set grows."""
        existing = {clip_id: row for row, clip_id in enumerate(self.root["clips/clip_id"][:])}
        new = [r for r in records if r.clip_id not in existing]
        if new:
            start = len(self)
            rows = np.arange(start, start + len(new))
            for column in CLIP_COLUMNS:
                array = self.root[f"clips/{column}"]
                array.resize((start + len(new),))
                values = [_column_value(r, column) for r in new]
                array[start:] = np.asarray(values, dtype=np.int16 if column == "label" else object)
            for feature_set in self.feature_sets():
                for array in feature_set.group.array_values():
                    array.resize((start + len(new), *array.shape[1:]))
            existing.update({r.clip_id: int(row) for r, row in zip(new, rows)})
        all_rows = np.asarray([existing[r.clip_id] for r in records], dtype=np.int64)
        self.votes_written = write_votes(self.root["clips"], all_rows, records, len(self.class_names))  # raters' votes: stores/clip_votes.py
        return all_rows

    def extend_class_names(self, names: list[str], renamed: dict[str, str] | None = None) -> None:
        """Grow the class list to `names`. Stored numbers never change: `names` must start with the current list,
        `renamed` names respelled in place (a renumbering would relabel every stored clip without touching its row)."""
        current = [(renamed or {}).get(name, name) for name in self.class_names]
        if list(names[: len(current)]) != current:
            raise StoreError(f"store '{self.location}' numbers its classes {','.join(current)}; {','.join(names)} would renumber them")
        if list(names) != self.class_names:
            self.root.attrs["avstore"] = {**self.info, "class_names": list(names)}

    def set_clip_values(self, column: str, rows: np.ndarray, values: list) -> None:
        """Overwrite `column` of the clip table at `rows` (the corpus corrected a label or a speaker)."""
        array = self.root[f"clips/{column}"]
        current = array[:]
        current[np.asarray(rows, dtype=np.int64)] = np.asarray(values, dtype=current.dtype)
        array[:] = current

    def recorded_split(self) -> dict[str, str]:
        """Speaker -> partition as the clip table records it (speakers whose clips have no split yet are left out)."""
        speakers, splits = self.root["clips/speaker"][:], self.root["clips/split"][:]
        return {str(s): str(p) for s, p in zip(speakers, splits) if p}

    @property
    def speaker_batches(self) -> list[int]:
        """The first row of every extract that brought new speakers (absent in older stores: one generation)."""
        return list(self.info.get("speaker_batches", [0]))

    def set_splits(self, split_of: dict[str, str], first_new_row: int) -> bool:
        """Store each clip's partition (its speaker's); True if anything changed (else nothing is written).

        When the clips from `first_new_row` on bring speakers the store had not seen, that row is recorded in
        `speaker_batches`, so the generations in which speakers arrived can be replayed (k-fold, other seeds)."""
        array, speakers = self.root["clips/split"], self.root["clips/speaker"][:]
        values = array[:]
        wanted = np.asarray([split_of[str(s)] for s in speakers], dtype=object)
        changed = list(values) != list(wanted)
        if changed:
            array[:] = wanted
        batches = self.speaker_batches
        if set(speakers[first_new_row:]) - set(speakers[:first_new_row]) and first_new_row not in batches:
            self.root.attrs["avstore"] = {**self.info, "speaker_batches": [*batches, int(first_new_row)]}
            changed = True
        return changed

    # ---- feature sets ----------------------------------------------------------------------------------
    def feature_sets(self, kind: str | None = None) -> list[FeatureSet]:
        sets = [FeatureSet(name, group) for name, group in sorted(self.root["features"].groups())]
        return [s for s in sets if kind is None or s.kind == kind]

    def find(self, kind: str, params: dict[str, Any]) -> FeatureSet | None:
        name = f"{kind}-{fingerprint(params)}"
        return FeatureSet(name, self.root[f"features/{name}"]) if name in self.root["features"] else None

    def ensure_feature_set(self, kind: str, params: dict[str, Any], arrays: ArraySpec, provenance: dict[str, Any]) -> FeatureSet:
        """The feature set for `params`, created (schema first, before any clip is computed) if missing."""
        found = self.find(kind, params)
        if found is not None:
            return found
        fp = fingerprint(params)
        group = self.root["features"].create_group(f"{kind}-{fp}")
        group.attrs.update({"kind": kind, "fingerprint": fp, "params": json.loads(json.dumps(params)), **provenance})
        n = len(self)
        for name, (clip_shape, dtype) in {**arrays, "status": ((), "str"), "reason": ((), "str"), "done": ((), "uint8")}.items():
            _create_array(group, name, n, tuple(clip_shape), dtype, chain_for(kind, name))
        return FeatureSet(f"{kind}-{fp}", group)

    # ---- writing rows ------------------------------------------------------------------------------------
    def write_rows(self, feature_set: FeatureSet, rows: np.ndarray, arrays: dict[str, np.ndarray | list[EncodedRow | None]],
                   status: list[str], reason: list[str]) -> None:
        """Write rows' arrays, then their status, then mark them done: the order readers rely on. An array given as a
        list holds each row's EncodedRow (None: a row without data, read as the fill value)."""
        use_shaped_delta()  # before the arrays are opened: their codecs are built now
        order = np.argsort(rows)
        rows = np.asarray(rows)[order]
        self.touched.setdefault(feature_set.name, set()).update(int(r) for r in rows)
        for name, values in arrays.items():
            array = feature_set[name]
            if not isinstance(values, list):
                write_runs(array, rows, np.asarray(values)[order])
            elif takes_encoded_rows(array, next((r.chain for r in values if r is not None), "compact")):  # rows encoded where they were computed (stores/shards.py)
                write_encoded_rows(array, rows, [values[k] for k in order])
            else:  # a store made with another chain: decoded here, then written through zarr
                decoded = [np.zeros(array.shape[1:], array.dtype) if row is None else decode_row(row) for row in values]
                write_runs(array, rows, np.stack(decoded)[order])
        write_runs(feature_set["status"], rows, np.asarray(status, dtype=object)[order])
        write_runs(feature_set["reason"], rows, np.asarray(reason, dtype=object)[order])
        write_runs(feature_set["done"], rows, np.ones(len(rows), np.uint8))


    def uncommit_rows(self, feature_set: FeatureSet, rows: np.ndarray) -> None:
        """Mark rows not done (their data stays until rewritten): a reader skips them, the next run redoes them."""
        rows = np.sort(np.asarray(rows))
        self.touched.setdefault(feature_set.name, set()).update(int(r) for r in rows)  # their checksums change too
        write_runs(feature_set["done"], rows, np.zeros(len(rows), np.uint8))


def write_runs(array: zarr.Array, rows: np.ndarray, values: np.ndarray) -> None:
    """Runs of consecutive rows go in one slice assignment each, so a shard is rewritten once per run.

    Every chunk is written, even one equal to the fill value: zarr would otherwise compare each chunk with the
    fill value before encoding it, to leave empty ones out, which took a fifth of the writer's CPU (125 -> 98
    CPU-ms per clip writing faces, audio and concat) for what is only a failed clip's rows, or a column of
    zeros. Readers see the same values either way."""
    if not array.config.write_empty_chunks:
        array = array.with_config({"write_empty_chunks": True})
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end] != rows[end - 1] + 1:
            array[int(rows[start]) : int(rows[end - 1]) + 1] = values[start:end]
            start = end



def _column_value(record: Any, column: str) -> Any:
    if column == "extra_json":
        return json.dumps(record.extra, sort_keys=True)
    value = getattr(record, column)
    return "" if value is None else value


def store_exists(location: str | Path) -> bool:
    try:
        zarr.open_group(locate(location).zarr_store(read_only=True), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return False
    return True
