"""What the store buys a trainer: samples per second of the store loader vs. decoding + MTCNN per sample.

    .venv/bin/python bench/train.py [--quick]

Writes bench/results/train.json and train.md. Two data paths feed the same concat-fusion 3D input:
  store   - `encoders.train.batches` over a split loaded from the store (in memory, and streamed by row)
  decode  - what a notebook without a store does per sample: probe + decode T frames, MTCNN, crop,
            decode audio, log-mel, chunks, fuse (avstore's own fast per-clip functions, so this is a
            lower bound on what such a loader costs)
With a CUDA GPU it also times training steps (bf16 autocast, channels-last) for vgg16 concat and i3d.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from encoders.train import TrainConfig, batches, load_data, prepare  # noqa: E402
from pipeline.audio import MelConfig  # noqa: E402
from pipeline.corpora import load_corpus  # noqa: E402
from pipeline.corpora.sample import write_sample_corpus  # noqa: E402
from pipeline.extract import extract_audio, extract_faces, fuse_clip  # noqa: E402
from pipeline.faces import FaceConfig  # noqa: E402
from pipeline.run import ExtractConfig, run_extract  # noqa: E402
from pipeline.splits import assign_splits  # noqa: E402
from stores.provenance import library_versions  # noqa: E402


def time_store_loader(location: str, config: TrainConfig, passes: int) -> dict:
    data = load_data(location, config)
    split = data.splits["train"]
    generator = torch.Generator().manual_seed(0)
    started, seen = time.perf_counter(), 0
    for _ in range(passes):
        for raw, labels in batches(split, config.batch_size, shuffle=True, generator=generator, device="cpu"):
            prepare(data.recipe, raw, "cpu")
            seen += len(labels)
    seconds = time.perf_counter() - started
    return {"samples": seen, "seconds": seconds, "samples_per_second": seen / seconds, "in_memory": split.memory is not None}


def time_decode_loader(records, faces: FaceConfig, mel: MelConfig, n: int) -> dict:
    torch.set_num_threads(1)
    extract_faces(records[0], faces, mel.max_duration)  # load MTCNN once, as a loader's worker would
    started = time.perf_counter()
    for record in records[:n]:
        f = extract_faces(record, faces, mel.max_duration)
        a = extract_audio(record, mel, faces.frames, faces.size)
        fused = fuse_clip("concat", f.arrays, a.arrays, record.clip_id, 0)
        torch.from_numpy(fused["video"]).float()
    seconds = time.perf_counter() - started
    return {"samples": n, "seconds": seconds, "samples_per_second": n / seconds}


def time_gpu_training(location: str, encoder: str, fusion: str, steps: int) -> dict:
    from encoders.registry import get_model

    config = TrainConfig(encoder=encoder, modality="av", fusion=fusion, batch_size=16)
    data = load_data(location, config)
    model = get_model(encoder, num_classes=6, in_channels=3, image_size=data.image_size, frames=data.frames).cuda().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    done, started = 0, None
    while done < steps:
        for raw, labels in batches(data.splits["train"], 16, shuffle=True, generator=generator, device="cuda"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(*prepare(data.recipe, raw, "cuda")).float(), labels)
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
    seconds = time.perf_counter() - started
    return {"encoder": encoder, "fusion": fusion, "samples_per_second": counted / seconds, "device": torch.cuda.get_device_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="112 px, 128 mels, fewer clips")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    size, n_mels = (112, 128) if args.quick else (224, 512)
    faces, mel = FaceConfig(size=size), MelConfig(n_mels=n_mels)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, store = Path(tmp) / "corpus", str(Path(tmp) / "store.zarr")
        write_sample_corpus(corpus, actors=8, sentences=2, seed=0)
        records = assign_splits(load_corpus("sample", corpus))
        run_extract(records, store, ExtractConfig(faces=faces, mel=mel, fusions=("concat",)), dataset="sample",
                    class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=2, progress=False)
        video = TrainConfig(encoder="i3d", modality="av", fusion="concat", batch_size=16)
        image = TrainConfig(encoder="vgg16", modality="av", fusion="concat", batch_size=16)
        results = {
            "machine": {"cpus": __import__("os").cpu_count(), "processor": platform.processor(), "python": platform.python_version()},
            "versions": library_versions(),
            "params": {"size": size, "n_mels": n_mels, "frames": faces.frames, "batch_size": 16},
            "store_in_memory_video": time_store_loader(store, video, passes=3),
            "store_in_memory_image": time_store_loader(store, image, passes=3),
            "store_streamed_video": time_store_loader(store, TrainConfig(encoder="i3d", modality="av", fusion="concat", batch_size=16, max_memory_gb=0.0), passes=1),
            "decode_per_sample": time_decode_loader(records, faces, mel, n=12 if args.quick else 24),
        }
        if torch.cuda.is_available():
            results["gpu"] = [time_gpu_training(store, "vgg16", "concat", 40), time_gpu_training(store, "i3d", "concat", 40)]
    decode = results["decode_per_sample"]["samples_per_second"]
    rows = [
        ("store, in memory (3D concat: T x S x 2S)", results["store_in_memory_video"]),
        ("store, in memory (2D concat: S x 2S)", results["store_in_memory_image"]),
        ("store, streamed by row (3D concat, 2 spawn workers)", results["store_streamed_video"]),
        ("decode + MTCNN + mel per sample (no store)", results["decode_per_sample"]),
    ]
    lines = [f"Data path to a {size}px concat input, batch 16, on {results['machine']['cpus']} CPU cores:", "",
             "| loader | samples | seconds | samples/s | vs. decoding |", "|---|---|---|---|---|"]
    for name, r in rows:
        lines.append(f"| {name} | {r['samples']} | {r['seconds']:.2f} | {r['samples_per_second']:.1f} | {r['samples_per_second'] / decode:.0f}x |")
    if "gpu" in results:
        lines += ["", "| GPU training (bf16, channels-last) | samples/s | device |", "|---|---|---|"]
        lines += [f"| {g['encoder']} {g['fusion']} | {g['samples_per_second']:.0f} | {g['device']} |" for g in results["gpu"]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(results, indent=2))
    (args.out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
