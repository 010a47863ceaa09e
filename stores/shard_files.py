"""Whole shards written by the worker that computed their rows, atomically, and hashed as they are written.

Why: one client process used to receive every encoded array of every clip and write every shard, so the
cluster went no faster than that process (~36 clips/s at 28 CPU-ms per clip, whatever the cores) and each
byte crossed the network twice. Now a task computes the rows of whole shards (pipeline/run.py `shards_task`)
and writes each shard file itself, straight into the store: a local folder, a shared filesystem or a bucket.
Only what is small travels back: per-clip values, statuses, and for each file written its size, its stamp
(stores/location.py) and its sha256, taken from the bytes in memory, so no one reads the file again to hash it.

A file appears whole or not at all (a temporary file renamed over it, or one PUT of the whole object), so a
task killed mid-write leaves the shard as it was. Its rows are committed (`done`) by the client only after the
task returned, so no committed row ever points at a shard its task did not finish.

The bytes are the ones zarr writes for the same rows (stores/shards.py lays out the Zarr v3 sharding codec:
chunks end to end, then the index and its crc32c), so plain `zarr` reads the store. An array whose codecs are
not encode_row's chain (a store made by an older avstore) gets each row's chunk encoded by zarr itself.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from stores.location import Location
from stores.shards import encode_row, read_shard, shard_bytes, takes_encoded_rows
from stores.store import StoreError


@dataclass(frozen=True)
class FileSum:
    """A file as its writer left it: the checksum list's entry for it (stores/integrity.py)."""

    size: int
    stamp: str
    sha256: str

    def entry(self) -> dict:
        return {"size": self.size, "sha256": self.sha256, "stamp": self.stamp}


@dataclass(frozen=True)
class ShardedArray:
    """What a worker needs to write one large array's shards: its path in the store, rows per shard, its
    length (rows past it do not exist), and how a row is encoded: encode_row's `chain`, or (None) zarr's own
    codecs from `metadata` (the array's zarr.json)."""

    path: str
    shard_rows: int
    length: int
    ndim: int
    chain: str | None
    metadata: dict | None = None

    @classmethod
    def of(cls, array, chain: str) -> "ShardedArray":
        fast = takes_encoded_rows(array, chain)
        return cls(array.path, int(array.shards[0]), int(array.shape[0]), array.ndim, chain if fast else None,
                   None if fast else array.metadata.to_dict())

    def key(self, shard: int) -> str:
        """The shard's file, relative to the store's root."""
        return f"{self.path}/c/{shard}/" + "/".join(["0"] * (self.ndim - 1))

    def encode(self, values: np.ndarray) -> bytes:
        """One row's chunk, as zarr stores it in this array's shards."""
        if self.chain is not None:
            return encode_row(values, self.chain).data
        return _encoded_by_zarr(values, self.metadata)


def write_shard(location: Location, array: ShardedArray, shard: int, chunks: dict[int, bytes | None]) -> tuple[str, FileSum]:
    """Write shard `shard` of `array` whole: `chunks` maps a row within the shard to its chunk's bytes (None: no
    chunk, the row reads as the fill value). Rows of the shard that `chunks` leaves out keep the bytes the
    stored shard has; the file is read only when there are such rows. Returns (the file, its FileSum)."""
    key = array.key(shard)
    present = range(min(array.shard_rows, array.length - shard * array.shard_rows))
    rows = [None] * array.shard_rows
    if any(k not in chunks for k in present) and location.exists(key):
        rows = read_shard(location.read_bytes(key), array.shard_rows, location.url_of(key))
    for k, chunk in chunks.items():
        rows[k] = chunk
    data = shard_bytes(rows)
    stamp = location.write_bytes(key, data)
    return key, FileSum(len(data), stamp, hashlib.sha256(data).hexdigest())


class ShardWriteError(StoreError):
    """A worker could not write (or read back) a shard of the store: the message says what the workers need."""


def write_rows(location: Location, array: ShardedArray, chunks: dict[int, bytes | None]) -> dict[str, FileSum]:
    """Write every shard that holds a row of `chunks` (store row -> chunk bytes), each once, whole.
    ShardWriteError when the store cannot be reached from here (no credentials, no such folder, no permission)."""
    by_shard: dict[int, dict[int, bytes | None]] = {}
    for row, chunk in chunks.items():
        by_shard.setdefault(row // array.shard_rows, {})[row % array.shard_rows] = chunk
    written = {}
    for shard, rows in sorted(by_shard.items()):
        try:
            key, file = write_shard(location, array, shard, rows)
        except Exception as err:  # botocore's (NoCredentialsError, ...) are plain Exceptions
            raise ShardWriteError(
                f"a worker could not write {array.key(shard)} into the store {location.url} ({type(err).__name__}: {err}); every "
                "worker needs write access to the store: for s3://, the AWS_* variables in the workers' environment; for a folder, "
                "the same path on a filesystem they share") from None
        written[key] = file
    return written


def _encoded_by_zarr(values: np.ndarray, metadata: dict) -> bytes:
    """The chunk bytes of one row under the shard's inner codecs, by zarr: an in-memory array of one chunk."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore, StorePath

    from stores.codecs import use_shaped_delta

    use_shaped_delta()
    shape = [1, *values.shape]
    sharding = metadata["codecs"][0]["configuration"]
    meta = {**metadata, "shape": shape, "codecs": sharding["codecs"],
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shape}}}
    store = MemoryStore()
    one = zarr.Array.from_dict(StorePath(store), meta).with_config({"write_empty_chunks": True})
    one[0] = values
    key = "c/" + "/".join(["0"] * len(shape))
    return sync(store.get(key, prototype=default_buffer_prototype())).to_bytes()
