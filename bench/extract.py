#!/usr/bin/env python
"""What "fast" means for extraction, measured: clips per second of avstore's real extraction against the
seed code's way (decode every frame, MTCNN on every full-resolution frame), and what that means for CREMA-D.

    .venv/bin/python bench/extract.py            # full run (6-8 min on 2 shared cores): bench/results/extract.{json,md}
    .venv/bin/python bench/extract.py --quick    # 18 sample clips, small baseline (3-4 min): bench/results/extract-quick.{json,md}
    .venv/bin/python bench/extract.py --from-json bench/results/extract.json   # re-render the Markdown only

Measured, each into a fresh temporary store, at the study's defaults (FaceConfig(): T=16, 224 px;
MelConfig(): 512 mels; fusion concat):

* avstore `run_extract(workers=1|2)` "cold": exactly what `cli.py extract` does, a local Dask cluster started
  and stopped inside the call. The wall time includes cluster start-up, the workers importing torch and
  loading MTCNN, store creation, fusion and checksums. The time of every completed clip is recorded (by
  wrapping `pipeline.run.compute`, without changing it), which separates the start-up (until the first
  clip completes) from the steady-state rate (completions after the first one).
* avstore "warm": a cluster with the same settings is started beforehand and every worker runs one clip
  (imports, MTCNN loaded); then `run_extract(scheduler=...)` on all clips is timed. This is the steady-state
  rate including store writes and fusion, and the rate the speed-up and the projection use.
* avstore in-process (`workers=0`, with --in-process): the same tasks without Dask, to see Dask's cost.
* baseline "as the seed code did it", one process, torch.set_num_threads(1): probe, decode every frame
  (ffmpeg rawvideo pipe of the whole clip), `facenet_pytorch.MTCNN(keep_all=False)` called on every
  full-resolution frame (detection and the 224 px face crop), 16 evenly spaced crops kept; audio decoded
  and a librosa mel spectrogram with the same parameters (22,050 Hz, n_fft 2048, hop 512, 512 mels, dB
  relative to the maximum, floor -80 dB) cut into 16 equal chunks resized to 224x224 (the seed's way).
  Measured on a subset, since it is ~15x slower.
* a per-stage profile of avstore's task (in-process, 1 thread) over a few clips: where a clip's time goes.

Timings depend on the machine and on whatever else runs on it; the JSON records the load average around
each measurement. These numbers never gate tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import csv  # noqa: E402
import functools  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import asdict  # noqa: E402

import numpy as np  # noqa: E402

import pipeline.extract as extract_mod  # noqa: E402
import pipeline.faces as faces_mod  # noqa: E402
import pipeline.run as run_mod  # noqa: E402
from pipeline.audio import MelConfig, MelExtractor  # noqa: E402
from pipeline.corpora import load_corpus  # noqa: E402
from pipeline.corpora.sample import write_sample_corpus  # noqa: E402
from pipeline.faces import FaceConfig  # noqa: E402
from pipeline.media import decode_audio, ffmpeg_exe, probe  # noqa: E402
from pipeline.records import CREMA_D_EMOTIONS, ClipRecord  # noqa: E402
from pipeline.run import ExtractConfig, process_clip, run_extract  # noqa: E402
from pipeline.splits import assign_splits  # noqa: E402

GRID_DIR = REPO.parent / "shared" / "data" / "grid"
CREMA_D_CLIPS = 7442
CREMA_D_FORMAT = "mean 2.5 s, 30 fps, 480x360 FLV; the sample corpus has the same format, 2-3 s clips"
PACKAGES = (
    "torch", "facenet-pytorch", "librosa", "numpy", "scipy", "dask", "distributed", "zarr",
    "opencv-python-headless", "ffmpeg-python", "imageio-ffmpeg",
)  # fmt: skip

log = logging.getLogger("bench.extract")


# ---------------------------------------------------------------------------------------------- context


def machine() -> dict:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "processor": platform.processor(),
        "cpu_model": model,
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": "none used (device cpu)",
    }


def versions() -> dict:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    try:
        first = subprocess.run([ffmpeg_exe(), "-version"], capture_output=True, text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        first = "unknown"
    found["ffmpeg"] = f"{first} ({ffmpeg_exe()})"
    return found


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def own_cpu_s() -> float:
    """CPU-seconds used by this process and every descendant, live or finished: this process and its reaped
    children (getrusage), plus each live descendant with its own reaped children (/proc/<pid>/stat)."""
    import resource

    total = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN) for f in ("ru_utime", "ru_stime"))
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(x) for x in fields[11:15]) / TICK  # utime stime cutime cstime
    me = os.getpid()
    for pid in times:
        ancestor = parents.get(pid)
        while ancestor and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor == me:
            total += times[pid]
    return total


class OtherLoad:
    """How many cores other jobs on this machine used while a measurement ran (they share the 2 cores)."""

    def __enter__(self):
        self.wall, self.busy, self.own = time.perf_counter(), machine_busy_s(), own_cpu_s()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        busy, own = machine_busy_s() - self.busy, own_cpu_s() - self.own
        self.result = {"own_cpu_s": round(own, 2), "own_cores": round(own / wall, 2), "other_cores": round(max(0.0, busy - own) / wall, 2)}
        return False


def wait_for_quiet(max_wait: float, threshold: float = 0.3) -> dict:
    """Wait (at most max_wait s) until other jobs use less than `threshold` cores, sampled over 2 s."""
    started = time.perf_counter()
    while True:
        busy = machine_busy_s()
        time.sleep(2.0)
        others = (machine_busy_s() - busy) / 2.0
        waited = time.perf_counter() - started
        if others < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "other_cores_before": round(others, 2)}


# ---------------------------------------------------------------------------------------------- corpora


def sample_records(root: Path, actors: int, sentences: int) -> list[ClipRecord]:
    write_sample_corpus(root, actors=actors, sentences=sentences, seed=0)
    return assign_splits(load_corpus("sample", root), seed=0)


def grid_records(root: Path) -> list[ClipRecord]:
    """The six GRID clips through the `manifest` corpus; three speakers so actor-disjoint splits exist."""
    videos = sorted(GRID_DIR.glob("*.mpg"))
    if not videos:
        raise SystemExit(f"no GRID clips in {GRID_DIR}; they are needed for the real-media measurements")
    root.mkdir(parents=True, exist_ok=True)
    manifest = root / "grid.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "speaker"])
        for k, video in enumerate(videos):
            writer.writerow([str(video), CREMA_D_EMOTIONS[k % len(CREMA_D_EMOTIONS)], f"s{k // 2 + 1}"])
    return assign_splits(load_corpus("manifest", manifest), seed=0)


# ---------------------------------------------------------------------------------------------- avstore


class Clock:
    """Timestamps of one run_extract call, taken by wrapping pipeline.run's functions (no pipeline edits)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.compute_start: float | None = None
        self.compute_end: float | None = None
        self.completed: list[float] = []
        self.flush_s = 0.0
        self.fusion_s = 0.0

    def install(self) -> None:
        original_compute, original_flush, original_fusion = run_mod.compute, run_mod.flush, run_mod.materialise_fusion

        def compute(*args, **kwargs):
            self.compute_start = time.perf_counter()
            for item in original_compute(*args, **kwargs):
                self.completed.append(time.perf_counter())
                yield item
            self.compute_end = time.perf_counter()

        def flush(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original_flush(*args, **kwargs)
            finally:
                self.flush_s += time.perf_counter() - started

        def materialise_fusion(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original_fusion(*args, **kwargs)
            finally:
                self.fusion_s += time.perf_counter() - started

        run_mod.compute, run_mod.flush, run_mod.materialise_fusion = compute, flush, materialise_fusion


CLOCK = Clock()


def store_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed_extract(records, store: Path, config: ExtractConfig, *, workers: int, scheduler: str | None = None) -> dict:
    if store.exists():
        raise RuntimeError(f"{store} exists; every measurement needs a fresh store")
    CLOCK.reset()
    load_before = load()
    with OtherLoad() as other:
        started = time.perf_counter()
        summary = run_extract(
            records, store, config, dataset="bench", class_names=list(CREMA_D_EMOTIONS), split_seed=0,
            workers=workers, scheduler=scheduler, progress=False,
        )
        finished = time.perf_counter()
    done = CLOCK.completed
    n = len(done)
    result = {
        "clips": len(records),
        "computed": summary.computed,
        "status": dict(sorted(summary.status.items())),
        "failures": summary.failures,
        "seconds": round(finished - started, 3),
        "clips_per_s": round(len(records) / (finished - started), 3),
        "phases": {
            "setup_s": round(CLOCK.compute_start - started, 3) if CLOCK.compute_start else None,
            "to_first_clip_s": round(done[0] - CLOCK.compute_start, 3) if n else None,
            "first_to_last_clip_s": round(done[-1] - done[0], 3) if n > 1 else None,
            "after_last_clip_s": round(finished - done[-1], 3) if n else None,
            "store_flush_s": round(CLOCK.flush_s, 3),
            "fusion_s": round(CLOCK.fusion_s, 3),
        },
        "steady_clips_per_s_from_first_completion": round((n - 1) / (done[-1] - done[0]), 3) if n > 1 and done[-1] > done[0] else None,
        "completion_offsets_s": [round(t - started, 3) for t in done],
        "store_mb": round(store_bytes(store) / 1e6, 1),
        "load_before": load_before,
        "load_after": load(),
        "cpu_cores_used": other.result,
    }
    shutil.rmtree(store, ignore_errors=True)
    not_ok = {k: v for k, v in summary.status.items() if not k.endswith(":ok")}
    if not_ok:
        log.warning("not every clip was ok: %s", not_ok)
    return result


def warm_extract(records, store: Path, config: ExtractConfig, *, workers: int) -> dict:
    """Start a cluster like run_extract's, load MTCNN in every worker by running one clip there, then time
    run_extract against it: the steady state, store writes and fusion included, start-up excluded."""
    from dask.distributed import Client, LocalCluster

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    started = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR)
    try:
        cluster_s = time.perf_counter() - started
        warm_started = time.perf_counter()
        with Client(cluster) as client:
            client.wait_for_workers(workers)
            client.run(process_clip, records[0], config, True, True, "cpu")  # on every worker: imports, MTCNN, filterbank
        warm_s = time.perf_counter() - warm_started
        result = timed_extract(records, store, config, workers=workers, scheduler=cluster.scheduler_address)
    finally:
        cluster.close()
    result["cluster_start_s"] = round(cluster_s, 3)
    result["worker_warm_up_s"] = round(warm_s, 3)
    return result


# ---------------------------------------------------------------------------------------------- baseline


def decode_all_frames(path: str, width: int, height: int) -> np.ndarray:
    """Every frame of the clip as RGB, through one ffmpeg rawvideo pipe (the seed read them all)."""
    out = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", path, "-map", "0:v:0",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    frame_bytes = width * height * 3
    return np.frombuffer(out[: len(out) // frame_bytes * frame_bytes], np.uint8).reshape(-1, height, width, 3)


def baseline_clip(record: ClipRecord, mtcnn, mel: MelConfig, steps: int, size: int) -> dict:
    import cv2
    import librosa

    timings = {}
    t = time.perf_counter()
    info = probe(record.video_path)
    frames = decode_all_frames(record.video_path, info.width, info.height)
    timings["decode_s"] = time.perf_counter() - t

    t = time.perf_counter()
    faces = [mtcnn(frame) for frame in frames]  # full resolution, every frame, one face per frame
    timings["mtcnn_s"] = time.perf_counter() - t
    keep = np.linspace(0, len(frames) - 1, steps).round().astype(int)
    crops = np.stack([faces[i].permute(1, 2, 0).clamp(0, 255).byte().numpy() if faces[i] is not None else np.zeros((size, size, 3), np.uint8) for i in keep])

    t = time.perf_counter()
    audio = decode_audio(record.audio_path or record.video_path, mel.sample_rate)
    power = librosa.feature.melspectrogram(y=audio, sr=mel.sample_rate, n_fft=mel.n_fft, hop_length=mel.hop_length, n_mels=mel.n_mels, power=mel.power)
    db = librosa.power_to_db(power, ref=np.max, top_db=mel.top_db)
    image = lambda part: cv2.resize(((np.flipud(part) + mel.top_db) * 255 / mel.top_db).astype(np.float32), (size, size)).astype(np.uint8)  # noqa: E731
    chunks = np.stack([image(part) for part in np.array_split(db, steps, axis=1)])
    spec = image(db)
    timings["audio_s"] = time.perf_counter() - t
    return {
        "frames": len(frames),
        "faces_found": sum(f is not None for f in faces),
        "shapes": [list(crops.shape), list(chunks.shape), list(spec.shape)],
        **{k: round(v, 4) for k, v in timings.items()},
    }


def measure_baseline(records: list[ClipRecord], faces: FaceConfig, mel: MelConfig) -> dict:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    mtcnn = MTCNN(keep_all=False, image_size=faces.size, margin=0, post_process=False, device=torch.device("cpu"))
    baseline_clip(records[0], mtcnn, mel, faces.frames, faces.size)  # warm-up, untimed (first-call overhead)
    load_before = load()
    per_clip = []
    with OtherLoad() as other:
        started = time.perf_counter()
        for record in records:
            t = time.perf_counter()
            one = baseline_clip(record, mtcnn, mel, faces.frames, faces.size)
            one["clip_id"], one["seconds"] = record.clip_id, round(time.perf_counter() - t, 4)
            per_clip.append(one)
        seconds = time.perf_counter() - started
    frames = sum(c["frames"] for c in per_clip)
    mtcnn_s = sum(c["mtcnn_s"] for c in per_clip)
    return {
        "clips": len(records),
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(records) / seconds, 4),
        "frames": frames,
        "mtcnn_frames_per_s": round(frames / mtcnn_s, 2),
        "share_mtcnn": round(mtcnn_s / seconds, 3),
        "share_decode": round(sum(c["decode_s"] for c in per_clip) / seconds, 3),
        "share_audio": round(sum(c["audio_s"] for c in per_clip) / seconds, 3),
        "faces_found": sum(c["faces_found"] for c in per_clip),
        "per_clip": per_clip,
        "load_before": load_before,
        "load_after": load(),
        "cpu_cores_used": other.result,
    }


# ---------------------------------------------------------------------------------------------- profile


def profile_task(records: list[ClipRecord], config: ExtractConfig) -> dict:
    """Where one clip's time goes inside avstore's task (in this process, torch 1 thread, like a worker).

    Stages are timed by wrapping the functions the task calls; nested stages (detect and crop inside
    track_faces) are listed under their parent. ffmpeg launches are counted from subprocess calls.
    """
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    patched = []

    def wrap(owner, name, label):
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - t
                calls[label] += 1

        setattr(owner, name, timed)
        patched.append((owner, name, original))

    process_clip(records[0], config, True, True, "cpu")  # warm-up: MTCNN, filterbank
    stages = [  # (owner, function, label); leading spaces mark a stage inside the one above
        (run_mod, "extract_faces", "extract_faces (total)"),
        (extract_mod, "decode_frames", "  decode_frames (17 frames out of a full decode)"),
        (extract_mod, "track_faces", "  track_faces"),
        (faces_mod, "detect", "    detect (MTCNN, one batch of 6 key frames at 320 px)"),
        (faces_mod, "crop", "    crop + resize to 224"),
        (run_mod, "extract_audio", "extract_audio (total)"),
        (extract_mod, "decode_audio", "  decode_audio"),
        (MelExtractor, "log_mel", "  log_mel (STFT + 512 mels)"),
        (extract_mod, "chunk_images", "  chunk_images (16 chunks)"),
        (extract_mod, "spectrogram_image", "  spectrogram_image (whole clip)"),
        (extract_mod, "probe", "probe (once per clip, in process_clip)"),
        (subprocess, "run", "  subprocess.run: the ffmpeg runs inside probe"),
    ]
    order = [label for _, _, label in stages]
    for owner, name, label in stages:
        wrap(owner, name, label)
    try:
        with OtherLoad() as other:
            started = time.perf_counter()
            for record in records:
                process_clip(record, config, True, True, "cpu")
            seconds = time.perf_counter() - started
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
    n = len(records)
    return {
        "clips": n,
        "seconds": round(seconds, 3),
        "clips_per_s": round(n / seconds, 3),
        "ms_per_clip": round(1000 * seconds / n, 1),
        "cpu_cores_used": other.result,
        "stages": {label: {"ms_per_clip": round(1000 * totals[label] / n, 1), "calls_per_clip": round(calls[label] / n, 2)} for label in order if label in totals},
    }


# ---------------------------------------------------------------------------------------------- report


def ratio(rate: float | None, base: float | None) -> float | None:
    return round(rate / base, 1) if rate and base else None


def build_rows(results: dict) -> list[dict]:
    rows = []
    for corpus, block in results["corpora"].items():
        base = block.get("baseline", {}).get("clips_per_s")
        for key, method in (("in_process", "avstore, in-process (workers=0), wall"),):
            if key in block:
                r = block[key]
                rows.append({"corpus": corpus, "method": method, "workers": 0, "clips": r["clips"], "seconds": r["seconds"], "rate": r["clips_per_s"], "ratio": ratio(r["clips_per_s"], base), "other_cores": r["cpu_cores_used"]["other_cores"]})
        for w in results["parameters"]["workers"]:
            cold, warm = block.get(f"cold_w{w}"), block.get(f"warm_w{w}")
            if cold:
                rows.append({"corpus": corpus, "method": "avstore run_extract, wall incl. cluster start-up", "workers": w, "clips": cold["clips"], "seconds": cold["seconds"], "rate": cold["clips_per_s"], "ratio": ratio(cold["clips_per_s"], base), "other_cores": cold["cpu_cores_used"]["other_cores"]})
                steady = cold["steady_clips_per_s_from_first_completion"]
                if steady:
                    rows.append({"corpus": corpus, "method": "avstore run_extract, steady state (after 1st clip)", "workers": w, "clips": cold["clips"] - 1, "seconds": cold["phases"]["first_to_last_clip_s"], "rate": steady, "ratio": ratio(steady, base), "other_cores": cold["cpu_cores_used"]["other_cores"]})
            if warm:
                rows.append({"corpus": corpus, "method": "avstore run_extract, warm cluster (steady state, store + fusion incl.)", "workers": w, "clips": warm["clips"], "seconds": warm["seconds"], "rate": warm["clips_per_s"], "ratio": ratio(warm["clips_per_s"], base), "other_cores": warm["cpu_cores_used"]["other_cores"]})
        if "baseline" in block:
            b = block["baseline"]
            rows.append({"corpus": corpus, "method": "baseline (seed): all frames, MTCNN on each", "workers": 1, "clips": b["clips"], "seconds": b["seconds"], "rate": b["clips_per_s"], "ratio": 1.0, "other_cores": b["cpu_cores_used"]["other_cores"]})
    return rows


def fmt_duration(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


def markdown(results: dict) -> str:
    rows = build_rows(results)
    m, v, p = results["machine"], results["versions"], results["parameters"]
    lines = [
        f"### Extraction speed ({'quick run' if p['quick'] else 'full run'}, {results['date']})",
        "",
        f"Machine: {m['cpu_count']} CPU cores ({m['cpu_model'] or m['processor'] or 'unknown model'}), {m['memory_gb']} GB, no GPU; "
        f"torch {v['torch']}, facenet-pytorch {v['facenet-pytorch']}, dask {v['dask']}, zarr {v['zarr']}. "
        f"Parameters: T={p['faces']['frames']} frames, {p['faces']['size']} px, {p['mel']['n_mels']} mels, fusion {', '.join(p['fusions'])}.",
        "",
        "| corpus | method | workers | clips | seconds | clips/s | ratio vs baseline | other jobs' cores meanwhile |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['corpus']} | {r['method']} | {r['workers']} | {r['clips']} | {r['seconds']:.1f} | {r['rate']:.2f} | {'' if r['ratio'] is None else format(r['ratio'], '.1f') + 'x'} | {r['other_cores']:.2f} |")
    s = results["summary"]
    others = [r["cpu_cores_used"]["other_cores"] for block in results["corpora"].values() for r in block.values() if isinstance(r, dict) and "cpu_cores_used" in r]
    lines += [
        "",
        f"The machine was shared: other jobs used {min(others):.2f}-{max(others):.2f} cores (mean {np.mean(others):.2f}) of its "
        f"{m['cpu_count']} while these ran (last column; `cpu_cores_used` in the JSON). Rates with 2 workers suffer most: they need "
        "both cores (2 workers plus the writing client on 2 cores). \"Steady state (after 1st clip)\" counts completions after the first "
        "one of the cold run (store writes included, fusion and checksums not); \"warm cluster\" times run_extract against a cluster "
        "started and warmed (MTCNN loaded) beforehand, so everything but start-up is included."
        if others else "",
        "",
        f"Speed-up at one worker, steady state (warm cluster) vs the seed's way in one process: "
        + "; ".join(f"{c}: **{x}x**" for c, x in s["speedup_w1"].items() if x) + ". "
        "In CPU time, which depends less on what else runs: avstore (warm, 1 worker, scheduler, store writes and fusion included) vs baseline, CPU-seconds per clip: "
        + "; ".join(f"{c}: {s['cpu_s_per_clip'][c].get('warm_w1')} vs {s['cpu_s_per_clip'][c].get('baseline')} s, **{x}x** less" for c, x in s["cpu_speedup_w1"].items() if x) + ".",
        "",
        f"Projection for all {CREMA_D_CLIPS:,} CREMA-D clips ({CREMA_D_FORMAT}) — a projection from the sample corpus, "
        "not a measurement on CREMA-D:",
        "",
    ]
    for item in s["projection"]:
        lines.append(f"- {item['what']}: {fmt_duration(item['seconds'])} ({item['how']})")
    prof = results.get("profile")
    if prof:
        lines += ["", f"Where an avstore clip's time goes (in-process, 1 thread, {prof['clips']} sample clips, {prof['ms_per_clip']} ms per clip):", "",
                  "| stage | ms per clip | calls per clip |", "|---|---:|---:|"]
        lines.append(f"| whole task (process_clip) | {prof['ms_per_clip']} | 1 |")
        for name, st in prof["stages"].items():
            indent = "&nbsp;" * (len(name) - len(name.lstrip()))
            lines.append(f"| {indent}{name.strip()} | {st['ms_per_clip']} | {st['calls_per_clip']} |")
    notes = observations(results)
    if notes:
        lines += ["", "Observed costs outside the detector:", ""] + [f"- {n}" for n in notes]
    lines += ["", "Baseline = decode every frame, `MTCNN(keep_all=False)` on each full-resolution frame, same mel parameters via librosa, "
              "one process, `torch.set_num_threads(1)`, on a subset. Written by `bench/extract.py`; raw timings in `bench/results/"
              + results["output_stem"] + ".json`.", ""]
    return "\n".join(lines)


def cpu_per_clip(r: dict | None) -> float | None:
    return round(r["cpu_cores_used"]["own_cpu_s"] / r["clips"], 3) if r and "cpu_cores_used" in r else None


def observations(results: dict) -> list[str]:
    """Facts from the profile and the phases that point at avoidable work (the pipeline is not changed here)."""
    notes = []
    prof = results.get("profile")
    if prof:
        probe = prof["stages"].get("probe (once per clip, in process_clip)")
        runs = prof["stages"].get("  subprocess.run: the ffmpeg runs inside probe")
        if probe and runs:
            notes.append(
                f"probe: {probe['calls_per_clip']:g} calls and {runs['calls_per_clip']:g} ffmpeg runs per clip, {probe['ms_per_clip']} ms "
                f"= {100 * probe['ms_per_clip'] / prof['ms_per_clip']:.0f}% of the task's {prof['ms_per_clip']} ms "
                "(process_clip probes once and shares the timeline with both tasks; one ffmpeg run per probe)."
            )
    for key in ("warm_w1", "warm_w2"):
        r = results["corpora"].get("sample", {}).get(key)
        if r:
            ph = r["phases"]
            notes.append(
                f"client process, {key.replace('warm_w', '')} worker(s): store writes {ph['store_flush_s']:.1f} s and fusion {ph['fusion_s']:.1f} s "
                f"for {r['clips']} clips ({1000 * (ph['store_flush_s'] + ph['fusion_s']) / r['clips']:.0f} ms per clip, one process; "
                f"the fusion runs after the last clip), store {r['store_mb']:.0f} MB ({r['store_mb'] / r['clips']:.1f} MB per clip)."
            )
    cold = [results["corpora"][c].get(f"cold_w{w}") for c in results["corpora"] for w in results["parameters"]["workers"]]
    starts = [r["phases"]["setup_s"] + r["phases"]["to_first_clip_s"] for r in cold if r]
    tails = [r["phases"]["after_last_clip_s"] for r in cold if r]
    if starts:
        notes.append(
            f"fixed cost of one run_extract call: {min(starts):.0f}-{max(starts):.0f} s until the first clip completes (cluster start, workers importing torch "
            f"and loading MTCNN) and {min(tails):.0f}-{max(tails):.0f} s after the last (fusion, checksums, cluster shut-down)."
        )
    return notes


def summarise(results: dict) -> dict:
    corpora = results["corpora"]
    speedup, cpu_speedup, cpu = {}, {}, {}
    for corpus, block in corpora.items():
        warm = block.get("warm_w1", {}).get("clips_per_s")
        speedup[corpus] = ratio(warm, block.get("baseline", {}).get("clips_per_s"))
        cpu[corpus] = {key: cpu_per_clip(r) for key, r in block.items() if isinstance(r, dict) and "cpu_cores_used" in r}
        base, ours = cpu[corpus].get("baseline"), cpu[corpus].get("warm_w1")
        cpu_speedup[corpus] = round(base / ours, 1) if base and ours else None
    sample = corpora["sample"]
    projection = []
    if "warm_w2" in sample and "cold_w2" in sample:
        start = sample["cold_w2"]["phases"]["setup_s"] + sample["cold_w2"]["phases"]["to_first_clip_s"]
        rate = sample["warm_w2"]["clips_per_s"]
        projection.append({
            "what": "avstore, 2 workers", "seconds": round(start + CREMA_D_CLIPS / rate, 0),
            "how": f"{start:.0f} s start-up + {CREMA_D_CLIPS} clips / {rate:.2f} clips/s (warm 2-worker rate on the sample corpus)",
        })
    if "warm_w1" in sample:
        rate = sample["warm_w1"]["clips_per_s"]
        projection.append({"what": "avstore, 1 worker", "seconds": round(CREMA_D_CLIPS / rate, 0), "how": f"{CREMA_D_CLIPS} / {rate:.2f} clips/s"})
    if "warm_w2" in sample:
        per_clip = cpu_per_clip(sample["warm_w2"])
        cores = results["machine"]["cpus_usable"] or 2
        projection.append({
            "what": f"avstore, 2 workers with the {cores} cores to itself (a bound from CPU time, not measured)",
            "seconds": round(CREMA_D_CLIPS * per_clip / cores, 0),
            "how": f"{CREMA_D_CLIPS} clips x {per_clip:.3f} CPU-s per clip (warm 2-worker run: workers, ffmpeg, client) / {cores} cores",
        })
    if "baseline" in sample:
        rate = sample["baseline"]["clips_per_s"]
        projection.append({"what": "baseline (seed's way), 1 process", "seconds": round(CREMA_D_CLIPS / rate, 0), "how": f"{CREMA_D_CLIPS} / {rate:.3f} clips/s"})
        projection.append({"what": "baseline, 2 processes if it scaled perfectly (an upper bound, not measured)", "seconds": round(CREMA_D_CLIPS / rate / 2, 0), "how": f"{CREMA_D_CLIPS} / (2 x {rate:.3f}) clips/s"})
    return {"speedup_w1": speedup, "cpu_s_per_clip": cpu, "cpu_speedup_w1": cpu_speedup, "projection": projection}


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="18 sample clips, a 3+2 clip baseline (3-4 min); writes extract-quick.*")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default bench/results/extract, or extract-quick with --quick)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    parser.add_argument("--baseline-sample-clips", type=int, default=None, help="sample clips the baseline runs on (default 12; quick 3)")
    parser.add_argument("--tmp", type=Path, default=None, help="where the corpora and stores go (default a fresh temporary folder)")
    parser.add_argument("--in-process", action="store_true", help="also measure run_extract(workers=0) on the sample corpus (Dask's own cost)")
    parser.add_argument("--max-wait", type=float, default=20.0, help="before each measurement, wait up to this many seconds for other jobs to use < 0.3 cores (0: never wait)")
    parser.add_argument("--wait-budget", type=float, default=60.0, help="at most this many seconds of such waiting in the whole run")
    parser.add_argument("--from-json", type=Path, default=None, help="measure nothing: rewrite the summary and the Markdown of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        results["summary"], results["table"] = summarise(results), build_rows(results)
        stem = args.out or args.from_json.with_suffix("")
        results["output_stem"] = stem.name
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        stem.with_suffix(".md").write_text(markdown(results))
        print(markdown(results))
        return 0
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    import distributed  # noqa: F401  (imported now so its logging set-up happens before it is quietened)

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("distributed")] + ["distributed"]:
        logging.getLogger(name).setLevel(logging.ERROR)

    quick = args.quick
    stem = args.out or REPO / "bench" / "results" / ("extract-quick" if quick else "extract")
    stem.parent.mkdir(parents=True, exist_ok=True)
    actors, sentences = (3, 1) if quick else (8, 2)
    n_base_sample = args.baseline_sample_clips or (3 if quick else 12)
    config = ExtractConfig()  # FaceConfig(): 16 frames, 224 px; MelConfig(): 512 mels; fusion concat
    CLOCK.install()

    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "output_stem": stem.name,
        "machine": machine(),
        "versions": versions(),
        "parameters": {
            "quick": quick, "workers": args.workers, "sample_corpus": {"actors": actors, "sentences": sentences, "seed": 0},
            "faces": asdict(config.faces), "mel": asdict(config.mel), "fusions": list(config.fusions), "fusion_seed": config.fusion_seed,
            "commit_every": run_mod.SHARD_ROWS, "device": "cpu", "baseline_sample_clips": n_base_sample,
            "baseline": "probe; ffmpeg rawvideo of every frame; facenet_pytorch.MTCNN(keep_all=False, image_size=224, post_process=False) "
                        "called per full-resolution frame; 16 evenly spaced crops kept; librosa melspectrogram (same parameters) + power_to_db(ref=max, top_db=80), "
                        "16 equal chunks resized to 224; one process, torch.set_num_threads(1)",
        },
        "load_at_start": load(),
        "corpora": {},
    }
    tmp_owner = tempfile.TemporaryDirectory(prefix="avstore-bench-") if args.tmp is None else None
    tmp = Path(tmp_owner.name) if tmp_owner else args.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    partial = stem.with_suffix(".json.tmp")
    bench_started = time.perf_counter()

    def save_partial():
        partial.write_text(json.dumps(results, indent=2, default=str))

    try:
        t = time.perf_counter()
        sample = sample_records(tmp / "sample", actors, sentences)
        results["sample_corpus_write_s"] = round(time.perf_counter() - t, 2)
        grid = grid_records(tmp / "grid")
        corpora = {"sample": sample, "grid": grid}
        for name, records in corpora.items():
            infos = [probe(r.video_path) for r in records]
            results["corpora"][name] = {
                "clips": len(records),
                "format": {
                    "width": sorted({i.width for i in infos}), "height": sorted({i.height for i in infos}),
                    "fps": sorted({i.fps for i in infos}), "mean_duration_s": round(float(np.mean([i.duration for i in infos])), 3),
                    "mean_frames": round(float(np.mean([i.n_frames for i in infos])), 1),
                },
                "splits": {s: sum(r.split == s for r in records) for s in ("train", "val", "test")},
            }
        log.info("corpora ready: %d sample clips, %d GRID clips", len(sample), len(grid))

        waited = [0.0]

        def measure(block: dict, key: str, what: str, run) -> None:
            budget = min(args.max_wait, args.wait_budget - waited[0])
            quiet = wait_for_quiet(budget) if budget > 0 else {}
            waited[0] += quiet.get("waited_s", 0.0)
            log.info("%s (other jobs: %.2f cores, waited %.0f s)", what, quiet.get("other_cores_before", float("nan")), quiet.get("waited_s", 0))
            block[key] = run()
            block[key]["quiet_wait"] = quiet
            r = block[key]
            log.info("  %d clips, %.1f s, %.3f clips/s; other jobs used %.2f cores meanwhile", r["clips"], r["seconds"], r["clips_per_s"], r["cpu_cores_used"]["other_cores"])
            save_partial()

        for name, records in corpora.items():
            block = results["corpora"][name]
            if args.in_process and name == "sample":
                measure(block, "in_process", f"{name}: run_extract workers=0 (in-process)",
                        lambda: timed_extract(records, tmp / f"{name}-w0.zarr", config, workers=0))
            for w in args.workers:
                measure(block, f"cold_w{w}", f"{name}: run_extract workers={w} (cold: cluster start-up included)",
                        lambda: timed_extract(records, tmp / f"{name}-cold-w{w}.zarr", config, workers=w))
                measure(block, f"warm_w{w}", f"{name}: run_extract workers={w} (warm cluster)",
                        lambda: warm_extract(records, tmp / f"{name}-warm-w{w}.zarr", config, workers=w))

        subsets = {"sample": sample[:: max(1, len(sample) // n_base_sample)][:n_base_sample], "grid": grid if not quick else grid[:2]}
        for name, records in subsets.items():
            measure(results["corpora"][name], "baseline", f"{name}: baseline on {len(records)} clips",
                    lambda: measure_baseline(records, config.faces, config.mel))

        log.info("profile of avstore's task")
        budget = min(args.max_wait, args.wait_budget - waited[0])
        if budget > 0:
            wait_for_quiet(budget)
        results["profile"] = profile_task(subsets["sample"], config)
        results["profile_grid"] = profile_task(grid, config)
    finally:
        if tmp_owner:
            tmp_owner.cleanup()

    results["load_at_end"] = load()
    results["bench_seconds"] = round(time.perf_counter() - bench_started, 1)
    results["summary"] = summarise(results)
    results["table"] = build_rows(results)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results)
    stem.with_suffix(".md").write_text(text)
    partial.unlink(missing_ok=True)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
