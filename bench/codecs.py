"""Bytes per clip and decode costs of the store's large arrays under lossless codec chains (issues 12, 24).

    python bench/codecs.py --store data/stores/sample.zarr --store data/stores/grid.zarr [--rows 4] [--repeat 3]

For every sharded array of each store, the first `--rows` committed rows are rewritten through zarr, as the
store writes them (one row per inner chunk, shards of SHARD_ROWS), into a scratch store under each candidate
chain: bytes per clip on disk, encode CPU time per clip (zarr's write), decode CPU time per row through plain
zarr and through the training loader's direct path (stores.torchdata.ShardReader) where it applies, each the
best of `--repeat` passes. CPU time (time.process_time, every thread of the process), not wall time: on a
shared machine other users' load stretches wall time, not the CPU a decode takes. Every candidate must give back the exact values or the run
fails. Candidates are limited to codecs plain zarr reads with nothing else installed; all but the "before"
reference carry zstd's frame checksum, as the store's chunks now do. Writes bench/results/codecs.md and
codecs.json, with the per-clip total of the chains the store uses (stores/codecs.chain_for).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
import zarr
from zarr.codecs import TransposeCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stores.codecs import CHAINS, ShapedDelta, chain_for, chunk_filters, is_large  # noqa: E402
from stores.store import SHARD_ROWS  # noqa: E402
from stores.torchdata import ShardReader  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def candidates(clip_shape: tuple[int, ...], dtype: str) -> dict[str, tuple[list, list]]:
    """Name -> (filters, compressors) of one row's chunk: which axis the deltas run along, the transposes, the level."""
    z1, z3 = [ZstdCodec(level=1, checksum=True)], [ZstdCodec(level=3, checksum=True)]
    found = {"zstd 1": ([], z1), "zstd 3": ([], z3)}
    delta = lambda: ShapedDelta(dtype="u1")  # noqa: E731
    if np.dtype(dtype) == np.uint8 and len(clip_shape) >= 2:
        chunk = (1, *clip_shape)
        channels = len(clip_shape) >= 3 and clip_shape[-1] <= 8
        if channels:
            planar = (0, len(chunk) - 1, *range(1, len(chunk) - 1))
            found["colour delta"] = ([delta()], z1)
            found["horizontal delta (planar)"] = ([TransposeCodec(order=planar), delta()], z1)
        else:
            found["horizontal delta"] = ([delta()], z1)
        if len(clip_shape) >= 3 + channels:  # a time axis: T innermost
            frames_last = (0, *range(2, len(chunk)), 1)
            found["temporal delta"] = ([TransposeCodec(order=frames_last), delta()], z1)
            if channels:
                found["colour + temporal deltas"] = ([delta(), TransposeCodec(order=frames_last), delta()], z1)
        for chain in (CHAINS if channels else ["compact"]):  # grey arrays: one horizontal delta either way
            filters = chunk_filters(clip_shape, dtype, chain)
            label = {"quick": "colour + horizontal deltas", "compact": "colour + vertical + horizontal deltas"}[chain] if channels else "horizontal delta"
            found[f"{label} [{chain}]"] = (filters, z1)
            found[f"{label} [{chain}], zstd 3"] = (chunk_filters(clip_shape, dtype, chain), z3)
        found["before: compact, zstd 1 without checksum"] = (chunk_filters(clip_shape, dtype, "compact"), [ZstdCodec(level=1)])
    return found


def measure(data: np.ndarray, filters: list, compressors: list, scratch: Path, repeat: int) -> dict[str, float]:
    shutil.rmtree(scratch, ignore_errors=True)
    n, clip = data.shape[0], data.shape[1:]
    array = zarr.create_array(zarr.storage.LocalStore(scratch), shape=data.shape, dtype=data.dtype, chunks=(1, *clip),
                              shards=(SHARD_ROWS, *clip), filters=filters, compressors=compressors, fill_value=0)
    start = time.process_time()
    array[:] = data
    encode = (time.process_time() - start) / n
    nbytes = sum(p.stat().st_size for p in (scratch / "c").rglob("*") if p.is_file())
    array = zarr.open_array(zarr.storage.LocalStore(scratch, read_only=True), mode="r")

    def best(read) -> float:
        times = []
        for _ in range(repeat):
            start = time.process_time()  # CPU time of this process, all its threads: what other users' load leaves alone
            read()
            times.append((time.process_time() - start) / n)
        return min(times)

    back = np.empty_like(data)
    decode = best(lambda: [back.__setitem__(i, array[i]) for i in range(n)])
    if not np.array_equal(back, data):
        raise SystemExit(f"{filters} {compressors}: decoded values differ")
    reader = ShardReader.for_array(array)
    direct = None
    if reader is not None:
        out = np.empty_like(data)
        direct = best(lambda: [reader.read(np.array([i]), out[i : i + 1]) for i in range(n)])
        if not np.array_equal(out, data):
            raise SystemExit(f"{filters} {compressors}: the direct read differs")
    return {"mb_per_clip": nbytes / n / 1e6, "encode_ms_per_clip": encode * 1e3, "zarr_decode_ms_per_row": decode * 1e3,
            "direct_decode_ms_per_row": None if direct is None else direct * 1e3}


def main(store: list[str] = typer.Option(..., help="Stores to measure (repeat)."), rows: int = typer.Option(4, help="Committed rows per array."),
         repeat: int = typer.Option(3, help="Decode passes; the best counts.")) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)  # as in a loader worker
    cv2.setNumThreads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for location in store:
            root = zarr.open_group(location, mode="r")
            for set_name in sorted(root["features"].group_keys()):
                group = root[f"features/{set_name}"]
                ok = np.flatnonzero(group["done"][:].astype(bool))[:rows]
                for name, array in sorted(group.arrays()):
                    if not is_large(array.shape[1:]) or len(ok) == 0:
                        continue
                    data = np.stack([array[int(r)] for r in ok])
                    kind = set_name.rsplit("-", 1)[0]
                    for label, (filters, compressors) in candidates(array.shape[1:], str(array.dtype)).items():
                        row = {"store": Path(location).name, "array": f"{kind}/{name}", "shape": list(array.shape[1:]),
                               "dtype": str(array.dtype), "chain": label, "used": _used(label, kind, str(array.dtype)), "clips": len(ok),
                               **measure(data, filters, compressors, Path(tmp) / "a.zarr", repeat)}
                        results.append(row)
                        print(json.dumps(row), flush=True)
    write(results)


def _used(label: str, kind: str, dtype: str) -> bool:
    """Whether `label` is the chain a new feature set of `kind` gets (stores/codecs.chain_for, level 1, checksum)."""
    if np.dtype(dtype) != np.uint8:
        return label == "zstd 1"
    if label.startswith("horizontal delta ["):  # grey images: one horizontal delta in either chain
        return label == "horizontal delta [compact]"
    return label.endswith(f"[{chain_for(kind)}]")


def write(results: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    machine = {"python": platform.python_version(), "zarr": zarr.__version__, "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "load_average": os.getloadavg()}
    (RESULTS / "codecs.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    lines = ["# Store codecs: bytes per clip and decode costs (bench/codecs.py)", "",
             f"zarr {machine['zarr']}, numpy {machine['numpy']}; one thread (torch and OpenCV set to 1); {machine['cores']} cores, load average "
             f"{machine['load_average'][0]:.1f} when it ended (a shared machine, hence CPU time, not wall time: time.process_time, "
             "best of several passes). Encode = zarr's write per clip; decode per row, through plain zarr and through the loader's ShardReader. "
             "**bold**: the chain new feature sets get. Every chain but the last row's carries zstd's frame checksum.", ""]
    for store in dict.fromkeys(r["store"] for r in results):
        mine = [r for r in results if r["store"] == store]
        lines += [f"## {store}", "", "| array | chain | MB/clip | encode CPU ms/clip | plain zarr decode CPU ms/row | loader decode CPU ms/row |", "|---|---|---:|---:|---:|---:|"]
        for r in mine:
            direct = "-" if r["direct_decode_ms_per_row"] is None else f"{r['direct_decode_ms_per_row']:.1f}"
            chain = f"**{r['chain']}**" if r["used"] else r["chain"]
            lines.append(f"| {r['array']} {tuple(r['shape'])} {r['dtype']} | {chain} | {r['mb_per_clip']:.3f} | {r['encode_ms_per_clip']:.1f} | {r['zarr_decode_ms_per_row']:.1f} | {direct} |")
        total = sum(r["mb_per_clip"] for r in mine if r["used"])
        before = sum(r["mb_per_clip"] for r in mine if r["chain"].startswith("before"))
        before += sum(r["mb_per_clip"] for r in mine if r["chain"] == "zstd 1" and np.dtype(r["dtype"]) != np.uint8)
        lines += ["", f"Large arrays per clip with the chains new feature sets get: **{total:.2f} MB** (with the compact chain everywhere, "
                  f"as before: {before:.2f} MB; small per-clip arrays add a few kB).", ""]
    (RESULTS / "codecs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
