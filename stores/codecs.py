"""Lossless codec chains of the store's large arrays, chosen per array by measurement (bench/codecs.py).

Face crops and spectrogram images are smooth pictures, so zstd alone leaves most of their redundancy: a pixel
is close to its left and upper neighbours and to its other colour channels. The delta chains difference the
values first (numcodecs' `Delta`, uint8 arithmetic that wraps, so exactly invertible) and lay the bytes out
plane by plane (zarr's `transpose`), then zstd: crops 1.81 -> 0.75-0.84 MB per clip at the defaults.

But plain zarr decodes every `numcodecs.delta` with numpy's serial cumsum (~2 ns a byte): a 4.8 MB 3D concat
row stored under deltas cost 32 CPU-ms through it, and lab members read the store with plain zarr. So each
array gets the chain that suits how it is read (`chain_for`, issue 24):

* `zstd` (level 6, nothing before it): face crops and spectrogram chunks, what 3D encoders read, and what the
  concat and stack videos are built from on read (pipeline/fuse.py FusionSpec.built_on_read: the store does not
  hold those videos; joined, the parts cost ~6-9 CPU-ms per row through plain zarr).
* `raw` (uncompressed, with a crc32c): fused images, 0.3 MB per clip, read at zarr's own ~1 ms per call.
* `compact` (colour, vertical and horizontal differences, zstd 1): the rest (middle faces, spectrogram images).
* `quick` (colour and horizontal differences only, zstd 1): fused arrays that are still stored (concat224's and
  sum's videos, the sequences), which the loader undoes in about half the CPU of `compact`.

Large arrays per clip at the defaults: ~2.3 MB (bench/results/codecs.md). Every codec here is one plain `zarr`
(>= 3.1.3) reads with nothing else installed: `transpose`, `zstd` and `crc32c` are in the Zarr v3 spec,
`numcodecs.delta` ships with zarr-python (`zarr.codecs.numcodecs`) and with numcodecs >= 0.14 (`numcodecs.zarr3`)
for zarr 3.0. Stores made before keep the chains their metadata names.

One upstream defect is worked around, for writing only: zarr's numcodecs wrapper returns `Delta`'s encoded
chunk flattened, so a codec after a `Delta` (here a `transpose`) fails to encode. `ShapedDelta` restores the
chunk's shape; its bytes and metadata are those of `numcodecs.delta`, and it decodes with zarr's own code.
It is registered under that name for this process, so stores reopened for writing (resume, new clips) use it.

Every chunk carries zstd's frame checksum (xxhash64 of the decoded bytes) or a crc32c, so plain zarr and the
loader both refuse a damaged chunk instead of decoding it into wrong values (before issue 24 only the shard
index had one).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, TransposeCodec, ZstdCodec
from zarr.codecs.numcodecs import Delta
from zarr.registry import register_codec

ZSTD_LEVEL = 1
"""After the deltas, zstd's level 1 is both faster and smaller than its default 3 (crops + concat video of a
sample clip: 32 vs 48 ms, 1.96 vs 2.04 MB; bench/results/codecs.md). Measured, not assumed: a higher level is
usually smaller. The writer pays this for every clip; readers decode any level alike."""
NUMCODECS_WARNING = "Numcodecs codecs are not in the Zarr version 3 specification"
warnings.filterwarnings("ignore", message=NUMCODECS_WARNING)  # said once per codec object; these are read everywhere


class ShapedDelta(Delta):
    """`numcodecs.delta` whose encoded chunk keeps its shape (zarr 3.1's wrapper flattens it; see module doc)."""

    async def _encode_single(self, chunk_data: Any, chunk_spec: Any) -> Any:
        encoded = await super()._encode_single(chunk_data, chunk_spec)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(encoded.as_ndarray_like().reshape(chunk_spec.shape))


register_codec("numcodecs.delta", ShapedDelta)
SHAPED_DELTA = f"{ShapedDelta.__module__}.{ShapedDelta.__qualname__}"


def use_shaped_delta() -> None:
    """Make zarr build `numcodecs.delta` as ShapedDelta; again before each write, as zarr's config can be refreshed."""
    codecs = zarr.config.get("codecs", {})
    if codecs.get("numcodecs.delta") != SHAPED_DELTA:  # the key holds a dot: set the whole mapping, not a dotted path
        zarr.config.set({"codecs": {**codecs, "numcodecs.delta": SHAPED_DELTA}})


use_shaped_delta()


LARGE_ARRAY_VALUES = 4096
"""An array with at least this many values per clip is large: one chunk per row, in shards, under a codec chain
here; smaller ones (labels, scores, boxes) are plain chunks of many rows."""


def is_large(clip_shape: tuple[int, ...]) -> bool:
    """Whether an array of one clip's shape `clip_shape` is stored as a large array (LARGE_ARRAY_VALUES)."""
    return int(np.prod(clip_shape)) >= LARGE_ARRAY_VALUES


def chunk_filters(clip_shape: tuple[int, ...], dtype: str, chain: str = "compact") -> list:
    """The array-to-array codecs of one row's chunk (shape (1, *clip_shape)), before bytes and the chain's compressor.

    Under a differencing chain (`compact`, `quick`), uint8 with channels last (..., H, W, C<=8: crops, middle,
    fused images and videos): the colour difference (the flattened delta runs along C), then (`compact` only)
    vertical (H innermost), then horizontal (W innermost), stored channel-planar (C, ..., H, W). Other uint8
    (grey spectrogram images): the horizontal difference. Anything else (float16 mel, float32): none, since a
    float difference would not be exact. `zstd` and `raw` difference nothing.
    """
    if chain not in CHAINS:
        raise ValueError(f"unknown codec chain '{chain}'; choose one of {', '.join(CHAINS)}")
    differences = CHAINS[chain].differences
    if differences is None or np.dtype(dtype) != np.uint8 or len(clip_shape) < 2:
        return []
    if len(clip_shape) < 3 or clip_shape[-1] > 8:
        return [ShapedDelta(dtype="u1")]
    return differences((1, *clip_shape))


def _compact(chunk: tuple[int, ...]) -> list:
    """Colour, vertical, horizontal differences (issue 12): the smallest chain measured."""
    c, w, h, rest = len(chunk) - 1, len(chunk) - 2, len(chunk) - 3, tuple(range(1, len(chunk) - 3))
    planar = (0, c, *rest, h, w)
    for columns in ((0, c, *rest, w, h), (0, *rest, w, c, h)):  # H innermost; the second where the first is unsafe
        rows = tuple(columns.index(axis) for axis in planar)  # then to the planar layout, W innermost
        if _flattens_in_c_order(chunk, columns, rows):
            return [ShapedDelta(dtype="u1"), TransposeCodec(order=columns), ShapedDelta(dtype="u1"),
                    TransposeCodec(order=rows), ShapedDelta(dtype="u1")]
    return [ShapedDelta(dtype="u1")]


def _quick(chunk: tuple[int, ...]) -> list:
    """Colour, then horizontal differences in the channel-planar layout (issue 24): fast to undo."""
    planar = (0, len(chunk) - 1, *range(1, len(chunk) - 1))
    if _flattens_in_c_order(chunk, planar):
        return [ShapedDelta(dtype="u1"), TransposeCodec(order=planar), ShapedDelta(dtype="u1")]
    return [ShapedDelta(dtype="u1")]


@dataclass(frozen=True)
class Chain:
    """How one array's chunks are stored: the differences taken first (None: none), then zstd at `zstd_level`
    with its frame checksum, or (`zstd_level` None) the bytes as they are with a crc32c after them. Either way
    a damaged chunk is refused on read, by plain zarr and by the loader."""

    differences: Callable[[tuple[int, ...]], list] | None
    zstd_level: int | None


CHAINS: dict[str, Chain] = {
    "compact": Chain(_compact, ZSTD_LEVEL),
    "quick": Chain(_quick, ZSTD_LEVEL),
    "zstd": Chain(None, 6),
    "raw": Chain(None, None),
}
"""The chains, by name (the name is not stored: the metadata lists the codecs). `zstd` at level 6: faces and
chunks of a sample clip 1.81 MB at 52 CPU-ms to encode, against 1.76 MB and 75 ms at 9 and 1.94 MB and 21 ms
at 3 (bench/results/codecs.md); decoding costs the same at any level."""

BUILT_ON_READ_PARTS = {("faces", "crops"), ("audio", "chunks")}
"""The arrays 3D encoders read, and what the concat and stack videos are built from on read (pipeline/fuse.py
FusionSpec.built_on_read)."""


def chain_for(kind: str, array: str) -> str:
    """The chain of array `array` of a new feature set of `kind` (issue 24: bench/results/codecs.md).

    Plain zarr undoes every `numcodecs.delta` with numpy's serial cumsum (~2 ns a byte), so an array read at
    training speed carries no difference: face crops and spectrogram chunks under zstd alone (a 3D concat row
    is these two, joined on read: ~6-9 CPU-ms through plain zarr, against ~33 for the stored video under `quick`),
    fused images uncompressed (zarr's ~1 ms per call is then all a 2D concat row costs). The rest (middle faces,
    spectrogram images) stays `compact`, the smallest, and fused arrays that are still stored (concat224's and
    sum's videos, the sequences) `quick`. At the defaults: 2.27-2.33 MB of large arrays per clip (sample, GRID).
    """
    if (kind, array) in BUILT_ON_READ_PARTS:
        return "zstd"
    if kind.startswith("fusion-"):
        return "raw" if array == "image" else "quick"
    return "compact"


def _flattens_in_c_order(chunk: tuple[int, ...], *orders: tuple[int, ...]) -> bool:
    """Whether every `Delta` of the chain sees its transposed input in C order, writing and reading.

    numcodecs' Delta flattens with `order="A"`: a transposed view that happens to be Fortran-contiguous (all
    its non-trivial axes reversed) is differenced in memory order instead, and zarr-python hands Delta such
    views, so the bytes would follow that accident. A chain is used only where no view is Fortran-contiguous
    without being C-contiguous, so its meaning is the plain one any reader implements (and undo_filters does).
    """
    views, shape = [], chunk
    for order in orders:
        views.append(np.empty(shape, np.uint8).transpose(order))  # writing: the view the next Delta encodes
        shape = tuple(shape[i] for i in order)
    for order in reversed(orders):
        view = np.empty(shape, np.uint8).transpose(np.argsort(order))  # reading: the view the next Delta decodes
        views.append(view)
        shape = view.shape
    return all(v.flags.c_contiguous or not v.flags.f_contiguous for v in views)


ZSTD_CHECKSUM = True
"""zstd's frame checksum on every chunk (4 bytes): a damaged chunk fails to decode, in zarr and in the loader."""


def chunk_compressors(chain: str = "compact") -> list:
    """The bytes-to-bytes codecs after the chain's filters: zstd with its checksum, or a crc32c alone (`raw`)."""
    level = CHAINS[chain].zstd_level
    return [Crc32cCodec()] if level is None else [ZstdCodec(level=level, checksum=ZSTD_CHECKSUM)]


def _numpy_cumsum(values: np.ndarray, out: np.ndarray) -> None:
    np.cumsum(values, dtype=np.uint8, out=out)


def undo_filters(encoded: np.ndarray, filters: list, out: np.ndarray, cumsum: Callable[[np.ndarray, np.ndarray], None] = _numpy_cumsum,
                 work: np.ndarray | None = None) -> None:
    """Decode one chunk's filters in numpy, as zarr does: `encoded` is the flat uint8 after zstd, `out` the chunk
    (shape (1, *clip_shape)).

    For the training loader's direct shard reads (stores/torchdata.ShardReader): zarr's per-chunk machinery
    costs more than these few array passes. Only `is_fast` codecs are handled. `cumsum(flat, out)` is the
    running uint8 sum that undoes a delta (the loader passes torch's, ~4x numpy's on one thread). `encoded` is
    overwritten, and `work` (as many bytes, optional) used, as scratch: the loader reuses both for every row,
    since fresh pages cost about as much as the sums (a 3D concat row is 4.8 MB).
    """
    shape, entering = tuple(out.shape), []
    for codec in filters:
        entering.append(shape)
        if isinstance(codec, TransposeCodec):
            shape = tuple(shape[i] for i in codec.order)
    if not encoded.flags.writeable:
        encoded = encoded.copy()
    x = encoded.reshape(shape)
    buffers = [encoded.reshape(-1), work.reshape(-1)[: encoded.size] if work is not None and work.size >= encoded.size else np.empty(encoded.size, np.uint8)]
    holding = 0  # the buffer x lives in; a delta writes into the other one
    for k in range(len(filters) - 1, -1, -1):
        if isinstance(filters[k], TransposeCodec):
            x = x.transpose(np.argsort(filters[k].order))  # a view, copied once by the next delta or into out
            continue
        direct = k == 0 and out.flags.c_contiguous  # the last step writes the row itself
        planes = _planes_of(x) if direct else None
        if planes is not None:  # the quick chain's colour delta, from channel planes
            _undo_colour_delta(planes, out, cumsum, buffers[1 - holding])
            return
        summed = out.reshape(-1) if direct else buffers[1 - holding]
        cumsum(_c_order(x).reshape(-1), summed)  # the flattened delta's inverse, in C order
        if direct:
            return
        x, holding = summed.reshape(entering[k]), 1 - holding
    out[...] = x


def _planes_of(x: np.ndarray) -> np.ndarray | None:
    """The (C, n) channel planes behind a channels-last view `x` of C-contiguous planar memory, if it is one."""
    channels = x.shape[-1]
    planar = x.transpose(0, x.ndim - 1, *range(1, x.ndim - 1))
    if x.ndim >= 3 and 1 < channels <= 4 and not x.flags.c_contiguous and planar.flags.c_contiguous:
        return planar.reshape(channels, -1)
    return None


def _undo_colour_delta(planes: np.ndarray, out: np.ndarray, cumsum: Callable[[np.ndarray, np.ndarray], None], spare: np.ndarray) -> None:
    """out = the inverse of a delta over the channels-last C-order flattening, whose values sit in channel planes.

    Per pixel, the running sum gains the pixel's C deltas, so its last channel is the running sum of the
    pixel sums (one cumsum over a 1/C of the values) and the others follow by plane additions; OpenCV then
    interleaves the planes straight into `out`. `spare` (C planes' bytes, not overlapping `planes`) is scratch.
    """
    import cv2

    c, n = planes.shape
    rows = spare.reshape(-1)[: c * n].reshape(c, n)  # rows[0]: pixel sums, then the first channel; rows[c - 1]: the last
    np.copyto(rows[0], planes[0])
    for k in range(1, c):
        np.add(rows[0], planes[k], out=rows[0])  # uint8: wraps, as the deltas do
    cumsum(rows[0], rows[c - 1])
    rows[0][0] = planes[0][0]
    np.add(rows[c - 1][:-1], planes[0][1:], out=rows[0][1:])  # the previous pixel's last channel plus this delta
    for k in range(1, c - 1):
        np.add(rows[k - 1], planes[k], out=rows[k])
    width = out.shape[-2]
    merged = cv2.merge([row.reshape(-1, width) for row in rows], out.reshape(-1, width, c))
    if not np.shares_memory(merged, out):  # OpenCV wrote elsewhere (it should not)
        out.reshape(-1, width, c)[...] = merged


def _c_order(x: np.ndarray) -> np.ndarray:
    """x as a C-contiguous array. Channel planes viewed channels-last are interleaved by OpenCV's merge, ~15x
    numpy's strided copy (0.4 vs 5.8 ms for a 3D concat row)."""
    if x.flags.c_contiguous:
        return x
    planes = _planes_of(x)
    if planes is not None:
        import cv2

        return cv2.merge([p.reshape(-1, x.shape[-2]) for p in planes]).reshape(x.shape)
    return np.ascontiguousarray(x)


def is_fast(codec: Any) -> bool:
    """Whether `undo_filters` decodes this array-to-array codec."""
    if isinstance(codec, TransposeCodec):
        return True
    config = getattr(codec, "codec_config", {})
    return isinstance(codec, Delta) and np.dtype(config.get("dtype")) == np.uint8 and np.dtype(config.get("astype", "u1")) == np.uint8
