"""Rows of the store's small arrays written by whole chunks kept in memory: what the extract client commits.

Why: the small per-clip arrays (status, reason, done, source, boxes, timestamps, ...) hold META_CHUNK_ROWS
rows per chunk, so each commit of a task's rows rewrites whole chunks. Through zarr each such write read the
chunk back, decoded it, merged, encoded and wrote it: ~2 CPU-ms per array, ~60 per commit of some thirty
arrays, most of what the client spent per clip once the workers wrote the large arrays themselves. Here the
chunk is read once per run and kept decoded; a commit updates its rows, encodes it with numcodecs, exactly as
zarr's codecs do (bytes or vlen-utf8, then zstd), and writes it whole (stores/location.py: a rename or one PUT).

Chunks are read back the same way (numcodecs' zstd, then the bytes or vlen-utf8), once each. The bytes are zarr's own for the same values (tests/test_small_arrays.py compares them), so any reader reads
them. An array with other codecs (not made by stores/store.py) is written through zarr, as before.
"""

from __future__ import annotations

import numpy as np
import zarr
from numcodecs import VLenUTF8, Zstd
from zarr.codecs import BytesCodec, VLenUTF8Codec, ZstdCodec

from stores.location import Location


class ChunkWriter:
    """Writes rows of one small array (chunked along rows only) through the decoded chunks it keeps; the only
    writer of that array while it is in use (the extract client during its commits)."""

    def __init__(self, array: zarr.Array, location: Location):
        self.array = array
        self.location = location
        self.rows_per_chunk = int(array.chunks[0])
        self.chunks: dict[int, np.ndarray] = {}
        codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
        serializer, compressor = (codecs[0], codecs[1]) if len(codecs) == 2 else (None, None)
        self.strings = isinstance(serializer, VLenUTF8Codec)
        self.zstd = Zstd(level=compressor.level, checksum=compressor.checksum) if isinstance(compressor, ZstdCodec) else None
        little = isinstance(serializer, BytesCodec) and getattr(serializer.endian, "value", "little") == "little"
        self.direct = (self.zstd is not None and (self.strings or little) and tuple(array.chunks[1:]) == tuple(array.shape[1:])
                       and getattr(array.metadata.chunk_key_encoding, "separator", None) == "/")

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Store `values` (one per row) at `rows` (sorted), each chunk they touch encoded and written once."""
        if not self.direct:
            from stores.store import write_runs

            write_runs(self.array, rows, values)
            return
        rows = np.asarray(rows, dtype=np.int64)
        for index in np.unique(rows // self.rows_per_chunk).tolist():
            inside = rows // self.rows_per_chunk == index
            chunk = self.chunk(index)
            chunk[rows[inside] - index * self.rows_per_chunk] = values[inside]
            self.location.write_bytes(self.key(index), self.encode(chunk))

    def key(self, index: int) -> str:
        return f"{self.array.path}/" + self.array.metadata.encode_chunk_key((index, *[0] * (self.array.ndim - 1)))

    def chunk(self, index: int) -> np.ndarray:
        """Chunk `index` decoded, whole (rows past the array's end hold the fill value, as zarr stores them):
        read once, then kept."""
        if index not in self.chunks:
            shape = (self.rows_per_chunk, *self.array.shape[1:])
            try:
                stored = self.location.read_bytes(self.key(index))
            except FileNotFoundError:
                self.chunks[index] = np.full(shape, "" if self.strings else self.array.fill_value, dtype=object if self.strings else self.array.dtype)
            else:
                self.chunks[index] = self.decode(stored).reshape(shape)
        return self.chunks[index]

    def decode(self, stored: bytes) -> np.ndarray:
        raw = self.zstd.decode(stored)
        if self.strings:
            return VLenUTF8().decode(raw)
        return np.frombuffer(raw, self.array.dtype.newbyteorder("<")).astype(self.array.dtype)

    def encode(self, chunk: np.ndarray) -> bytes:
        if self.strings:
            raw = VLenUTF8().encode(chunk.reshape(-1))
        else:
            raw = np.ascontiguousarray(chunk, dtype=chunk.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        return bytes(self.zstd.encode(raw))
