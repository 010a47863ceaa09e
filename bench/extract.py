#!/usr/bin/env python
"""Extraction speed, measured in one run: avstore at 1 and 2 workers against the seed code's way, plus a
per-stage profile of avstore's task, on the sample corpus and the real GRID clips.

    nice -n 10 .venv/bin/python bench/extract.py           # bench/results/extract.{json,md}
    .venv/bin/python bench/extract.py --quick               # 18 sample clips, 3-clip baseline: extract-quick.*
    .venv/bin/python bench/extract.py --main 96 [--profile-main]  # the main process alone: extract-main-96.{json,md}

* main (`--main N`): only the warm 2-worker run, on ~N sample clips (N/12 actors, 2 sentences): the main
  process's CPU per clip, which caps any cluster at 1/that clips/s (the client commits every clip), with
  the CPU of each of its threads (main thread; Dask's event loop, which also runs the local scheduler) and,
  with --profile-main, cProfile of each thread: the main thread's with the whole process's CPU as its clock, so
  work it waits on in zarr's or Dask's threads counts where it waited.

* cold: `cli.py extract --workers w` in a fresh process (its worker import server, pipeline/worker_imports.py,
  lives as long as the process); the start-up is the "first clip after N s" it prints.
* warm: a cluster started and warmed (MTCNN loaded in every worker) beforehand, then `run_extract` against
  it: the steady rate, store writes and fusion included. The speed-ups and projections use this rate.
* baseline (the seed's way), one process, torch 1 thread: ffmpeg rawvideo of every frame, MTCNN on every
  full-resolution frame, ffmpeg audio pipe, librosa mel with the same parameters, 16 chunks resized.
* profile: cProfile over a clip's share of avstore's task (clip_task below: the features, then every large
  array encoded into its chunk's bytes, as shards_task does before writing the shards) in process on a few
  clips; cumulative time of the stages (no monkeypatching; cProfile adds its own overhead, so the stages are
  shares, the total is wall).

CPU-seconds count this process and all its descendants (workers, ffmpeg). The machine may be shared: the
load average and the cores other jobs used meanwhile are recorded beside every number.
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import json
import logging
import os
import pstats
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.corpora import load_corpus  # noqa: E402
from pipeline.corpora.sample import write_sample_corpus  # noqa: E402
from pipeline.media import ffmpeg_exe, probe  # noqa: E402
from pipeline.records import CREMA_D_EMOTIONS  # noqa: E402
from pipeline.run import ExtractConfig, process_clip, run_extract  # noqa: E402
from pipeline.splits import assign_splits  # noqa: E402
from stores.codecs import chain_for  # noqa: E402
from stores.shards import encode_large_arrays  # noqa: E402

GRID_DIR = Path(os.environ.get("AVSTORE_SHARED_DATA", REPO.parent / "shared" / "data")) / "grid"
CREMA_D_CLIPS = 7442
TICK = os.sysconf("SC_CLK_TCK")
STAGES = {  # profile label: (file, functions) as cProfile names them
    "clip_task (whole task)": ("bench/extract.py", ("clip_task",)),
    "process_clip (features)": ("run.py", ("process_clip",)),
    "open + demux (probe facts)": ("media.py", ("_open", "_demux")),
    "decode + RGB of the kept frames": ("media.py", ("frames",)),
    "decode + resample audio": ("media.py", ("audio", "decode_audio")),
    "track_faces": ("faces.py", ("track_faces",)),
    "MTCNN detect": ("faces.py", ("detect",)),
    "crop + resize": ("faces.py", ("crop",)),
    "log_mel": ("audio.py", ("log_mel",)),
    "chunk_images": ("audio.py", ("chunk_images",)),
    "fusion (on the worker)": ("extract.py", ("fuse_clip",)),
    "encode large arrays (on the worker)": ("shards.py", ("encode_large_arrays",)),
}


def clip_task(record, config: ExtractConfig, want_faces: bool, want_audio: bool, device: str) -> tuple:
    """One clip's share of pipeline/run.py's shards_task, without writing: its features and fusions, every large
    array encoded into its chunk's bytes."""
    *results, fused = process_clip(record, config, want_faces, want_audio, device)
    encoded = [None if r is None else encode_large_arrays(r.arrays) for r in results]
    return (*encoded, {name: encode_large_arrays(arrays, chain_for(f"fusion-{name}")) for name, arrays in fused.items()})


def processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU-seconds of it and its reaped children), for every process on the machine."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat.parent.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK)
    return found


def cpu_s() -> float:
    """CPU-seconds of this process and every descendant, live or reaped."""
    total = sum(sum(resource.getrusage(w)[:2]) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))  # user + system
    table = processes()
    for pid, (up, t) in table.items():
        while up and up != os.getpid():
            up = table.get(up, (0, 0))[0]
        total += t if up == os.getpid() else 0.0
    return total


def busy_s() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def measured(fn, clips: int) -> dict:
    """Run fn(); wall and CPU seconds, and what the rest of the machine did meanwhile."""
    load, wall, busy, own, main = os.getloadavg()[0], time.perf_counter(), busy_s(), cpu_s(), sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    extra = fn() or {}
    wall, own, busy, main = time.perf_counter() - wall, cpu_s() - own, busy_s() - busy, sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - main
    return {"clips": clips, "seconds": round(wall, 2), "clips_per_s": round(clips / wall, 3), "cpu_s_per_clip": round(own / clips, 3),
            "main_cpu_s_per_clip": round(main / clips, 4),  # the one process every clip goes through: writer, scheduler, client
            "other_cores": round(max(0.0, busy - own) / wall, 2), "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), **extra}


def mb_per_clip(store: Path, clips: int) -> float:
    return round(sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6 / clips, 2)


def cold(dataset: str, root: Path, store: Path, workers: int, clips: int) -> dict:
    """`cli.py extract` in a fresh process. Its workers fork from an import server that outlives it for a moment:
    as a subreaper this process inherits and reaps them, so their CPU-seconds are counted."""
    import ctypes

    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    children = lambda: {pid for pid, (up, _) in processes().items() if up == os.getpid()}  # noqa: E731
    before = children()

    def run() -> dict:
        out = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--dataset", dataset, "--root", str(root), "--store", str(store),
                              "--workers", str(workers)], capture_output=True, text=True, check=True, cwd=REPO)
        deadline = time.monotonic() + 30
        while (orphans := children() - before) and time.monotonic() < deadline:  # the import server and its workers
            [os.waitpid(pid, 0) for pid in orphans]
        first = re.search(r"first clip after ([\d.]+) s", out.stdout + out.stderr)
        return {"timings_s": {"first_clip": float(first.group(1)) if first else None}, "mb_per_clip": mb_per_clip(store, clips),
                "verdict": out.stdout.strip().splitlines()[-1]}
    return {k: v for k, v in measured(run, clips).items() if k != "main_cpu_s_per_clip"}  # the CLI's main process is a child here


def warm(records, store: Path, config: ExtractConfig, workers: int, threads: dict | None = None) -> dict:
    """`threads`, if given, receives each thread's CPU-seconds over the run alone (thread_cpu_s before and after)."""
    from dask.distributed import Client

    from pipeline.workers import local_cluster

    def run() -> dict:
        before = thread_cpu_s()
        summary = run_extract(records, store, config, dataset="bench", class_names=list(CREMA_D_EMOTIONS), split_seed=0, progress=False,
                              scheduler=cluster.scheduler_address)
        if threads is not None:
            for tid, (name, t) in thread_cpu_s().items():
                threads[name] = threads.get(name, 0.0) + t - before.get(tid, ("", 0.0))[1]
        return {"mb_per_clip": mb_per_clip(store, len(records)), "not_ok": {k: v for k, v in summary.status.items() if not k.endswith(":ok")},
                "files_hashed": summary.files_hashed, "mb_hashed": round(sum(summary.hashed.values()) / 1e6, 2), "timings_s": summary.timings}

    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    with local_cluster(workers) as cluster:  # the CLI's own cluster: forked workers, no statistical profiler
        with Client(cluster) as client:
            client.wait_for_workers(workers)
            client.run(process_clip, records[0], config, True, True, "cpu")  # every worker: imports, MTCNN, filterbank
        return measured(run, len(records))


def thread_cpu_s() -> dict[int, tuple[str, float]]:
    """Thread id -> (name, CPU-seconds) of each live thread of this process (its Python name where it has one)."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = names.get(int(task.name)) or f"{(task / 'comm').read_text().strip()} (not a Python thread)"
        except OSError:
            continue
        out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def main_only(clips: int, tmp: Path, config: ExtractConfig, profile_main: bool) -> dict:
    """The warm 2-worker run on ~`clips` sample clips: main-process CPU per clip, per thread, and where it goes."""
    import threading

    actors = max(1, -(-clips // 12))
    write_sample_corpus(tmp / "sample", actors=actors, sentences=2, seed=0)
    records = assign_splits(load_corpus("sample", tmp / "sample"), seed=0)
    profilers: dict[str, cProfile.Profile] = {}
    if profile_main:
        def profile_thread(frame, event, arg):  # the first call in each new thread starts that thread's profiler
            name = threading.current_thread().name
            if name not in profilers:
                profilers[name] = cProfile.Profile(time.thread_time)  # CPU, not waiting
                profilers[name].enable()  # replaces this hook in this thread
        threading.setprofile(profile_thread)
        profilers["MainThread"] = cProfile.Profile(time.process_time)  # the process's CPU, by what the main thread was doing
        profilers["MainThread"].enable()
    spent: dict[str, float] = {}
    row = warm(records, tmp / "main.zarr", config, 2, spent)
    for profiler in profilers.values():
        profiler.disable()
    threading.setprofile(None)
    row["threads_cpu_ms_per_clip"] = {name: round(1000 * t / len(records), 2) for name, t in sorted(spent.items()) if t > 0.005}
    row["main_ms_per_clip"] = round(1000 * row["main_cpu_s_per_clip"], 1)
    row["commit_ceiling_clips_per_s"] = round(1 / max(row["main_cpu_s_per_clip"], 1e-4))
    if profilers:
        import io

        row["profiles"] = {}
        for name, profiler in profilers.items():
            text = io.StringIO()
            try:
                stats = pstats.Stats(profiler, stream=text)
            except TypeError:  # a thread that never ran Python code
                continue
            stats.sort_stats("tottime").print_stats(25)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("cumulative").print_stats(r"wt-\d+/(pipeline|stores)/", 60)
            row["profiles"][name] = text.getvalue()
    return row


def main_markdown(row: dict, cpu: str) -> str:
    """The --main run as a short table: what the one committing process costs per clip, and where."""
    threads = ", ".join(f"{name} {ms}" for name, ms in sorted(row["threads_cpu_ms_per_clip"].items(), key=lambda kv: -kv[1]))
    return "\n".join([
        f"### The extract client's CPU per clip ({row['date']}, {row['clips']} sample clips)", "",
        f"{os.cpu_count()} cores ({cpu}). Defaults (T=16, 224 px, 512 mels, concat), 2 warm local workers, a fresh store. "
        f"**Shared machine**: load average {row['load_before']} before, {row['load_after']} after; run at nice {row['nice']}.", "",
        "| clips | s | clips/s | CPU-s/clip (all processes) | main process CPU-ms/clip | commit ceiling (clips/s) |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {row['clips']} | {row['seconds']} | {row['clips_per_s']} | {row['cpu_s_per_clip']} | {row['main_ms_per_clip']} | {row['commit_ceiling_clips_per_s']} |", "",
        f"Main-process threads, CPU-ms per clip: {threads}. Files hashed by the client: {row['files_hashed']} ({row['mb_hashed']} MB).",
        "", "Written by `bench/extract.py --main`; every number in the .json beside it.", ""])


def baseline_clip(path: str, audio_path: str, mtcnn, config: ExtractConfig) -> None:
    import cv2
    import librosa

    info = probe(path)
    raw = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", path, "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, info.height, info.width, 3)
    faces = [mtcnn(frame) for frame in frames]  # every frame, full resolution
    keep = np.linspace(0, len(frames) - 1, config.faces.frames).round().astype(int)
    _ = [faces[i] for i in keep]
    mel = config.mel
    pcm = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", audio_path, "-map", "0:a:0", "-ac", "1", "-ar", str(mel.sample_rate), "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    power = librosa.feature.melspectrogram(y=np.frombuffer(pcm, np.float32), sr=mel.sample_rate, n_fft=mel.n_fft, hop_length=mel.hop_length, n_mels=mel.n_mels)
    db = librosa.power_to_db(power, ref=np.max, top_db=mel.top_db)
    size = config.faces.size
    _ = [cv2.resize(((np.flipud(part) + mel.top_db) * 255 / mel.top_db).astype(np.float32), (size, size)) for part in np.array_split(db, config.faces.frames, axis=1)]


def baseline(records, config: ExtractConfig) -> dict:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    mtcnn = MTCNN(keep_all=False, image_size=config.faces.size, margin=0, post_process=False)
    baseline_clip(records[0].video_path, records[0].audio_path or records[0].video_path, mtcnn, config)  # warm-up
    return measured(lambda: [baseline_clip(r.video_path, r.audio_path or r.video_path, mtcnn, config) for r in records] and None, len(records))


def profile(records, config: ExtractConfig) -> dict:
    clip_task(records[0], config, True, True, "cpu")  # warm-up: MTCNN, filterbank
    profiler = cProfile.Profile()
    result = measured(lambda: profiler.runcall(lambda: [clip_task(r, config, True, True, "cpu") for r in records]) and None, len(records))
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive, tottime, cumtime, callers)
    stages = {}
    for label, (file, functions) in STAGES.items():
        hits = [(v[0], v[3]) for (f, _, name), v in stats.items() if f.endswith("/" + file) and name in functions]
        if hits:
            stages[label] = {"ms_per_clip": round(1000 * sum(c for _, c in hits) / len(records), 1), "calls_per_clip": round(sum(n for n, _ in hits) / len(records), 2)}
    return {**result, "stages": stages}


def corpora(tmp: Path, quick: bool) -> dict:
    write_sample_corpus(tmp / "sample", actors=3 if quick else 8, sentences=1 if quick else 2, seed=0)
    sample = assign_splits(load_corpus("sample", tmp / "sample"), seed=0)
    videos = sorted(GRID_DIR.glob("*.mpg"))
    if not videos:
        raise SystemExit(f"no GRID clips in {GRID_DIR}: they are needed for the real-media measurements")
    with open(tmp / "grid.csv", "w", newline="") as f:
        csv.writer(f).writerows([["video", "label", "speaker"]] + [[v, CREMA_D_EMOTIONS[k % 6], f"s{k // 2 + 1}"] for k, v in enumerate(videos)])
    return {"sample": sample, "grid": assign_splits(load_corpus("manifest", tmp / "grid.csv"), seed=0)}


def markdown(r: dict) -> str:
    p, s = r["parameters"], r["summary"]
    lines = [f"### Extraction speed ({r['date']}{', quick run' if p['quick'] else ''})", "",
             f"{r['machine']}. T={p['faces']['frames']}, {p['faces']['size']} px, {p['mel']['n_mels']} mels, fusion {', '.join(p['fusions'])}. "
             f"**Shared machine**: load average {r['load'][0]} at the start, {r['load'][1]} at the end; the last column is how many cores other "
             f"jobs used meanwhile (of 2). Run once, at nice {r.get('nice', '?')}.", "",
             "| corpus | method | workers | clips | s | clips/s | vs seed | CPU-s/clip | main process CPU-s/clip | start-up s | other cores |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for corpus, block in r["corpora"].items():
        base = block["baseline"]["clips_per_s"]
        for key, row in block.items():
            method = {"baseline": "seed's way, 1 process"}.get(key, key.replace("_w", ", workers ").replace("cold", "avstore cold (cli extract)").replace("warm", "avstore warm cluster"))
            workers = key[-1] if key[-1].isdigit() else "1"
            start = row.get("timings_s", {}).get("first_clip", "") if key.startswith("cold") else ""
            lines.append(f"| {corpus} | {method.split(', workers')[0]} | {workers} | {row['clips']} | {row['seconds']} | {row['clips_per_s']:.2f} | "
                         f"{row['clips_per_s'] / base:.1f}x | {row['cpu_s_per_clip']} | {row.get('main_cpu_s_per_clip', '')} | {start} | {row['other_cores']} |")
    lines += ["", f"Speed-up with 2 workers (warm) against the seed's way: sample **{s['speedup_w2']['sample']}x**, GRID **{s['speedup_w2']['grid']}x**. "
              f"CPU-seconds per clip (warm, 2 workers, all processes): sample {s['cpu_s_per_clip']}, of which the main process (writer, scheduler, "
              f"client: one per run, whatever the cores) {s['main_cpu_s_per_clip']}, so it alone caps a run at ~{s['main_cap_clips_per_s']} clips/s. "
              f"Store: {s['mb_per_clip']} MB per clip.",
              f"Projected for all {CREMA_D_CLIPS:,} CREMA-D clips from the sample corpus (not measured on CREMA-D): **{s['crema_d_2_cores_min']} min** on 2 cores "
              f"(start-up + clips / warm 2-worker rate); **{s['crema_d_16_cores_min']} min** on 16 cores assuming perfect scaling (clips x CPU-s per clip / 16; `bench/cores.py` measures how far from it the writer keeps a many-core node); "
              f"the seed's way {s['crema_d_seed_h']} h in one process.", "",
              f"Where a clip's time goes (cProfile over clip_task in process, {r['profile']['clips']} sample clips, {r['profile']['seconds']} s wall):", "",
              "| stage | ms per clip (cumulative, cProfile) | calls per clip |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['ms_per_clip']} | {v['calls_per_clip']} |" for k, v in r["profile"]["stages"].items()]
    return "\n".join(lines + ["", "Written by `bench/extract.py`; every number in `bench/results/extract.json`.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="18 sample clips and a 3-clip baseline")
    parser.add_argument("--baseline-clips", type=int, default=12, help="sample clips the (slow) seed way runs on")
    parser.add_argument("--main", type=int, metavar="CLIPS", help="only the main process's CPU per clip, warm, 2 workers, ~CLIPS sample clips")
    parser.add_argument("--profile-main", action="store_true", help="with --main: cProfile of the main process's threads")
    args = parser.parse_args()
    logging.getLogger("distributed").setLevel(logging.ERROR)
    config = ExtractConfig()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "unknown CPU")
    if args.main:
        with tempfile.TemporaryDirectory(prefix="avstore-bench-") as tmp:
            row = main_only(args.main, Path(tmp), config, args.profile_main)
        profiles = row.pop("profiles", {})
        row.update(date=time.strftime("%Y-%m-%d %H:%M %Z"), nice=os.nice(0), load_after=round(os.getloadavg()[0], 2))
        if not profiles:  # a profiled run is slower: its numbers are not the figure
            stem = REPO / "bench" / "results" / f"extract-main-{row['clips']}"
            stem.with_suffix(".json").write_text(json.dumps(row, indent=2) + "\n")
            stem.with_suffix(".md").write_text(main_markdown(row, cpu))
        for name, text in profiles.items():
            print(f"==== cProfile of thread {name}\n{text}")
        print(json.dumps(row, indent=2))
        return 0
    stem = REPO / "bench" / "results" / ("extract-quick" if args.quick else "extract")
    r = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "nice": os.nice(0), "machine": f"{os.cpu_count()} cores ({cpu}), no GPU", "load": [round(os.getloadavg()[0], 2)],
         "parameters": {"quick": args.quick, "faces": asdict(config.faces), "mel": asdict(config.mel), "fusions": list(config.fusions)}, "corpora": {}}
    with tempfile.TemporaryDirectory(prefix="avstore-bench-") as tmp:
        sets = corpora(Path(tmp), args.quick)
        for name, records in sets.items():
            block, source = r["corpora"].setdefault(name, {}), {"sample": ("sample", Path(tmp) / "sample"), "grid": ("manifest", Path(tmp) / "grid.csv")}[name]
            for w in (1, 2):
                print(f"{name}: cold, {w} worker(s)", flush=True)
                block[f"cold_w{w}"] = cold(*source, Path(tmp) / f"{name}-c{w}.zarr", w, len(records))
                print(f"{name}: warm, {w} worker(s)", flush=True)
                block[f"warm_w{w}"] = warm(records, Path(tmp) / f"{name}-w{w}.zarr", config, w)
            subset = records if name == "grid" else records[:: max(1, len(records) // args.baseline_clips)][: 3 if args.quick else args.baseline_clips]
            print(f"{name}: the seed's way on {len(subset)} clips", flush=True)
            block["baseline"] = baseline(subset, config)
        print("profile", flush=True)
        r["profile"] = profile(sets["sample"][:: max(1, len(sets["sample"]) // 12)][:12], config)
    r["load"].append(round(os.getloadavg()[0], 2))
    sample = r["corpora"]["sample"]
    rate2, cpu2 = sample["warm_w2"]["clips_per_s"], sample["warm_w2"]["cpu_s_per_clip"]
    r["summary"] = {
        "speedup_w2": {c: round(b["warm_w2"]["clips_per_s"] / b["baseline"]["clips_per_s"], 1) for c, b in r["corpora"].items()},
        "cpu_s_per_clip": cpu2, "mb_per_clip": sample["warm_w2"]["mb_per_clip"], "main_cpu_s_per_clip": sample["warm_w2"]["main_cpu_s_per_clip"],
        "main_cap_clips_per_s": round(1 / max(sample["warm_w2"]["main_cpu_s_per_clip"], 1e-3)),
        "crema_d_2_cores_min": round((sample["cold_w2"]["timings_s"]["first_clip"] + CREMA_D_CLIPS / rate2) / 60, 1),
        "crema_d_16_cores_min": round(CREMA_D_CLIPS * cpu2 / 16 / 60, 1),
        "crema_d_seed_h": round(CREMA_D_CLIPS / sample["baseline"]["clips_per_s"] / 3600, 1),
    }
    stem.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
