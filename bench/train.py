"""What the trainer's loader delivers, against what the codec allows: samples/s per recipe, in memory and streamed.

    .venv/bin/python bench/train.py [--quick] [--workers N] [--seconds S] [--store DIR] [--skip-decode]

Writes bench/results/train.json and train.md. On a store built on the spot from the sample corpus (48 clips,
T=16, 224 px, 512 mels; a few minutes on 2 cores), for the 2D and 3D recipes (audio, vision, concat; 3D concat
is always built on the device from faces + chunks, 2D concat also with --fuse-on-device), through
`encoders.loader.Loader` as the trainer uses it:

  uint8 delivery  - batches of 16 ready for the device, as stored (uint8): what the loader must sustain;
                    streamed = persistent spawn workers, measured after their start-up (reported apart)
  float           - their conversion to the model's float layout (`to_model_inputs`), timed separately:
                    on a GPU it runs on the device
  codec limit     - one process reading and decoding the same stored rows (zstd and the store's delta
                    filters, through ShardReader's direct path) in a tight loop, times the
                    worker count: no loader can stream faster from this store on this machine (measured
                    right before and after the streamed run, as the load of a shared machine drifts)
  memcpy ceiling  - a numpy copy of 400 MB: no in-memory loader copies rows faster
  decode          - what a notebook without a store does per sample: decode + MTCNN + mel + fuse (avstore's
                    own fast per-clip functions, so a lower bound on that cost)

With a CUDA GPU it also times training steps (bf16 autocast, the device plan) for vgg16 concat and i3d.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zarr  # noqa: E402
from zarr.storage import LocalStore  # noqa: E402

from encoders.device import plan_for, prepare_model  # noqa: E402
from encoders.loader import Loader, LoaderConfig, default_workers  # noqa: E402
from encoders.train import TrainConfig, build_model, load_data, prepare  # noqa: E402
from pipeline.audio import MelConfig  # noqa: E402
from pipeline.corpora import load_corpus  # noqa: E402
from pipeline.corpora.sample import write_sample_corpus  # noqa: E402
from pipeline.extract import extract_audio, extract_faces, fuse_clip  # noqa: E402
from pipeline.faces import FaceConfig  # noqa: E402
from pipeline.run import ExtractConfig, run_extract  # noqa: E402
from pipeline.splits import assign_splits  # noqa: E402
from stores.provenance import library_versions  # noqa: E402
from stores.torchdata import ShardReader, to_model_inputs  # noqa: E402

BATCH = 16
RECIPES = [  # (label, encoder standing for the input kind, modality, fusion, fuse on device)
    ("2D audio (S x S)", "resnet18", "audio", "none", False),
    ("2D vision (S x S x 3)", "resnet18", "vision", "none", False),
    ("2D concat (S x 2S x 3)", "resnet18", "av", "concat", False),
    ("3D audio (T x S x S)", "simple3d", "audio", "none", False),
    ("3D vision (T x S x S x 3)", "simple3d", "vision", "none", False),
    ("3D concat (T x S x 2S x 3), built on the device", "simple3d", "av", "concat", False),  # the store holds no video (issue 24)
    ("2D concat, fused on the device", "resnet18", "av", "concat", True),
]


def stored_readers(location: str, data) -> list[tuple[ShardReader, np.ndarray]]:
    """A direct shard reader and a one-row output buffer for every array the recipe reads."""
    readers = []
    for part in data.recipe.parts:
        array = zarr.open_array(LocalStore(location, read_only=True), path=f"features/{data.splits['train'].sets[part.source]}/{part.array}", mode="r")
        reader = ShardReader.for_array(array)
        assert reader is not None, f"{part.array}: not readable by the direct path"
        readers.append((reader, np.empty((1, *array.shape[1:]), np.uint8)))
    return readers


def codec_limit(readers: list[tuple[ShardReader, np.ndarray]], rows: np.ndarray, seconds: float = 2.0) -> dict:
    """Rows per second one process reads and fully decodes (zstd and the store's delta filters, every part of a
    row), in a tight loop over the same rows: the direct path of stores.torchdata.ShardReader, page-cached."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for row in rows.tolist():
            for reader, out in readers:
                reader.read(np.asarray([row]), out)
            done += 1
    return {"rows_per_second": done / (time.perf_counter() - started), "bytes_per_row": sum(out.nbytes for _, out in readers)}


def time_delivery(loader: Loader, data, name: str, min_seconds: float) -> dict:
    """uint8 batches delivered per second over whole passes, then their float conversion, timed apart."""
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    first = next(loader.batches(name, BATCH, generator=generator))  # spawns the workers when streamed
    warmup = time.perf_counter() - started
    kept = []
    for raw, _, _ in loader.batches(name, BATCH, generator=generator):  # one full pass more: shards cached, workers warm
        if len(kept) < 4:
            kept.append([r.clone() for r in raw])  # batches live in reused buffers; cloned outside the timing
    seen, passes, started = 0, 0, time.perf_counter()
    while passes < 2 or time.perf_counter() - started < min_seconds:
        for _, labels, _ in loader.batches(name, BATCH, generator=generator):
            seen += len(labels)
        passes += 1
    delivery = time.perf_counter() - started
    converted, started = 0, time.perf_counter()
    for raw in kept:
        to_model_inputs(data.recipe, raw)
        converted += len(raw[0])
    convert = time.perf_counter() - started
    del first
    return {"samples": seen, "seconds": delivery, "samples_per_second": seen / delivery, "first_batch_seconds": warmup,
            "float_samples_per_second": converted / convert}


def memcpy_ceiling(megabytes: int = 400) -> dict:
    """This machine's plain copy bandwidth (numpy, one thread, warm pages): the in-memory loader's ceiling."""
    source = np.ones(megabytes << 20, np.uint8)
    target = source.copy()
    best = 0.0
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = max(best, source.nbytes / (time.perf_counter() - started))
    return {"bytes_per_second": best, "megabytes": megabytes}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def time_decode_loader(records, faces: FaceConfig, mel: MelConfig, n: int) -> dict:
    torch.set_num_threads(1)
    extract_faces(records[0], faces, mel.max_duration)  # load MTCNN once, as a loader's worker would
    started = time.perf_counter()
    for record in records[:n]:
        f = extract_faces(record, faces, mel.max_duration)
        a = extract_audio(record, mel, faces.frames, faces.size)
        fused = fuse_clip("concat", f.arrays, a.arrays, record.clip_id, 0)
        torch.from_numpy(fused["video"]).float()
    torch.set_num_threads(os.cpu_count() or 1)
    seconds = time.perf_counter() - started
    return {"samples": n, "seconds": seconds, "samples_per_second": n / seconds}


def time_gpu_training(location: str, encoder: str, fusion: str, steps: int) -> dict:
    config = TrainConfig(encoder=encoder, modality="av", fusion=fusion, batch_size=BATCH)
    data = load_data(location, config)
    model = build_model(config, data)
    plan = plan_for(model, "cuda", compile="off")
    prepare_model(model, plan)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = Loader(data.splits, LoaderConfig(workers=default_workers()), "cuda")
    generator = torch.Generator().manual_seed(0)
    done, counted, started = 0, 0, None
    while done < steps:
        for raw, labels, _ in loader.batches("train", BATCH, generator=generator):
            with plan.autocast():
                loss = torch.nn.functional.cross_entropy(model(*prepare(data.recipe, raw, plan)).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == 3:
                torch.cuda.synchronize()
                started, counted = time.perf_counter(), 0
            elif started is not None:
                counted += len(labels)
            if done >= steps:
                break
    torch.cuda.synchronize()
    loader.close()
    return {"encoder": encoder, "fusion": fusion, "samples_per_second": counted / (time.perf_counter() - started), "device": torch.cuda.get_device_name()}


def measure(location: str, workers: int, min_seconds: float) -> list[dict]:
    rows = []
    for label, encoder, modality, fusion, on_device in RECIPES:
        config = TrainConfig(encoder=encoder, modality=modality, fusion=fusion, fuse_on_device=on_device, batch_size=BATCH)
        memory = load_data(location, TrainConfig(**{**config.__dict__, "max_memory_gb": 1e3}))  # in memory whatever the device's default
        streamed = load_data(location, TrainConfig(**{**config.__dict__, "max_memory_gb": 0.0}))
        train_rows = streamed.splits["train"].rows
        readers = stored_readers(location, streamed)
        in_memory = time_delivery(Loader(memory.splits, LoaderConfig(workers=0), "cpu"), memory, "train", min_seconds)
        before = codec_limit(readers, train_rows)
        loader = Loader(streamed.splits, LoaderConfig(workers=workers), "cpu")
        try:
            stream = time_delivery(loader, streamed, "train", min_seconds)
        finally:
            loader.close()
        after = codec_limit(readers, train_rows)  # right before and after: on a shared machine the load drifts
        limit = {"rows_per_second": (before["rows_per_second"] + after["rows_per_second"]) / 2, "bytes_per_row": before["bytes_per_row"],
                 "before": before["rows_per_second"], "after": after["rows_per_second"]}
        rows.append({"recipe": label, "in_memory": in_memory, "streamed": stream, "codec_limit_one_process": limit,
                     "codec_limit": limit["rows_per_second"] * workers, "workers": workers,
                     "streamed_fraction_of_limit": stream["samples_per_second"] / (limit["rows_per_second"] * workers),
                     "row_bytes": memory.splits["train"].row_nbytes()})
        print(f"{label}: in memory {in_memory['samples_per_second']:.0f}/s, streamed {stream['samples_per_second']:.1f}/s "
              f"= {rows[-1]['streamed_fraction_of_limit']:.2f} of the codec limit", flush=True)
    return rows


def render(results: dict) -> str:
    p, m = results["params"], results["machine"]
    ceiling = results["memcpy"]["bytes_per_second"]
    lines = [f"Loader delivery at {p['size']} px, T={p['frames']}, batch {BATCH}, {results['clips']} clips, on {m['cpus']} CPU cores "
             f"({m['processor'] or 'CPU'}); streamed with {results['workers']} persistent workers, after their start-up. "
             f"Load average (1, 5, 15 min) {results['load_before']} before, {results['load_after']} after; memcpy ceiling "
             f"(numpy copy of {results['memcpy']['megabytes']} MB) {ceiling / 1e9:.1f} GB/s.", "",
             "| recipe | in memory, uint8 /s | in memory / memcpy ceiling | streamed, uint8 /s | codec limit /s (1 process x workers) | streamed / limit | float conversion /s (CPU) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results["loaders"]:
        copied = r["in_memory"]["samples_per_second"] * r["row_bytes"] / ceiling
        lines.append(f"| {r['recipe']} | {r['in_memory']['samples_per_second']:.0f} | {copied:.2f} | {r['streamed']['samples_per_second']:.1f} | "
                     f"{r['codec_limit']:.1f} ({r['codec_limit_one_process']['rows_per_second']:.1f} x {r['workers']}) | "
                     f"{r['streamed_fraction_of_limit']:.2f} | {r['in_memory']['float_samples_per_second']:.0f} |")
    start = max(r["streamed"]["first_batch_seconds"] for r in results["loaders"])
    lines += ["", "The codec limit is the mean of one process's rate right before and right after the streamed measurement. "
              f"Streamed workers start once per run (at most {start:.1f} s to the first batch here)."]
    if "decode_per_sample" in results:
        lines[-1] += f" Decode + MTCNN + mel per sample without a store: {results['decode_per_sample']['samples_per_second']:.1f} samples/s."
    if "gpu" in results:
        lines += ["", "| GPU training (bf16, device plan) | samples/s | device |", "|---|---|---|"]
        lines += [f"| {g['encoder']} {g['fusion']} | {g['samples_per_second']:.0f} | {g['device']} |" for g in results["gpu"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="112 px, 128 mels, 24 clips")
    parser.add_argument("--workers", type=int, default=default_workers(), help="streaming loader workers (default: from the CPU count)")
    parser.add_argument("--seconds", type=float, default=4.0, help="minimum measuring time per loader")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--store", type=Path, help="keep the store here and reuse it on later runs (same options)")
    parser.add_argument("--skip-decode", action="store_true", help="leave out the decode-per-sample baseline")
    args = parser.parse_args()
    size, n_mels = (112, 128) if args.quick else (224, 512)
    faces, mel = FaceConfig(size=size), MelConfig(n_mels=n_mels)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.store or Path(tmp)
        corpus, store = folder / "corpus", str(folder / "store.zarr")
        if not corpus.exists():
            write_sample_corpus(corpus, actors=4, sentences=1 if args.quick else 2, seed=0)
        records = assign_splits(load_corpus("sample", corpus))
        if not (folder / "store.zarr").exists():
            started = time.perf_counter()
            run_extract(records, store, ExtractConfig(faces=faces, mel=mel, fusions=("concat",)), dataset="sample",
                        class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=2, progress=False)
            print(f"store of {len(records)} clips built in {time.perf_counter() - started:.0f} s", flush=True)
        results = {
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "python": platform.python_version()},
            "versions": library_versions(),
            "params": {"size": size, "n_mels": n_mels, "frames": faces.frames, "batch_size": BATCH},
            "clips": len(records),
            "workers": args.workers,
            "load_before": load_average(),
            "memcpy": memcpy_ceiling(),
            "loaders": measure(store, args.workers, args.seconds),
        }
        if not args.skip_decode:
            results["decode_per_sample"] = time_decode_loader(records, faces, mel, n=6 if args.quick else 12)
        if torch.cuda.is_available():
            results["gpu"] = [time_gpu_training(store, "vgg16", "concat", 40), time_gpu_training(store, "i3d", "concat", 40)]
        results["load_after"] = load_average()
    text = render(results)
    name = "train-quick" if args.quick else "train"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
