#!/usr/bin/env python
"""Extraction rate against worker count on a many-core machine: does `cli.py extract` scale with cores?

    .venv/bin/python bench/cores.py --clips 600 --workers 2 7 14      # bench/results/cores-<cores>.{json,md}

The corpus is bench/scale.py's: CREMA-D's clip names hard-linked to a sample corpus's clips (`--sample DIR`, or
one made with `cli.py sample`, which needs ffmpeg), so no generation time. Each worker count extracts the same
clips into a fresh store, cold, at the defaults (T=16, 224 px, 512 mels, fusion concat), as a user would:
wall time, CPU-seconds of all processes, clips per second, and the seconds until the first clip came back.
The 2-core projection in the README assumes perfect scaling; this measures it where there are cores to spare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import REPO, crema_d_names, link, measured, pick  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 7, 14])
    parser.add_argument("--sample", type=Path, default=None, help="a sample corpus (cli.py sample) to link to")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="avstore-cores-"))
    py = [sys.executable, str(REPO / "cli.py")]
    try:
        sample = args.sample or work / "sample"
        if args.sample is None:
            subprocess.run([*py, "sample", "--out", str(sample), "--actors", "6", "--sentences", "2"], check=True, cwd=REPO)
        names = pick(crema_d_names(), args.clips)
        link(names, sample, work / "corpus")
        rows = []
        for workers in args.workers:
            store = work / f"store-{workers}.zarr"
            run = measured([*py, "extract", "--dataset", "crema-d", "--root", str(work / "corpus"), "--store", str(store),
                            "--workers", str(workers), "--device", "cpu", "--no-progress"], f"extract {len(names)} clips, {workers} workers")
            first = re.search(r"first clip after ([\d.]+) s", run["output"])
            rows.append({"workers": workers, "clips": len(names), "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                         "clips_per_s": len(names) / run["wall_s"], "cpu_s_per_clip": run["cpu_s"] / len(names),
                         "first_clip_s": float(first.group(1)) if first else None,
                         "writer_peak_rss_gb": run["writer_peak_rss_gb"], "worker_peak_rss_gb": max(run["worker_peak_rss_gb"], default=0)})
            shutil.rmtree(store, ignore_errors=True)
        machine = {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
        lines = [f"### Extraction against worker count ({machine['cpus']} cores, {len(names)} clips, cold `cli.py extract`)", "",
                 "| workers | wall s | clips/s | speed-up vs the first row | CPU-s per clip | first clip s | writer / worker peak RSS GB |",
                 "|---:|---:|---:|---:|---:|---:|---|"]
        for r in rows:
            lines.append(f"| {r['workers']} | {r['wall_s']:.1f} | {r['clips_per_s']:.2f} | {r['clips_per_s'] / rows[0]['clips_per_s']:.2f}x | "
                         f"{r['cpu_s_per_clip']:.3f} | {r['first_clip_s'] if r['first_clip_s'] is not None else '?'} | "
                         f"{r['writer_peak_rss_gb']:.2f} / {r['worker_peak_rss_gb']:.2f} |")
        text = "\n".join(lines) + "\n\nWritten by `bench/cores.py`.\n"
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"cores-{machine['cpus']}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
        (args.out / f"cores-{machine['cpus']}.md").write_text(text)
        print(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
