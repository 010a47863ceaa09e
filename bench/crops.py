#!/usr/bin/env python
"""Crop quality of the lighter detection: does detecting on 3 key frames first (all of them only when in
doubt) with the pyramid set by the expected face size give the crops the full key-frame schedule gave?

    nice -n 10 .venv/bin/python bench/crops.py        # bench/results/crops.{json,md}

On the sample corpus (96 clips) and the real GRID clips, for each clip: the boxes of today's default
FaceConfig() against the same clip with the old schedule (first_keys=0, min_face_fraction=0: MTCNN on every
4th step, the last and the middle frame, smallest face 40 px), as mean IoU over the T steps; whether a fresh
MTCNN(keep_all=False) re-detects a face in each new crop at probability >= 0.9 with its centre within 10 % of
the crop's side from the crop's centre; the detection time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.corpora import load_corpus  # noqa: E402
from pipeline.corpora.sample import write_sample_corpus  # noqa: E402
from pipeline.extract import probe_timeline  # noqa: E402
from pipeline.faces import FaceConfig, iou, track_faces  # noqa: E402

GRID_DIR = Path(os.environ.get("AVSTORE_SHARED_DATA", REPO.parent / "shared" / "data")) / "grid"
NEW = FaceConfig()
OLD = dataclasses.replace(NEW, first_keys=0, min_face_fraction=0.0)


def clips(tmp: Path) -> dict[str, list[str]]:
    write_sample_corpus(tmp / "sample", actors=8, sentences=2, seed=0)
    return {"sample": [r.video_path for r in load_corpus("sample", tmp / "sample")], "grid": [str(p) for p in sorted(GRID_DIR.glob("*.mpg"))]}


def measure(paths: list[str]) -> dict:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    checker = MTCNN(keep_all=False, device="cpu")
    ious, centred, crops, seconds = [], 0, 0, {"old": 0.0, "new": 0.0}
    for path in paths:
        from pipeline.records import ClipRecord

        media, tl = probe_timeline(ClipRecord(clip_id="c", video_path=path, label=0, emotion="ANG", speaker="s"), NEW.frames, 10.0)
        with media:
            frames = media.frames([*tl.frame_index.tolist(), tl.middle_index])
        tracks = {}
        for name, config in (("old", OLD), ("new", NEW)):
            t = time.perf_counter()
            tracks[name] = track_faces(frames[:-1], frames[-1], config)
            seconds[name] += time.perf_counter() - t
        old, new = tracks["old"], tracks["new"]
        ious.append(float(np.mean([iou(a, b[None])[0] for a, b in zip(old.boxes, new.boxes)])))
        for image in [*new.crops, new.middle]:
            box, prob = checker.detect(image)
            crops += 1
            if box is not None and prob[0] >= 0.9:
                cx, cy = (box[0][0] + box[0][2]) / 2, (box[0][1] + box[0][3]) / 2
                centred += abs(cx - image.shape[1] / 2) <= 0.1 * image.shape[1] and abs(cy - image.shape[0] / 2) <= 0.1 * image.shape[0]
    return {"clips": len(paths), "mean_iou_vs_old": round(float(np.mean(ious)), 4), "min_iou_vs_old": round(float(np.min(ious)), 4),
            "crops": crops, "redetected_centred": round(centred / crops, 4),
            "detect_ms_per_clip": {k: round(1000 * v / len(paths), 1) for k, v in seconds.items()}}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="avstore-crops-") as tmp:
        result = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "load": os.getloadavg()[0], "new": dataclasses.asdict(NEW), "old": dataclasses.asdict(OLD),
                  "corpora": {name: measure(paths) for name, paths in clips(Path(tmp)).items()}}
    lines = ["### Crop quality of the lighter detection", "", "| corpus | clips | mean IoU vs old schedule | min IoU | crops re-detected centred | detect ms/clip old -> new |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["corpora"].items():
        lines.append(f"| {name} | {r['clips']} | {r['mean_iou_vs_old']} | {r['min_iou_vs_old']} | {100 * r['redetected_centred']:.1f} % of {r['crops']} | "
                     f"{r['detect_ms_per_clip']['old']} -> {r['detect_ms_per_clip']['new']} |")
    lines += ["", f"Shared machine, load average {result['load']:.1f} at the start; times are indicative. Written by `bench/crops.py`.", ""]
    out = REPO / "bench" / "results" / "crops"
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
