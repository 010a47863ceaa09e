"""Rows encoded where they are computed, and shards assembled from their bytes.

Why: handed a clip's arrays (~9 MB at the defaults), one writer process for the whole cluster received, copied
and compressed every byte (the deltas and zstd of stores/codecs.py, through zarr's per-chunk machinery): ~160
CPU-ms per clip, which capped a many-core node (bench/results/cores-16.md). A worker encodes each large array of
its clip into the bytes of that row's chunk (`encode_row`), and shards are assembled as the Zarr v3 sharding codec
lays them out: the chunks' bytes end to end, then the index of (offset, length) pairs, then the index's crc32c.
Extraction's workers now write those shards themselves (stores/shard_files.py); `write_encoded_rows` places
encoded rows into a store's shards from one process.

The bytes are the ones zarr writes for the same values and chain (tests/test_shards.py compares them chunk by
chunk), so any Zarr reader reads the result. An array whose chain differs from encode_row's (a store made by
an older avstore) gets its rows decoded and written through zarr instead: slower, never different.
"""

from __future__ import annotations

from dataclasses import dataclass

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, TransposeCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from stores.codecs import CHAINS, ZSTD_CHECKSUM, chain_for, chunk_compressors, chunk_filters, is_large, undo_filters

EMPTY = 2**64 - 1
"""Offset and length of a chunk a shard does not hold (it reads as the fill value)."""


@dataclass(frozen=True)
class EncodedRow:
    """One row of a large array as the bytes of its chunk: `shape` and `dtype` are the row's, `chain` the
    filter chain that encoded it (stores/codecs.CHAINS)."""

    data: bytes
    shape: tuple[int, ...]
    dtype: str
    chain: str = "compact"


def encode_row(values: np.ndarray, chain: str = "compact") -> EncodedRow:
    """The chunk bytes zarr writes for `values` as one row of an array made by stores/store.py: the filters of
    chunk_filters (wrapping uint8 differences of the C-order flattening, and transposes), the bytes in C order,
    little-endian, then the chain's compressor (`compress`).

    Every difference is taken on a transposed view, in the memory the row already has (`delta_in_c_order`), and
    only the final layout is copied once: zarr copies each transpose's result, ~6 ms for a 4.8 MB fused video."""
    x = np.ascontiguousarray(values)[None]  # the chunk holds one row
    order = tuple(range(x.ndim))  # where the chain's transposes have taken the axes so far
    for codec in chunk_filters(values.shape, str(values.dtype), chain):
        if isinstance(codec, TransposeCodec):
            order = tuple(order[i] for i in codec.order)
            continue
        out = np.empty_like(x)
        delta_in_c_order(x.transpose(order), out.transpose(order))
        x = out
    data = final_layout(x, order).astype(x.dtype.newbyteorder("<"), copy=False)
    return EncodedRow(compress(data, chain), tuple(values.shape), str(values.dtype), chain)


def compress(data: np.ndarray, chain: str) -> bytes:
    """Bytes after the filters -> the chunk: zstd with its frame checksum, or (`raw` chains) the bytes and their
    crc32c, little-endian, as zarr's Crc32cCodec appends it."""
    level = CHAINS[chain].zstd_level
    if level is None:
        raw = np.ascontiguousarray(data).tobytes()
        return raw + google_crc32c.value(raw).to_bytes(4, "little")
    return Zstd(level=level, checksum=ZSTD_CHECKSUM).encode(data)


def decompress(chunk: bytes, zstd: bool, out: np.ndarray | None = None) -> np.ndarray:
    """The chunk's bytes before the filters (into `out`, uint8, when given): a zstd frame, or (`zstd` False) the bytes
    and their crc32c. ValueError (zstd: RuntimeError) on a damaged chunk."""
    if zstd:
        return Zstd().decode(chunk, out=out) if out is not None else np.frombuffer(Zstd().decode(chunk), np.uint8)
    body = bytes(chunk[:-4])
    if len(chunk) < 4 or google_crc32c.value(body) != int.from_bytes(chunk[-4:], "little"):
        raise ValueError("crc32c checksum of the chunk does not match")
    raw = np.frombuffer(body, np.uint8)
    if out is None:
        return raw
    out[...] = raw.reshape(out.shape)
    return out


def delta_in_c_order(src: np.ndarray, dst: np.ndarray) -> None:
    """dst = each element of src minus the one before it in src's C order (the first kept; uint8 wraps): what
    numcodecs' Delta makes of np.ascontiguousarray(src), computed on the views. dst has src's strides, so numpy
    walks both in memory order."""
    if src.flags.c_contiguous and dst.flags.c_contiguous:  # one row: no short last axis to step along
        src, dst = src.reshape(-1), dst.reshape(-1)
    np.subtract(src[..., 1:], src[..., :-1], out=dst[..., 1:])
    before = np.zeros(src.shape[:-1], src.dtype)  # before a row's first element: the previous row's last
    before.reshape(-1)[1:] = np.ascontiguousarray(src[..., -1]).reshape(-1)[:-1]
    np.subtract(src[..., 0], before, out=dst[..., 0])


def final_layout(x: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """x.transpose(order) as a C-contiguous array. The chains' usual end, channels-last to channel planes, is
    OpenCV's split (~3x numpy's copy)."""
    import cv2

    if order == tuple(range(x.ndim)):
        return x
    channels = x.shape[-1]
    if order == (0, x.ndim - 1, *range(1, x.ndim - 1)) and x.ndim >= 3 and channels <= 4:
        planes = cv2.split(x.reshape(-1, x.shape[-2], channels))
        return np.concatenate([plane.reshape(-1) for plane in planes]).reshape(x.transpose(order).shape)
    return np.ascontiguousarray(x.transpose(order))


def decode_row(row: EncodedRow) -> np.ndarray:
    out = np.empty((1, *row.shape), row.dtype)
    raw = decompress(row.data, CHAINS[row.chain].zstd_level is not None).view(np.dtype(row.dtype).newbyteorder("<"))
    filters = chunk_filters(row.shape, row.dtype, row.chain)
    if filters:
        undo_filters(raw.view(np.uint8), filters, out)
    else:
        out[...] = raw.reshape(out.shape)
    return out[0]


def encode_large_arrays(arrays: dict[str, np.ndarray] | None, kind: str) -> dict | None:
    """`arrays` of a feature set of `kind` with every array the store shards (stores/store.py) replaced by its
    EncodedRow under that array's chain (stores/codecs.chain_for)."""
    if arrays is None:
        return None
    return {name: encode_row(v, chain_for(kind, name)) if isinstance(v, np.ndarray) and is_large(v.shape) else v
            for name, v in arrays.items()}


def takes_encoded_rows(array: zarr.Array, chain: str = "compact") -> bool:
    """Whether `array` is sharded by rows with exactly encode_row's `chain`, its index at the end with a crc32c."""
    codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    shard, clip_shape = codecs[0], tuple(array.shape[1:])
    bytes_codec, compressor = shard.codecs[-2:] if len(shard.codecs) >= 2 else (None, None)
    expected = [c.to_dict() for c in chunk_compressors(chain)]
    return (tuple(shard.chunk_shape) == (1, *clip_shape) and shard.index_location.value == "end"
            and [c.to_dict() for c in shard.codecs[:-2]] == [c.to_dict() for c in chunk_filters(clip_shape, str(array.dtype), chain)]
            and isinstance(bytes_codec, BytesCodec) and getattr(bytes_codec.endian, "value", "little") == "little"
            and compressor is not None and [compressor.to_dict()] == expected
            and [type(c) for c in shard.index_codecs] == [BytesCodec, Crc32cCodec]
            and getattr(array.metadata.chunk_key_encoding, "separator", None) == "/")


def write_encoded_rows(array: zarr.Array, rows: np.ndarray, encoded: list[EncodedRow | None]) -> None:
    """Place each row's chunk into its shard (None: no chunk, the row reads as the fill value). A shard that
    exists keeps its other rows' bytes as they are; each shard is written once, whole (an atomic replace on a
    local disk, one PUT on an object store)."""
    shard_rows = int(array.shards[0])
    store, zeros = array.store_path.store, "/".join(["0"] * (array.ndim - 1))
    by_shard: dict[int, dict[int, EncodedRow | None]] = {}
    for row, item in zip(np.asarray(rows).tolist(), encoded):
        by_shard.setdefault(row // shard_rows, {})[row % shard_rows] = item
    prototype = default_buffer_prototype()
    for shard, items in by_shard.items():
        key = f"{array.path}/c/{shard}/{zeros}"
        chunks = read_shard(sync(store.get(key, prototype=prototype)), shard_rows, key)
        for k, item in items.items():
            chunks[k] = None if item is None else item.data
        sync(store.set(key, prototype.buffer.from_bytes(shard_bytes(chunks))))


def shard_bytes(chunks: list[bytes | None]) -> bytes:
    index = np.full((len(chunks), 2), EMPTY, dtype="<u8")
    offset = 0
    for k, chunk in enumerate(chunks):
        if chunk is not None:
            index[k] = (offset, len(chunk))
            offset += len(chunk)
    raw = index.tobytes()
    return b"".join(c for c in chunks if c is not None) + raw + np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes()


def read_shard(stored, shard_rows: int, key: str) -> list[bytes | None]:
    """The chunks of a stored shard (its bytes or a zarr Buffer, or None when there is none yet), by row within it."""
    if stored is None:
        return [None] * shard_rows
    data = stored if isinstance(stored, bytes) else stored.to_bytes()
    raw = data[-(shard_rows * 16 + 4) : -4]
    if len(raw) != shard_rows * 16 or np.uint32(google_crc32c.value(raw)).astype("<u4").tobytes() != data[-4:]:
        raise ValueError(f"shard '{key}' has a damaged index (crc32c mismatch); run `python cli.py verify` on the store")
    index = np.frombuffer(raw, dtype="<u8").reshape(-1, 2)
    return [None if offset == EMPTY else data[int(offset) : int(offset + nbytes)] for offset, nbytes in index.tolist()]
