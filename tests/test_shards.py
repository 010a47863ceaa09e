"""Rows encoded on the workers and placed into shards by the writer (stores/shards.py)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from stores.codecs import CHAINS, chunk_filters, use_shaped_delta
from stores.shards import EncodedRow, decode_row, encode_large_arrays, encode_row, read_shard, takes_encoded_rows, write_encoded_rows
from stores.store import SHARD_ROWS, _create_array

# every kind of large array a store holds: RGB videos and images, grey chunks and images, float16 mels
SHAPES = [((4, 32, 32, 3), "uint8"), ((4, 32, 64, 3), "uint8"), ((48, 48, 3), "uint8"), ((4, 32, 32), "uint8"), ((64, 64), "uint8"),
          ((64, 80), "float16"), ((2, 3, 32, 32), "uint8")]


def smooth(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """A picture-like row (neighbours close), so the deltas matter, plus noise so no two rows are equal."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).sum(axis=0) * 3 + rng.integers(0, 20, shape)
    return (grid % 256).astype(dtype) if dtype == "uint8" else (np.sin(grid / 10) * 40).astype(dtype)


def stored_chunk(array: zarr.Array, row: int) -> bytes | None:
    key = f"{array.path}/c/{row // SHARD_ROWS}/" + "/".join(["0"] * (array.ndim - 1))
    return read_shard(sync(array.store_path.store.get(key, prototype=default_buffer_prototype())), SHARD_ROWS, key)[row % SHARD_ROWS]


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("clip_shape,dtype", SHAPES)
def test_a_row_encoded_on_a_worker_is_byte_for_byte_the_chunk_zarr_writes(tmp_path, clip_shape, dtype, chain):
    use_shaped_delta()
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    values = smooth(clip_shape, dtype, 0)
    by_zarr = _create_array(group, "by_zarr", 40, clip_shape, dtype, chain)
    by_zarr[3] = values
    encoded = encode_row(values, chain)
    assert encoded.data == stored_chunk(by_zarr, 3)
    assert np.array_equal(decode_row(encoded), values)
    placed = _create_array(group, "placed", 40, clip_shape, dtype, chain)
    assert takes_encoded_rows(placed, chain)
    if chunk_filters(clip_shape, dtype, "compact") != chunk_filters(clip_shape, dtype, "quick"):
        assert not takes_encoded_rows(placed, ({"compact", "quick"} - {chain}).pop())  # the other chain's bytes are decoded first
    write_encoded_rows(placed, np.asarray([3, 33]), [encoded, encoded])
    assert np.array_equal(placed[3], values) and np.array_equal(placed[33], values)  # zarr reads what the writer placed
    assert not placed[4].any()


def test_placing_rows_keeps_the_other_rows_of_a_shard_and_an_empty_row_reads_as_fill(tmp_path):
    use_shaped_delta()
    shape, dtype = (4, 32, 32, 3), "uint8"
    array = _create_array(zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3), "crops", 2 * SHARD_ROWS, shape, dtype)
    rows = {row: smooth(shape, dtype, row) for row in (0, 5, SHARD_ROWS + 1)}
    array[0] = rows[0]  # written by zarr before
    write_encoded_rows(array, np.asarray([5, SHARD_ROWS + 1]), [encode_row(rows[5]), encode_row(rows[SHARD_ROWS + 1])])
    write_encoded_rows(array, np.asarray([7]), [None])  # a failed clip's row: no chunk
    for row, values in rows.items():
        assert np.array_equal(array[row], values), row
    assert not array[7].any() and stored_chunk(array, 7) is None


def test_a_store_made_with_another_chain_gets_the_rows_decoded_and_written_through_zarr(tmp_path):
    """A store from before issue 12 (zstd alone): the workers' delta-filtered bytes would decode to other values."""
    from stores.store import FeatureStore

    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=["ANG"], split_seed=0)
    feature_set = store.ensure_feature_set("faces", {"p": 1}, {"crops": ((4, 32, 32, 3), "uint8")}, {})
    old = feature_set.group.create_array("old", shape=(SHARD_ROWS, 4, 32, 32, 3), dtype="uint8", chunks=(1, 4, 32, 32, 3),
                                         shards=(SHARD_ROWS, 4, 32, 32, 3), fill_value=0, compressors=[ZstdCodec(level=0)])
    assert takes_encoded_rows(feature_set["crops"], "zstd") and not takes_encoded_rows(old, "zstd") and not takes_encoded_rows(old)
    values = [smooth((4, 32, 32, 3), "uint8", k) for k in range(2)]
    store.write_rows(feature_set, np.asarray([9, 2]), {"old": [encode_row(values[0]), encode_row(values[1])]}, ["ok", "ok"], ["", ""])
    assert np.array_equal(old[9], values[0]) and np.array_equal(old[2], values[1])


def test_a_damaged_shard_index_is_refused_with_what_to_do(tmp_path):
    use_shaped_delta()
    array = _create_array(zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3), "crops", SHARD_ROWS, (4, 32, 32, 3), "uint8")
    array[0] = smooth((4, 32, 32, 3), "uint8", 0)
    shard = next((tmp_path / "s.zarr" / "crops" / "c").rglob("0/0/0/0/0"))
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged index.*cli.py verify"):
        write_encoded_rows(array, np.asarray([1]), [encode_row(smooth((4, 32, 32, 3), "uint8", 1))])


def test_the_task_hands_the_writer_encoded_large_arrays_and_small_ones_as_they_are():
    arrays = {"crops": smooth((4, 32, 32, 3), "uint8", 0), "boxes": np.zeros((4, 4), np.float32), "fps": np.float32(25)}
    encoded = encode_large_arrays(arrays, "faces")
    assert isinstance(encoded["crops"], EncodedRow) and len(encoded["crops"].data) < arrays["crops"].nbytes
    assert encoded["crops"].chain == "zstd"  # what the faces set's crops are stored under (stores/codecs.chain_for)
    assert encoded["boxes"] is arrays["boxes"] and encoded["fps"] is arrays["fps"]


def test_a_worker_writes_whole_shards_of_an_older_chain_with_zarr_s_own_encoding(tmp_path):
    """stores/shard_files.py: a store made by an older avstore (zstd alone) keeps its codecs; a worker's shard of it
    reads back through plain zarr, and the rows of the shard it did not compute keep their values."""
    from stores.location import locate
    from stores.shard_files import ShardedArray, write_rows

    clip = (4, 32, 32, 3)
    old = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3).create_array(
        "old", shape=(SHARD_ROWS + 8, *clip), dtype="uint8", chunks=(1, *clip), shards=(SHARD_ROWS, *clip), fill_value=0,
        compressors=[ZstdCodec(level=0)])
    before = smooth(clip, "uint8", 9)
    old[3] = before
    layout = ShardedArray.of(old, "compact")
    assert layout.chain is None  # not encode_row's bytes: zarr encodes each row
    rows = {row: smooth(clip, "uint8", row) for row in (1, SHARD_ROWS + 2)}
    sums = write_rows(locate(str(tmp_path / "s.zarr")), layout, {row: layout.encode(v) for row, v in rows.items()})
    assert set(sums) == {layout.key(0), layout.key(1)}
    reread = zarr.open_array(tmp_path / "s.zarr" / "old", mode="r")
    for row, values in rows.items():
        assert np.array_equal(reread[row], values)
    assert np.array_equal(reread[3], before) and not reread[2].any()


def test_a_worker_that_cannot_write_the_store_says_what_the_workers_need(tmp_path):
    """A shard whose folder cannot be made (here a file stands where it goes; on a cluster: no credentials, another
    machine's disk): one error naming the file, the store and the fix, not one error per clip."""
    from stores.location import locate
    from stores.shard_files import ShardedArray, ShardWriteError, write_rows

    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "crops").write_text("in the way")
    layout = ShardedArray("crops", shard_rows=SHARD_ROWS, length=4, ndim=5, chain="compact")
    with pytest.raises(ShardWriteError, match=r"crops/c/0/0/0/0/0.*every worker needs write access.*AWS_\*"):
        write_rows(locate(str(tmp_path / "s.zarr")), layout, {0: encode_row(smooth((4, 32, 32, 3), "uint8", 0)).data})
