"""Lossless codec chains of the store's large arrays, chosen per array by measurement (bench/codecs.py).

Face crops and spectrogram images are smooth pictures, so zstd alone leaves most of their redundancy: a pixel
is close to its left and upper neighbours and to its other colour channels. The chains difference the values
first (numcodecs' `Delta`, uint8 arithmetic that wraps, so exactly invertible) and lay the bytes out plane by
plane (zarr's `transpose`), then zstd. Measured on sample and GRID clips at the defaults: crops 1.81 -> 0.79-0.88
MB per clip, the concat video 2.11 -> 1.01-1.08 (its spectrogram half is three equal channels: the colour
difference turns two of them into zeros). Every codec here is one plain `zarr` (>= 3.1.3) reads with nothing
else installed: `transpose` and `zstd` are in the Zarr v3 spec, `numcodecs.delta` ships with zarr-python
(`zarr.codecs.numcodecs`) and with numcodecs >= 0.14 (`numcodecs.zarr3`) for zarr 3.0.

One upstream defect is worked around, for writing only: zarr's numcodecs wrapper returns `Delta`'s encoded
chunk flattened, so a codec after a `Delta` (here a `transpose`) fails to encode. `ShapedDelta` restores the
chunk's shape; its bytes and metadata are those of `numcodecs.delta`, and it decodes with zarr's own code.
It is registered under that name for this process, so stores reopened for writing (resume, new clips) use it.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import zarr
from zarr.codecs import BytesCodec, TransposeCodec, ZstdCodec
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


def chunk_filters(clip_shape: tuple[int, ...], dtype: str) -> list:
    """The array-to-array codecs of one row's chunk (shape (1, *clip_shape)), before bytes + zstd.

    uint8 with channels last (..., H, W, C<=8: crops, middle, fused images and videos): the colour difference
    (the flattened delta runs along C), then vertical (H innermost), then horizontal (W innermost), stored
    channel-planar (C, ..., H, W). Other uint8 (grey spectrogram images): the horizontal difference.
    Anything else (float16 mel, float32): zstd alone, since a float difference would not be exact.
    """
    if np.dtype(dtype) != np.uint8 or len(clip_shape) < 2:
        return []
    if len(clip_shape) < 3 or clip_shape[-1] > 8:
        return [ShapedDelta(dtype="u1")]
    chunk = (1, *clip_shape)
    c, w, h, rest = len(chunk) - 1, len(chunk) - 2, len(chunk) - 3, tuple(range(1, len(chunk) - 3))
    planar = (0, c, *rest, h, w)
    for columns in ((0, c, *rest, w, h), (0, *rest, w, c, h)):  # H innermost; the second where the first is unsafe
        rows = tuple(columns.index(axis) for axis in planar)  # then to the planar layout, W innermost
        if _flattens_in_c_order(chunk, columns, rows):
            return [ShapedDelta(dtype="u1"), TransposeCodec(order=columns), ShapedDelta(dtype="u1"),
                    TransposeCodec(order=rows), ShapedDelta(dtype="u1")]
    return [ShapedDelta(dtype="u1")]


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


def chunk_compressors() -> list:
    return [ZstdCodec(level=ZSTD_LEVEL)]


def _numpy_cumsum(values: np.ndarray, out: np.ndarray) -> None:
    np.cumsum(values, dtype=np.uint8, out=out)


def undo_filters(encoded: np.ndarray, filters: list, out: np.ndarray, cumsum: Callable[[np.ndarray, np.ndarray], None] = _numpy_cumsum) -> None:
    """Decode one chunk's filters in numpy, as zarr does: `encoded` is the flat uint8 after zstd, `out` the chunk
    (shape (1, *clip_shape)).

    For the training loader's direct shard reads (stores/torchdata.ShardReader): zarr's per-chunk machinery
    costs more than these few array passes. Only `is_fast` codecs are handled. `cumsum(flat, out)` is the
    running uint8 sum that undoes a delta (the loader passes torch's, ~4x numpy's on one thread).
    """
    shape, entering = tuple(out.shape), []
    for codec in filters:
        entering.append(shape)
        if isinstance(codec, TransposeCodec):
            shape = tuple(shape[i] for i in codec.order)
    x = encoded.reshape(shape)
    for k in range(len(filters) - 1, -1, -1):
        if isinstance(filters[k], TransposeCodec):
            x = x.transpose(np.argsort(filters[k].order))  # a view, copied once by the next delta or into out
            continue
        direct = k == 0 and out.flags.c_contiguous  # the last step writes the row itself
        summed = out.reshape(-1) if direct else np.empty(x.size, np.uint8)
        cumsum(np.ascontiguousarray(x).reshape(-1), summed)  # the flattened delta's inverse, in C order
        if direct:
            return
        x = summed.reshape(entering[k])
    out[...] = x


def is_fast(codec: Any) -> bool:
    """Whether `undo_filters` decodes this array-to-array codec."""
    if isinstance(codec, TransposeCodec):
        return True
    config = getattr(codec, "codec_config", {})
    return isinstance(codec, Delta) and np.dtype(config.get("dtype")) == np.uint8 and np.dtype(config.get("astype", "u1")) == np.uint8
