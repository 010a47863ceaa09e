"""Bytes per clip and decode costs of the store's large arrays under lossless codec chains (issues 12, 24).

    python bench/codecs.py --store data/stores/sample.zarr --store data/stores/grid.zarr [--rows 16] [--repeat 5]

For every sharded array of each store, the first `--rows` committed rows are rewritten through zarr, as the
store writes them (one row per inner chunk, shards of SHARD_ROWS), into a scratch store under each candidate
chain: bytes per clip on disk, encode CPU time per clip (zarr's write), decode CPU time per row through plain
zarr (one row per call, and all rows in one call) and through the training loader's direct path
(stores.torchdata.ShardReader) where it applies, each the best of `--repeat` passes. CPU time (time.process_time,
every thread of the process), not wall time: on a shared machine other users' load stretches wall time, not the
CPU a decode takes. Every candidate must give back the exact values or the run fails.

Candidates are limited to codecs plain zarr (>= 3.1.3) reads with nothing else installed: the delta chains
(numcodecs.delta, which plain zarr undoes with numpy's serial cumsum, ~2 ns a byte), zstd alone at several
levels, blosc (shuffle or bitshuffle in C, then zstd or lz4) followed by crc32c, and no compression at all
(zarr's own per-read floor). Issue 24 asks for a 3D concat row in <= 8 ms and a 2D one in <= 1 ms through plain
zarr with the store <= 2.5 MB per clip: the scenario table adds up each store's bytes under a few choices. The
defaults since issue 24 do not store the concat video (pipeline/fuse.py built_on_read): a reader fuses the stored
faces and spectrogram chunks (fused_on_read), by a plain numpy join or by avstore's OpenCV one
(pipeline.fuse.side_by_side: numpy's broadcast of the grey chunk to RGB alone costs ~5 ms of a 3D row). The
video's rows (what storing it would cost) are measured on the video built from the store's parts.
`integrity` flips bits in chunks to show which chains plain zarr refuses when damaged. Writes
bench/results/codecs.md and codecs.json.
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
from zarr.codecs import BloscCodec, Crc32cCodec, TransposeCodec, ZstdCodec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.fuse import side_by_side as opencv_side_by_side  # noqa: E402
from stores.codecs import CHAINS, ShapedDelta, chain_for, chunk_filters, is_large  # noqa: E402
from stores.store import SHARD_ROWS  # noqa: E402
from stores.torchdata import ShardReader  # noqa: E402

RESULTS = Path(__file__).parent / "results"


FAST = ("zstd 6", "zstd 9", "zstd 1", "blosc zstd 5 bitshuffle")
"""Chains without a delta, which plain zarr decodes in C (issue 24): the store-size scenarios and the fused-on-read
timings use each of them for the arrays a trainer reads (zstd 6: the `zstd` chain of stores/codecs.py)."""


def blosc(cname: str, level: int, shuffle: str, typesize: int = 1, crc: bool = True) -> list:
    """Blosc (byte or bit shuffle, then a codec, in C) and crc32c: blosc has no checksum of its own, and a flipped
    byte decodes silently into wrong values without one (tests/test_store_codecs.py)."""
    return [BloscCodec(cname=cname, clevel=level, shuffle=shuffle, typesize=typesize), *([Crc32cCodec()] if crc else [])]


def candidates(clip_shape: tuple[int, ...], dtype: str) -> dict[str, tuple[list, list]]:
    """Name -> (filters, compressors) of one row's chunk: which axis the deltas run along, the transposes, the level;
    then chains without a delta (zstd's levels, blosc's shuffles), and no compression at all (zarr's own floor)."""
    z1, z3 = [ZstdCodec(level=1, checksum=True)], [ZstdCodec(level=3, checksum=True)]
    found = {"uncompressed (zarr's floor)": ([], []), "uncompressed, crc32c": ([], [Crc32cCodec()])}
    found.update({f"zstd {level}": ([], [ZstdCodec(level=level, checksum=True)]) for level in (1, 3, 6, 9, 12)})
    if np.dtype(dtype) == np.uint8:
        found.update({"blosc zstd 3 bitshuffle": ([], blosc("zstd", 3, "bitshuffle")), "blosc zstd 5 bitshuffle": ([], blosc("zstd", 5, "bitshuffle")),
                      "blosc zstd 5 bitshuffle, typesize 3": ([], blosc("zstd", 5, "bitshuffle", 3)),
                      "blosc zstd 3 shuffle, typesize 3": ([], blosc("zstd", 3, "shuffle", 3)), "blosc lz4 9 bitshuffle": ([], blosc("lz4", 9, "bitshuffle")),
                      "blosc lz4 1 noshuffle": ([], blosc("lz4", 1, "noshuffle")),
                      "blosc zstd 5 bitshuffle, no crc32c (unchecked)": ([], blosc("zstd", 5, "bitshuffle", crc=False))})
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
        for chain in (("compact", "quick") if channels else ["compact"]):  # the delta chains; grey arrays: one horizontal delta either way
            filters = chunk_filters(clip_shape, dtype, chain)
            label = {"quick": "colour + horizontal deltas", "compact": "colour + vertical + horizontal deltas"}[chain] if channels else "horizontal delta"
            found[f"{label} [{chain}]"] = (filters, z1)
            found[f"{label} [{chain}], zstd 3"] = (chunk_filters(clip_shape, dtype, chain), z3)
        found["before: compact, zstd 1 without checksum"] = (chunk_filters(clip_shape, dtype, "compact"), [ZstdCodec(level=1)])
    return found


def rewrite(data: np.ndarray, filters: list, compressors: list, scratch: Path) -> tuple[zarr.Array, float, int]:
    """`data`'s rows written as the store writes a large array (one row per chunk, shards of SHARD_ROWS) under a
    chain, then opened read-only: the array, the encode CPU seconds per row, the bytes on disk."""
    shutil.rmtree(scratch, ignore_errors=True)
    n, clip = data.shape[0], data.shape[1:]
    array = zarr.create_array(zarr.storage.LocalStore(scratch), shape=data.shape, dtype=data.dtype, chunks=(1, *clip),
                              shards=(SHARD_ROWS, *clip), filters=filters, compressors=compressors or None, fill_value=0)
    start = time.process_time()
    array[:] = data
    encode = (time.process_time() - start) / n
    nbytes = sum(p.stat().st_size for p in (scratch / "c").rglob("*") if p.is_file())
    return zarr.open_array(zarr.storage.LocalStore(scratch, read_only=True), mode="r"), encode, nbytes


def best_of(repeat: int, n: int, read) -> float:
    """The least CPU seconds per row of `repeat` calls of `read` (which reads n rows)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()  # CPU time of this process, all its threads: what other users' load leaves alone
        read()
        times.append((time.process_time() - start) / n)
    return min(times)


def measure(data: np.ndarray, filters: list, compressors: list, scratch: Path, repeat: int) -> dict[str, float]:
    n = data.shape[0]
    array, encode, nbytes = rewrite(data, filters, compressors, scratch)
    best = lambda read: best_of(repeat, n, read)  # noqa: E731

    back = np.empty_like(data)
    decode = best(lambda: [back.__setitem__(i, array[i]) for i in range(n)])
    if not np.array_equal(back, data):
        raise SystemExit(f"{filters} {compressors}: decoded values differ")
    batch = best(lambda: back.__setitem__(slice(None), array[:n]))  # all rows in one call: zarr decodes the chunks concurrently
    if not np.array_equal(back, data):
        raise SystemExit(f"{filters} {compressors}: decoded values differ (batch)")
    reader = ShardReader.for_array(array)
    direct = None
    if reader is not None:
        out = np.empty_like(data)
        direct = best(lambda: [reader.read(np.array([i]), out[i : i + 1]) for i in range(n)])
        if not np.array_equal(out, data):
            raise SystemExit(f"{filters} {compressors}: the direct read differs")
    return {"mb_per_clip": nbytes / n / 1e6, "encode_ms_per_clip": encode * 1e3, "zarr_decode_ms_per_row": decode * 1e3, "zarr_batch_decode_ms_per_row": batch * 1e3,
            "direct_decode_ms_per_row": None if direct is None else direct * 1e3}


def main(store: list[str] = typer.Option(..., help="Stores to measure (repeat)."), rows: int = typer.Option(4, help="Committed rows per array."),
         repeat: int = typer.Option(3, help="Decode passes; the best counts.")) -> None:
    import cv2
    import torch

    torch.set_num_threads(1)  # as in a loader worker
    cv2.setNumThreads(1)
    results, fused = [], []
    with tempfile.TemporaryDirectory() as tmp:
        checks = integrity(zarr.open_group(store[0], mode="r"), Path(tmp))
        print(json.dumps(checks), flush=True)
        for location in store:
            root = zarr.open_group(location, mode="r")
            for set_name in sorted(root["features"].group_keys()):
                group = root[f"features/{set_name}"]
                ok = np.flatnonzero(group["done"][:].astype(bool))[:rows]
                for name, array in sorted(group.arrays()):
                    if not is_large(array.shape[1:]) or len(ok) == 0:
                        continue
                    kind = set_name.rsplit("-", 1)[0]
                    for row in measure_all(np.stack([array[int(r)] for r in ok]), kind, name, location, Path(tmp), repeat):
                        results.append(row)
                        print(json.dumps(row), flush=True)
                if set_name.startswith("fusion-concat-") and "video" not in group and len(ok):  # built on read: what storing it would cost
                    for row in measure_all(concat_video(root, ok), "fusion-concat", "video", location, Path(tmp), repeat, stored=False):
                        results.append(row)
                        print(json.dumps(row), flush=True)
            for row in fused_on_read(root, rows, Path(tmp), repeat):
                fused.append({"store": Path(location).name, **row})
                print(json.dumps(fused[-1]), flush=True)
    write(results, fused, checks)


def measure_all(data: np.ndarray, kind: str, name: str, location: str, tmp: Path, repeat: int, stored: bool = True) -> list[dict]:
    """One array's rows under every candidate chain; `stored` False: an array the store does not hold (no chain is used)."""
    return [{"store": Path(location).name, "array": f"{kind}/{name}", "shape": list(data.shape[1:]), "dtype": str(data.dtype), "chain": label,
             "used": stored and _used(label, kind, name, str(data.dtype)), "clips": len(data), **measure(data, filters, compressors, tmp / "a.zarr", repeat)}
            for label, (filters, compressors) in candidates(data.shape[1:], str(data.dtype)).items()]


def concat_video(root: zarr.Group, rows: np.ndarray) -> np.ndarray:
    """The concat fusion's video of `rows` from the stored faces and chunks, as every reader builds it (a store made
    since issue 24 does not hold it: pipeline/fuse.py FusionSpec.built_on_read)."""
    sets = {name.rsplit("-", 1)[0]: root[f"features/{name}"] for name in root["features"].group_keys()}
    return side_by_side(np.stack([sets["faces"]["crops"][int(r)] for r in rows]), np.stack([sets["audio"]["chunks"][int(r)] for r in rows]))


def side_by_side(face: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """The concat fusion in plain numpy: the face left, the grey spectrogram as RGB right (two copies into one
    array; np.concatenate with np.repeat makes a temporary and costs ~1.5x)."""
    out = np.empty((*face.shape[:-2], face.shape[-2] + grey.shape[-1], 3), face.dtype)
    out[..., : face.shape[-2], :] = face
    out[..., face.shape[-2] :, :] = grey[..., None]
    return out


def fused_on_read(root: zarr.Group, rows: int, tmp: Path, repeat: int) -> list[dict]:
    """The lever of not storing the concat fusion: a reader fuses the stored faces and spectrograms itself.

    For each chain of FAST, faces/crops + audio/chunks (3D) and faces/middle + audio/spec (2D) are rewritten under
    it; CPU ms per row through plain zarr to read both parts (what a loader fusing on the device pays on the CPU),
    and to read and fuse them in numpy, one row per call and all rows in one call. The result must equal the
    stored fusion exactly (where the store holds it; otherwise np.concatenate with np.repeat, the fusion's
    definition, written independently of both joins)."""
    sets = {name.rsplit("-", 1)[0]: root[f"features/{name}"] for name in root["features"].group_keys()}
    if not {"faces", "audio", "fusion-concat"} <= set(sets):
        return []
    ok = np.flatnonzero(sets["fusion-concat"]["done"][:].astype(bool))[:rows]
    found = []
    for fusion, (face, grey) in {"video": ("crops", "chunks"), "image": ("middle", "spec")}.items():
        parts = [np.stack([sets[s][a][int(r)] for r in ok]) for s, a in (("faces", face), ("audio", grey))]
        if fusion in sets["fusion-concat"]:
            stored = np.stack([sets["fusion-concat"][fusion][int(r)] for r in ok])
        else:
            stored = np.concatenate([parts[0], np.repeat(parts[1][..., None], 3, axis=-1)], axis=-2)
        if not np.array_equal(side_by_side(*parts), stored):
            raise SystemExit(f"fusion-concat/{fusion} is not faces/{face} beside audio/{grey}: the lever does not apply")
        for label in FAST:
            made = [rewrite(p, *candidates(p.shape[1:], str(p.dtype))[label], tmp / f"part{k}.zarr") for k, p in enumerate(parts)]
            (f, g), n = [m[0] for m in made], len(ok)
            out = np.empty_like(stored)
            single = best_of(repeat, n, lambda: [out.__setitem__(i, side_by_side(f[i], g[i])) for i in range(n)])
            batch = best_of(repeat, n, lambda: out.__setitem__(slice(None), side_by_side(f[:n], g[:n])))
            if not np.array_equal(out, stored):
                raise SystemExit(f"{label}: fused values differ")
            out[:] = 0  # avstore's own join (OpenCV), what a reader through avstore's library or a loader would use
            joined = best_of(repeat, n, lambda: [out.__setitem__(i, opencv_side_by_side(f[i], g[i])) for i in range(n)])
            joined_batch = best_of(repeat, n, lambda: out.__setitem__(slice(None), opencv_side_by_side(f[:n], g[:n])))
            if not np.array_equal(out, stored):
                raise SystemExit(f"{label}: fused values differ (OpenCV join)")
            reads = best_of(repeat, n, lambda: [(f[i], g[i]) for i in range(n)])
            found.append({"fusion": f"concat/{fusion}", "parts": f"faces/{face} + audio/{grey}", "chain": label, "clips": n,
                          "mb_per_clip_parts": sum(m[2] for m in made) / n / 1e6, "zarr_read_parts_ms_per_row": reads * 1e3,
                          "zarr_read_and_fuse_ms_per_row": single * 1e3, "zarr_batch_read_and_fuse_ms_per_row": batch * 1e3,
                          "zarr_read_and_opencv_fuse_ms_per_row": joined * 1e3, "zarr_batch_read_and_opencv_fuse_ms_per_row": joined_batch * 1e3})
    return found


def _used(label: str, kind: str, name: str, dtype: str) -> bool:
    """Whether `label` is the chain array `name` of a new feature set of `kind` gets (stores/codecs.chain_for)."""
    chain = chain_for(kind, name)
    if chain == "zstd":
        return label == f"zstd {CHAINS['zstd'].zstd_level}"
    if chain == "raw":
        return label == "uncompressed, crc32c"
    if np.dtype(dtype) != np.uint8:
        return label == "zstd 1"
    if label.startswith("horizontal delta ["):  # grey images: one horizontal delta in either chain
        return label == "horizontal delta [compact]"
    return label.endswith(f"[{chain}]")


def _before(array: str, dtype: str, shape: list[int]) -> str:
    """The chain the array had before this round (issue 24's first commits): compact, fused arrays quick."""
    if np.dtype(dtype) != np.uint8:
        return "zstd 1"
    if len(shape) < 3 or shape[-1] > 8:
        return "horizontal delta [compact]"
    return "colour + horizontal deltas [quick]" if array.startswith("fusion-") else "colour + vertical + horizontal deltas [compact]"


TARGETS = {"mb": 2.5, "3d": 8.0, "2d": 1.0}
"""Issue 24: a 3D concat row in <= 8 CPU-ms and a 2D one in <= 1 through plain zarr, the store <= 2.5 MB per clip."""


def scenarios(mine: list[dict], fused: list[dict]) -> list[dict]:
    """Per-clip bytes of the large arrays and plain-zarr CPU ms of a concat row (one row per call / per row of a batch)
    for: the chains new feature sets get (the video built on read, avstore's join); the chains before (the video
    stored under the quick deltas); the video stored besides, under a FAST chain; and the video on read with faces
    and audio under each FAST chain, joined by numpy or by avstore (fused_on_read)."""
    by = {(r["array"], r["chain"]): r for r in mine}
    stored = list(dict.fromkeys(r["array"] for r in mine if r["used"]))
    used = {a: next(r for r in mine if r["array"] == a and r["used"]) for a in stored}
    now_chain = f"zstd {CHAINS['zstd'].zstd_level}"
    on_read_now = next((_with_opencv_join(f) for f in fused if f["chain"] == now_chain and f["fusion"] == "concat/video"), None)
    rows = [{"scenario": f"now: chain_for's chains (faces/crops and audio/chunks {now_chain}, the video joined on read by avstore, "
                         "fused image uncompressed with crc32c, the rest compact)", "mb": sum(r["mb_per_clip"] for r in used.values()),
             "3d": [on_read_now], "2d": [used.get("fusion-concat/image")]}]
    before = {a: by.get((a, _before(a, r["dtype"], r["shape"]))) for a, r in {r["array"]: r for r in mine}.items()}
    if all(before.values()):
        rows.append({"scenario": "before: delta chains, the video stored (faces and audio compact, fused quick)",
                     "mb": sum(r["mb_per_clip"] for r in before.values()), "3d": [before.get("fusion-concat/video")], "2d": [before.get("fusion-concat/image")]})
    for label in FAST:
        video = by.get(("fusion-concat/video", label))
        if video is not None:
            rows.append({"scenario": f"the video stored too, under {label} (the rest as now)", "mb": sum(r["mb_per_clip"] for r in used.values()) + video["mb_per_clip"],
                         "3d": [video], "2d": [used.get("fusion-concat/image")]})
    for join in ("numpy", "OpenCV"):  # numpy: what a reader writes; OpenCV: avstore's pipeline.fuse.side_by_side
        for label in FAST:
            pick = {a: by.get((a, label), used[a]) if a in ("faces/crops", "audio/chunks") else used[a] for a in stored}
            on_read = {f["fusion"]: f if join == "numpy" else _with_opencv_join(f) for f in fused if f["chain"] == label}
            rows.append({"scenario": f"the video on read ({join} join), faces/crops and audio/chunks {label} (the rest as now)",
                         "mb": sum(r["mb_per_clip"] for r in pick.values()), "3d": [on_read.get("concat/video")], "2d": [used.get("fusion-concat/image")]})
    return rows


def _with_opencv_join(found: dict) -> dict:
    """A fused_on_read row whose read-and-fuse figures are those of avstore's OpenCV join."""
    return {**found, "zarr_read_and_fuse_ms_per_row": found["zarr_read_and_opencv_fuse_ms_per_row"],
            "zarr_batch_read_and_fuse_ms_per_row": found["zarr_batch_read_and_opencv_fuse_ms_per_row"]}


def _ms(found: list[dict | None]) -> str:
    r = found[0]
    if r is None:
        return "-"
    if "zarr_decode_ms_per_row" in r:
        return f"{r['zarr_decode_ms_per_row']:.1f} / {r['zarr_batch_decode_ms_per_row']:.1f}"
    return f"{r['zarr_read_and_fuse_ms_per_row']:.1f} / {r['zarr_batch_read_and_fuse_ms_per_row']:.1f} (parts alone {r['zarr_read_parts_ms_per_row']:.1f})"


def _meets(row: dict) -> str:
    def single(found):
        r = found[0]
        return None if r is None else r.get("zarr_decode_ms_per_row", r.get("zarr_read_and_fuse_ms_per_row"))
    d3, d2 = single(row["3d"]), single(row["2d"])
    ok = [row["mb"] <= TARGETS["mb"], d3 is not None and d3 <= TARGETS["3d"], d2 is not None and d2 <= TARGETS["2d"]]
    return " ".join(f"{name} {'yes' if good else 'no'}" for name, good in zip(("size", "3D", "2D"), ok))


INTEGRITY = ("uncompressed (zarr's floor)", "uncompressed, crc32c", "zstd 1", "blosc zstd 5 bitshuffle, no crc32c (unchecked)",
             "blosc zstd 5 bitshuffle", "blosc lz4 1 noshuffle")


def integrity(root: zarr.Group, tmp: Path, flips: int = 40) -> list[dict]:
    """Whether plain zarr refuses a damaged chunk: one random bit flipped in the first row's chunk (its data, not
    the shard index, which has its own crc32c), `flips` times per chain, on faces/middle; counts of reads that
    raised and that returned wrong values silently."""
    faces = next(root[f"features/{g}"] for g in root["features"].group_keys() if g.startswith("faces-"))
    values = np.stack([faces["middle"][i] for i in range(2)])
    rng, found = np.random.default_rng(0), []
    for label in INTEGRITY:
        raised = silent = 0
        for _ in range(flips):
            array, _, _ = rewrite(values, *candidates(values.shape[1:], str(values.dtype))[label], tmp / "flip.zarr")
            shard = next(p for p in (tmp / "flip.zarr" / "c").rglob("*") if p.is_file())
            data = bytearray(shard.read_bytes())
            index = np.frombuffer(bytes(data[-(SHARD_ROWS * 16 + 4) : -4]), "<u8").reshape(-1, 2)
            first = int(index[0, 1])  # the first row's chunk: its length, from the shard's index (at its end)
            k = int(rng.integers(0, first))
            data[k] ^= 1 << int(rng.integers(0, 8))
            shard.write_bytes(bytes(data))
            try:
                silent += not np.array_equal(zarr.open_array(tmp / "flip.zarr", mode="r")[0], values[0])
            except Exception:  # zstd's checksum, crc32c, or a frame that no longer parses
                raised += 1
        found.append({"chain": label, "flips": flips, "raised": raised, "silently_wrong": silent})
    return found


def write(results: list[dict], fused: list[dict], checks: list[dict]) -> None:
    RESULTS.mkdir(exist_ok=True)
    machine = {"python": platform.python_version(), "zarr": zarr.__version__, "numpy": np.__version__, "cpu": platform.processor() or platform.machine(),
               "cores": os.cpu_count(), "load_average": os.getloadavg()}
    (RESULTS / "codecs.json").write_text(json.dumps({"machine": machine, "results": results, "fused_on_read": fused, "integrity": checks}, indent=1))
    lines = ["# Store codecs: bytes per clip and decode costs (bench/codecs.py)", "",
             f"zarr {machine['zarr']}, numpy {machine['numpy']}; one thread (torch and OpenCV set to 1); {machine['cores']} cores, load average "
             f"{machine['load_average'][0]:.1f} when it ended (a shared machine, hence CPU time, not wall time: time.process_time, "
             "best of several passes). Encode = zarr's write per clip; decode per row through plain zarr (`zarr.open_array(...)[i]`, one row "
             "per call; batch: all the rows in one call, per row) and through the loader's ShardReader (`-`: a chain it leaves to zarr). "
             "**bold**: the chain new feature sets get. Every chain carries a checksum (zstd's frame checksum; crc32c after blosc) but the "
             "uncompressed floor, the `before` row and the one marked unchecked.", ""]
    for store in dict.fromkeys(r["store"] for r in results):
        mine = [r for r in results if r["store"] == store]
        lines += [f"## {store}", "", f"Issue 24's targets through plain zarr: a 3D concat row <= {TARGETS['3d']:g} CPU-ms, a 2D one <= {TARGETS['2d']:g}, "
                  f"the large arrays <= {TARGETS['mb']:g} MB per clip. 3D and 2D columns: one row per call / per row of a batch.", "",
                  "| scenario | MB/clip | 3D concat row ms | 2D concat row ms | targets met (one row per call) |", "|---|---:|---|---|---|"]
        for row in scenarios(mine, [f for f in fused if f["store"] == store]):
            lines.append(f"| {row['scenario']} | {row['mb']:.2f} | {_ms(row['3d'])} | {_ms(row['2d'])} | {_meets(row)} |")
        lines += ["", "| array | chain | MB/clip | encode CPU ms/clip | plain zarr decode CPU ms/row | plain zarr batch CPU ms/row | loader decode CPU ms/row |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in mine:
            direct = "-" if r["direct_decode_ms_per_row"] is None else f"{r['direct_decode_ms_per_row']:.1f}"
            chain = f"**{r['chain']}**" if r["used"] else r["chain"]
            lines.append(f"| {r['array']} {tuple(r['shape'])} {r['dtype']} | {chain} | {r['mb_per_clip']:.3f} | {r['encode_ms_per_clip']:.1f} | "
                         f"{r['zarr_decode_ms_per_row']:.2f} | {r['zarr_batch_decode_ms_per_row']:.2f} | {direct} |")
        total = sum(r["mb_per_clip"] for r in mine if r["used"])
        lines += ["", f"Large arrays per clip with the chains new feature sets get: **{total:.2f} MB** (the concat video is not stored: "
                  "its rows above are what storing it would cost; small per-clip arrays add a few kB).", ""]
        mine_fused = [f for f in fused if f["store"] == store]
        if mine_fused:
            lines += ["Fused on read: plain zarr reads the parts, numpy puts them side by side (`side_by_side`); the result "
                      "equals the fusion exactly. CPU ms per row.", "",
                      "| fusion | parts | chain | parts MB/clip | read parts | read + fuse, one row per call | read + fuse, batch per row | "
                      "read + avstore's OpenCV join (pipeline.fuse.side_by_side), one row per call |",
                      "|---|---|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {f['fusion']} | {f['parts']} | {f['chain']} | {f['mb_per_clip_parts']:.3f} | {f['zarr_read_parts_ms_per_row']:.2f} | "
                      f"{f['zarr_read_and_fuse_ms_per_row']:.2f} | {f['zarr_batch_read_and_fuse_ms_per_row']:.2f} | "
                      f"{f['zarr_read_and_opencv_fuse_ms_per_row']:.2f} |" for f in mine_fused]
            lines.append("")
    lines += ["## A damaged chunk", "", f"One random bit flipped in a chunk of faces/middle ({checks[0]['flips']} times per chain), then read "
              "through plain zarr: blosc has no checksum of its own.", "", "| chain | raised | silently wrong values |", "|---|---:|---:|"]
    lines += [f"| {c['chain']} | {c['raised']} | {c['silently_wrong']} |" for c in checks]
    (RESULTS / "codecs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    typer.run(main)
