"""The store's codec chains (issue 12, a smaller store): lossless, readable by plain zarr, read fast by the loader."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, TransposeCodec, ZstdCodec

from stores.codecs import CHAINS, chain_for, chunk_compressors, chunk_filters, is_large
from stores.store import SHARD_ROWS, DamagedChunkError, FeatureStore, _create_array
from stores.torchdata import ShardReader, read_rows
from tests.conftest import extract_sample_store, run_cli


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """18 sample clips, T=4, 48 px, with the concat fusion: every kind of large array the defaults make."""
    return extract_sample_store(tmp_path_factory, "codecs.zarr", actors=3, sentences=1, seed=2, frames=4, size=48)


def _large_arrays(root: zarr.Group) -> dict[str, zarr.Array]:
    return {f"features/{g}/{n}": a for g in sorted(root["features"].group_keys()) for n, a in sorted(root[f"features/{g}"].arrays())
            if is_large(a.shape[1:])}


def _old_chain(location, values: np.ndarray) -> zarr.Array:
    """The array as stores were written before issue 12: bytes + zstd level 0, nothing else."""
    clip = values.shape[1:]
    array = zarr.create_array(location, shape=values.shape, dtype=values.dtype, chunks=(1, *clip), shards=(SHARD_ROWS, *clip),
                              compressors=[ZstdCodec(level=0)], fill_value=0)
    array[:] = values
    return zarr.open_array(location, mode="r")


def test_new_chains_hold_exactly_the_values_of_the_old_chain_and_old_stores_still_read_fast(store, tmp_path):
    arrays = _large_arrays(FeatureStore.open(store).root)
    names = {path.rsplit("/", 1)[1] for path in arrays}
    assert {"crops", "middle", "chunks", "mel", "image"} <= names and "video" not in names  # spec is small at 48 px; the video is built on read
    rows = np.array([17, 0, 5, 5, 11, 1, 2])
    for path, array in arrays.items():
        values = array[:]
        old = _old_chain(tmp_path / path.replace("/", "_"), values)
        assert [type(c) for c in old.metadata.codecs[0].codecs] == [BytesCodec, ZstdCodec]
        assert np.array_equal(old[:], values), path  # same clips, same values, whichever chain wrote them
        for a in (array, old):
            if a.dtype == np.uint8:
                assert ShardReader.for_array(a) is not None, path  # the loader's direct path takes both chains
            assert np.array_equal(read_rows(a, rows), values[rows]), path


def test_plain_zarr_reads_the_store_without_avstore(store, tmp_path):
    arrays = _large_arrays(FeatureStore.open(store).root)
    expected = {path: hashlib.sha256(np.ascontiguousarray(a[:]).tobytes()).hexdigest() for path, a in arrays.items()}
    script = f"""
import hashlib, json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np, zarr
root = zarr.open_group({store!r}, mode="r")
paths = {sorted(expected)!r}
out = {{p: hashlib.sha256(np.ascontiguousarray(root[p][:]).tobytes()).hexdigest() for p in paths}}
assert not [m for m in sys.modules if m.split(".")[0] in ("stores", "pipeline", "encoders")]
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == expected


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("clip_shape", [(4, 48, 48, 3), (1, 48, 48, 3), (48, 48, 3), (32, 64, 3), (2, 1, 48, 48, 3), (4, 32, 32, 6), (4, 32, 32, 2), (4, 48, 48), (64, 64)])
def test_every_chain_round_trips_through_zarr_and_the_direct_reader(tmp_path, clip_shape, chain):
    """Shapes the options can make (--frames 1, --size, the stack fusion). With T=1 the planar transposed view
    is Fortran-contiguous and numcodecs' Delta would difference it in memory order: that chain is not used."""
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.integers(0, 4, (5, *clip_shape), dtype=np.uint8), axis=-2, dtype=np.uint8)  # smooth-ish
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    _create_array(group, "a", 5, clip_shape, "uint8", chain)[:] = values
    array = zarr.open_group(tmp_path / "s.zarr", mode="r")["a"]
    assert [c.to_dict()["name"] for c in array.metadata.codecs[0].codecs][-2:] == ["bytes", "zstd" if CHAINS[chain].zstd_level else "crc32c"]
    assert np.array_equal(array[:], values)
    out = np.empty_like(values)
    ShardReader.for_array(array).read(np.array([4, 0, 2, 1, 3]), out)
    assert np.array_equal(out, values[[4, 0, 2, 1, 3]])


def test_channel_images_get_the_colour_vertical_horizontal_chain_and_floats_none():
    filters = chunk_filters((16, 224, 448, 3), "uint8")
    assert [c.to_dict()["name"] for c in filters] == ["numcodecs.delta", "transpose", "numcodecs.delta", "transpose", "numcodecs.delta"]
    assert [tuple(c.order) for c in filters if isinstance(c, TransposeCodec)] == [(0, 4, 1, 3, 2), (0, 1, 2, 4, 3)]
    assert chunk_filters((512, 431), "float16") == [] and len(chunk_filters((16, 224, 224), "uint8")) == 1


def test_a_store_reopened_for_writing_encodes_with_the_new_chain(tmp_path):
    """Resume and new clips write through arrays zarr rebuilds from the metadata: its own numcodecs Delta
    flattens the chunk and the transpose after it fails, unless ShapedDelta is what zarr builds."""
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    _create_array(group, "crops", 4, (2, 48, 48, 3), "uint8")
    reopened = zarr.open_group(tmp_path / "s.zarr", mode="r+")["crops"]  # a fresh parse, as the next run's
    values = np.arange(2 * 2 * 48 * 48 * 3, dtype=np.uint8).reshape(2, 2, 48, 48, 3)
    reopened[1:3] = values
    assert np.array_equal(zarr.open_group(tmp_path / "s.zarr", mode="r")["crops"][1:3], values)


def test_each_array_gets_its_chain_and_every_chunk_carries_a_checksum(store):
    """issue 24: what 3D encoders read (crops, chunks) under zstd alone, fused images uncompressed with a crc32c,
    the rest under the compact deltas; plain zarr undoes a delta with numpy's serial cumsum."""
    root = FeatureStore.open(store).root
    seen = {}
    for path, array in _large_arrays(root).items():
        group, name = path.split("/")[1], path.split("/")[2]
        chain = chain_for(root[f"features/{group}"].attrs["kind"], name)
        inner = [c.to_dict() for c in array.metadata.codecs[0].codecs]
        assert inner[:-2] == [c.to_dict() for c in chunk_filters(array.shape[1:], str(array.dtype), chain)], path
        assert inner[-1] == chunk_compressors(chain)[0].to_dict(), path
        seen[name] = (sum(c["name"] == "numcodecs.delta" for c in inner), inner[-1])
    assert seen["crops"] == seen["chunks"] == (0, {"name": "zstd", "configuration": {"level": 6, "checksum": True}})
    assert seen["image"] == (0, {"name": "crc32c"})
    assert seen["middle"] == (3, {"name": "zstd", "configuration": {"level": 1, "checksum": True}})


def _damage_one_chunk(store: str, array: str, row: int) -> str:
    """64 random bytes over the middle of row `row`'s chunk inside its shard; the shard index stays intact."""
    from stores.shards import read_shard
    from zarr.core.buffer import default_buffer_prototype

    a = zarr.open_group(store, mode="r")[array]
    file = f"{store}/{array}/c/{row // SHARD_ROWS}/" + "/".join(["0"] * (a.ndim - 1))
    data = bytearray(open(file, "rb").read())
    chunk = read_shard(default_buffer_prototype().buffer.from_bytes(bytes(data)), SHARD_ROWS, file)[row % SHARD_ROWS]
    at = data.index(chunk) + len(chunk) // 2
    data[at : at + 64] = np.random.default_rng(0).integers(0, 256, 64, dtype=np.uint8).tobytes()
    with open(file, "wb") as f:
        f.write(bytes(data))
    return file


@pytest.mark.slow
def test_a_damaged_chunk_is_refused_by_plain_zarr_and_by_train_in_one_line(store, tmp_path):
    """issue 24: 64 random bytes in one shard silently changed 6,123 values and `train` ran on them to exit 0."""
    import shutil

    damaged = str(tmp_path / "damaged.zarr")
    shutil.copytree(store, damaged)
    root = zarr.open_group(damaged, mode="r")
    crops, image = (next(f"features/{g}/{name}" for g in root["features"].group_keys() if g.startswith(kind)) for kind, name in (("faces", "crops"), ("fusion-concat", "image")))
    row = int(np.flatnonzero(root["clips/split"][:] == "train")[-1])  # not the first: the streamed run reads it in a worker
    file = _damage_one_chunk(damaged, crops, row)  # what a 3D concat run reads: zstd's frame checksum
    _damage_one_chunk(damaged, image, row)  # a 2D one: stored uncompressed, with a crc32c
    for array in (crops, image):
        plain = subprocess.run([sys.executable, "-c", f"""
import warnings; warnings.simplefilter("ignore")
import zarr
a = zarr.open_array({damaged!r} + "/" + {array!r}, mode="r")
a[{0 if row else 1}]  # another row of the same shard reads
try:
    a[{row}]
except Exception as err:
    print("refused:", type(err).__name__, err)
"""], capture_output=True, text=True, timeout=120)
        assert "refused:" in plain.stdout and "checksum" in plain.stdout, array + plain.stdout + plain.stderr
        reader = ShardReader.for_array(zarr.open_array(f"{damaged}/{array}", mode="r"))
        with pytest.raises(DamagedChunkError, match=f"row\\(s\\) {row} "):  # the loader's own reader refuses it too
            reader.read(np.array([row]), np.empty((1, *root[array].shape[1:]), np.uint8))
    for extra in ([], ["--max-memory-gb", "0", "--loader-workers", "1"]):  # in memory (read in the trainer), streamed (in a worker)
        result = run_cli("train", "--store", damaged, "--encoder", "simple3d", "--modality", "av", "--fusion", "concat", "--epochs", "1",
                         "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", str(tmp_path / f"run{len(extra)}"), *extra)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert file in errors[0] and f"row(s) {row} " in errors[0] and "cli.py verify" in errors[0], errors[0]
