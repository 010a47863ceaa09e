"""Full-size rehearsal: a CREMA-D-sized corpus made of hard links, the real `extract` at the defaults, and what it costs.

The corpus takes CREMA-D's real clip names (the dataset's SentenceFilenames.csv when present, else its naming
scheme: 91 actors x 12 sentences x 6 emotions) and hard-links to each name a sample-corpus clip with the same
emotion, so it costs no generation time and no disk. One actor (1091) is held back and added afterwards.

Measured, each through the real CLI in a subprocess (a poller records every process of the tree):
wall time and CPU-seconds per clip; peak RSS of the writer (the extract process) and of each Dask worker; store
bytes per clip; `verify`; a no-op re-run; the run after the held-back actor's clips are added (it must process
only those and hash only the shards it wrote); one epoch of resnet18 on the 2D concat input, with its peak RSS.

    .venv/bin/python bench/scale.py                # all 7,442 clips: ~40 min of 2 cores plus training
    .venv/bin/python bench/scale.py --clips 300    # a rehearsal -> results/scale-300.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AVSTORE_SHARED_DATA", REPO.parent / "shared" / "data")) / "crema-d" / "SentenceFilenames.csv"
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
ADDED_ACTOR = "1091"
GB = 1e9


def crema_d_names() -> list[str]:
    """CREMA-D's clip names: the dataset's own list when present, else its naming scheme."""
    if SHARED.is_file():
        with SHARED.open() as f:
            return [row["Filename"] for row in csv.DictReader(f)]
    return [f"{1001 + a}_{s}_{e}_{'XX' if s != 'IEO' else 'MD'}" for a in range(91) for s in SENTENCES for e in EMOTIONS]


def pick(names: list[str], clips: int) -> list[str]:
    """`clips` names spread over all actors but the held-back one (round robin, so a rehearsal has many actors)."""
    by_actor: dict[str, list[str]] = defaultdict(list)
    for name in names:
        if not name.startswith(ADDED_ACTOR + "_"):
            by_actor[name.split("_")[0]].append(name)
    chosen, depth = [], 0
    while len(chosen) < clips and any(len(v) > depth for v in by_actor.values()):
        chosen += [v[depth] for _, v in sorted(by_actor.items()) if len(v) > depth][: clips - len(chosen)]
        depth += 1
    return chosen


def link(names: list[str], sample: Path, corpus: Path) -> None:
    """Hard-link a sample clip of the same emotion (in turn) to each CREMA-D name."""
    pool = defaultdict(list)
    for video in sorted((sample / "VideoFlash").glob("*.flv")):
        pool[video.stem.split("_")[2]].append(video.stem)
    turn: dict[str, int] = defaultdict(int)
    for folder in ("VideoFlash", "AudioWAV"):
        (corpus / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        emotion = name.split("_")[2]
        source = pool[emotion][turn[emotion] % len(pool[emotion])]
        turn[emotion] += 1
        for folder, ext in (("VideoFlash", "flv"), ("AudioWAV", "wav")):
            target = corpus / folder / f"{name}.{ext}"
            if not target.exists():
                os.link(sample / folder / f"{source}.{ext}", target)


def measured(command: list[str], label: str) -> dict:
    """Run `command`, polling its process tree: wall, CPU-seconds (rusage of the finished tree), peak RSS per process.

    The workers fork from an import server (pipeline/workers.py) that outlives the command for a moment; as a
    subreaper this process inherits and reaps it, so its CPU-seconds and its workers' are counted."""
    import ctypes

    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, dict] = {}
    done = threading.Event()

    def poll() -> None:
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for p in tree:
                try:
                    rss, cmd = p.memory_info().rss, " ".join(p.cmdline())[:120]
                except psutil.Error:
                    continue
                role = "writer" if p.pid == proc.pid else "import server" if "forkserver" in cmd and p.ppid() == proc.pid else "worker"
                entry = peaks.setdefault(p.pid, {"rss": 0, "cmd": cmd, "role": role})
                entry["rss"] = max(entry["rss"], rss)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    output, _ = proc.communicate()
    done.set()
    poller.join()
    wall = time.perf_counter() - started
    deadline = time.monotonic() + 60
    while (orphans := psutil.Process().children()) and time.monotonic() < deadline:  # the import server, its workers
        psutil.wait_procs(orphans, timeout=max(0.0, deadline - time.monotonic()))  # reaped: their CPU counts
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{output[-3000:]}")
    writer = max((e["rss"] for e in peaks.values() if e["role"] == "writer"), default=0)
    workers = sorted((e["rss"] for e in peaks.values() if e["role"] == "worker" and e["rss"] > 100e6), reverse=True)
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} CPU-s, writer peak {writer / GB:.2f} GB, workers {[round(w / GB, 2) for w in workers]}", flush=True)
    return {"wall_s": wall, "cpu_s": cpu, "writer_peak_rss_gb": writer / GB, "worker_peak_rss_gb": [w / GB for w in workers], "output": output[-2000:]}


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=None, help="clips before the added actor (default: all of CREMA-D but actor 1091)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--sample-actors", type=int, default=6, help="actors of the sample corpus the links point to")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="avstore-scale-"))
    py = [sys.executable, str(REPO / "cli.py")]
    names = crema_d_names()
    added = [n for n in names if n.startswith(ADDED_ACTOR + "_")]
    base = pick(names, args.clips or len(names) - len(added))
    label = f"scale-{len(base) + len(added)}"
    try:
        sample, corpus, store = work / "sample", work / "corpus", work / "store.zarr"
        if not sample.is_dir():
            subprocess.run([*py, "sample", "--out", str(sample), "--actors", str(args.sample_actors), "--sentences", "2"], check=True, cwd=REPO)
        link(base, sample, corpus)
        extract = [*py, "extract", "--dataset", "crema-d", "--root", str(corpus), "--store", str(store), "--no-progress"]
        result = {"clips": len(base), "actors": len({n.split('_')[0] for n in base}), "added_actor_clips": len(added)}
        result["extract"] = measured(extract, f"extract {len(base)} clips")
        result["store_bytes_per_clip"] = du(store) / len(base)
        result["verify"] = measured([*py, "verify", "--store", str(store)], "verify")
        result["noop_rerun"] = measured(extract, "no-op re-run")
        link(added, sample, corpus)
        result["added_actor"] = run = measured(extract, f"add actor {ADDED_ACTOR} ({len(added)} clips)")
        processed = re.search(r"(\d+) processed", run["output"])
        hashed = re.search(r"checksums: (\d+) files hashed", run["output"])
        run["processed"] = int(processed.group(1)) if processed else None
        run["files_hashed"] = int(hashed.group(1)) if hashed else None
        run["files_in_store"] = sum(1 for p in store.rglob("*") if p.is_file())
        result["verify_after_add"] = measured([*py, "verify", "--store", str(store)], "verify after the addition")
        result["train_resnet18_2d_one_epoch"] = measured(
            [*py, "train", "--encoder", "resnet18", "--modality", "av", "--fusion", "concat", "--epochs", "1", "--store", str(store),
             "--out", str(work / "run")], "train resnet18 2D concat, 1 epoch")
        result["machine"] = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
        out = REPO / "bench" / "results"
        (out / f"{label}.json").write_text(json.dumps(result, indent=2))
        (out / f"{label}.md").write_text(markdown(result))
        print(markdown(result))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def markdown(r: dict) -> str:
    e, n = r["extract"], r["clips"]
    add = r["added_actor"]
    t = r["train_resnet18_2d_one_epoch"]
    peak_all = max([e["writer_peak_rss_gb"], *e["worker_peak_rss_gb"], add["writer_peak_rss_gb"], *add["worker_peak_rss_gb"],
                    t["writer_peak_rss_gb"], *t["worker_peak_rss_gb"]])
    rows = [
        ("clips extracted (actors)", f"{n} ({r['actors']}), then actor {ADDED_ACTOR}'s {r['added_actor_clips']}"),
        ("extract: wall per clip", f"{e['wall_s'] / n:.3f} s ({e['wall_s']:.0f} s in all)"),
        ("extract: CPU-seconds per clip", f"{e['cpu_s'] / n:.3f}"),
        ("peak RSS: writer / each worker", f"{e['writer_peak_rss_gb']:.2f} GB / {', '.join(f'{w:.2f}' for w in e['worker_peak_rss_gb'])} GB"),
        ("store bytes per clip", f"{r['store_bytes_per_clip'] / 1e6:.2f} MB"),
        ("verify", f"{r['verify']['wall_s']:.1f} s"),
        ("no-op re-run", f"{r['noop_rerun']['wall_s']:.1f} s"),
        ("run after adding one actor", f"{add['wall_s']:.1f} s; processed {add['processed']} clips; hashed {add['files_hashed']} of {add['files_in_store']} files"),
        ("verify after the addition", f"{r['verify_after_add']['wall_s']:.1f} s"),
        ("resnet18, 2D concat, 1 epoch", f"{t['wall_s']:.0f} s, peak RSS {t['writer_peak_rss_gb']:.2f} GB"
         f" / loader workers {', '.join(f'{w:.2f} GB' for w in t['worker_peak_rss_gb']) or 'none'}"),
        ("largest peak RSS of any process", f"{peak_all:.2f} GB (target < 3 GB)"),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


if __name__ == "__main__":
    main()
