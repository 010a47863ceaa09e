"""Bytes per clip and codec costs of the store's large arrays under lossless codec chains (issue 12).

    python bench/codecs.py --store data/stores/sample.zarr --store data/stores/grid.zarr [--rows 8]

For every sharded array of each store, the first `--rows` committed rows are rewritten through zarr, as the
store writes them (one row per inner chunk, shards of SHARD_ROWS), into a scratch store under each candidate
chain: bytes per clip on disk, encode time per clip (zarr's write: the extract's writer pays it), decode time
per row through zarr and through the training loader's direct path (stores.torchdata.ShardReader) where it
applies. Every candidate must give back the exact values or the run fails. Candidates are limited to codecs
plain zarr reads with nothing else installed. Writes bench/results/codecs.md and codecs.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
import zarr
from zarr.codecs import BloscCodec, TransposeCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stores.codecs import chunk_filters  # noqa: E402
from stores.store import SHARD_ROWS, _is_big  # noqa: E402
from stores.torchdata import ShardReader  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def candidates(clip_shape: tuple[int, ...], dtype: str) -> dict[str, tuple[list, list]]:
    """Name -> (filters, compressors) of one row's chunk."""
    found = {
        "zstd 3 (first)": ([], [ZstdCodec(level=0)]),
        "zstd 1": ([], [ZstdCodec(level=1)]),
        "zstd 9": ([], [ZstdCodec(level=9)]),
        "zstd 19": ([], [ZstdCodec(level=19)]),
        "blosc zstd 5 bitshuffle": ([], [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=1)]),
    }
    if np.dtype(dtype) == np.uint8 and len(clip_shape) >= 3 and clip_shape[-1] <= 8:
        planar = (0, len(clip_shape), *range(1, len(clip_shape)))
        found["planar + zstd 3"] = ([TransposeCodec(order=planar)], [ZstdCodec(level=3)])
    if chunk_filters(clip_shape, dtype):
        found["deltas + zstd 1 (avstore)"] = (chunk_filters(clip_shape, dtype), [ZstdCodec(level=1)])
        found["deltas + zstd 3 (before)"] = (chunk_filters(clip_shape, dtype), [ZstdCodec(level=3)])
        found["deltas + zstd 9"] = (chunk_filters(clip_shape, dtype), [ZstdCodec(level=9)])
        found["deltas + blosc zstd 5 bitshuffle"] = (chunk_filters(clip_shape, dtype), [BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle", typesize=1)])
    return found


def measure(data: np.ndarray, filters: list, compressors: list, scratch: Path) -> dict[str, float]:
    shutil.rmtree(scratch, ignore_errors=True)
    n, clip = data.shape[0], data.shape[1:]
    array = zarr.create_array(zarr.storage.LocalStore(scratch), shape=data.shape, dtype=data.dtype, chunks=(1, *clip),
                              shards=(SHARD_ROWS, *clip), filters=filters, compressors=compressors, fill_value=0)
    start = time.perf_counter()
    array[:] = data
    encode = (time.perf_counter() - start) / n
    nbytes = sum(p.stat().st_size for p in (scratch / "c").rglob("*") if p.is_file())
    array = zarr.open_array(zarr.storage.LocalStore(scratch, read_only=True), mode="r")
    start = time.perf_counter()
    back = np.stack([array[i] for i in range(n)])
    decode = (time.perf_counter() - start) / n
    if not np.array_equal(back, data):
        raise SystemExit(f"{filters} {compressors}: decoded values differ")
    reader = ShardReader.for_array(array)
    direct = None
    if reader is not None:
        out = np.empty_like(data)
        start = time.perf_counter()
        for i in range(n):
            reader.read(np.array([i]), out[i : i + 1])
        direct = (time.perf_counter() - start) / n
        if not np.array_equal(out, data):
            raise SystemExit(f"{filters} {compressors}: the direct read differs")
    return {"mb_per_clip": nbytes / n / 1e6, "encode_ms_per_clip": encode * 1e3, "zarr_decode_ms_per_row": decode * 1e3,
            "direct_decode_ms_per_row": None if direct is None else direct * 1e3}


def main(store: list[str] = typer.Option(..., help="Stores to measure (repeat)."), rows: int = typer.Option(8, help="Committed rows per array.")) -> None:
    import torch

    torch.set_num_threads(1)  # as in a loader worker
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for location in store:
            root = zarr.open_group(location, mode="r")
            for set_name in sorted(root["features"].group_keys()):
                group = root[f"features/{set_name}"]
                ok = np.flatnonzero(group["done"][:].astype(bool))[:rows]
                for name, array in sorted(group.arrays()):
                    if not _is_big(array.shape[1:]) or len(ok) == 0:
                        continue
                    data = np.stack([array[int(r)] for r in ok])
                    for label, (filters, compressors) in candidates(array.shape[1:], str(array.dtype)).items():
                        row = {"store": Path(location).name, "array": f"{set_name.rsplit('-', 1)[0]}/{name}", "shape": list(array.shape[1:]),
                               "dtype": str(array.dtype), "chain": label, "clips": len(ok), **measure(data, filters, compressors, Path(tmp) / "a.zarr")}
                        results.append(row)
                        print(json.dumps(row), flush=True)
    write(results)


def write(results: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    machine = {"python": platform.python_version(), "zarr": zarr.__version__, "numpy": np.__version__, "cpu": platform.processor() or platform.machine()}
    (RESULTS / "codecs.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    lines = ["# Store codecs: bytes per clip and costs (bench/codecs.py)", "",
             f"zarr {machine['zarr']}; one thread (torch.set_num_threads(1)); encode = zarr write per clip, decode per row.", ""]
    for store in dict.fromkeys(r["store"] for r in results):
        lines += [f"## {store}", "", "| array | chain | MB/clip | encode ms/clip | zarr decode ms/row | direct decode ms/row |", "|---|---|---:|---:|---:|---:|"]
        for r in (r for r in results if r["store"] == store):
            direct = "-" if r["direct_decode_ms_per_row"] is None else f"{r['direct_decode_ms_per_row']:.1f}"
            lines.append(f"| {r['array']} {tuple(r['shape'])} {r['dtype']} | {r['chain']} | {r['mb_per_clip']:.3f} | {r['encode_ms_per_clip']:.1f} | {r['zarr_decode_ms_per_row']:.1f} | {direct} |")
        before = sum(r["mb_per_clip"] for r in results if r["store"] == store and r["chain"] == "zstd 3 (first)")
        chosen = {}
        for r in (r for r in results if r["store"] == store):
            if r["chain"] == "deltas + zstd 1 (avstore)" or (r["chain"] == "zstd 1" and r["array"] not in chosen):
                chosen[r["array"]] = r["mb_per_clip"]
        after = sum(chosen.values())
        lines += ["", f"Large arrays per clip: **{before:.2f} MB with zstd alone (the first stores), {after:.2f} MB with avstore's chains** (small per-clip arrays add a few kB).", ""]
    (RESULTS / "codecs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
