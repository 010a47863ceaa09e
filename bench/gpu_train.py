#!/usr/bin/env python
"""Is training on a GPU fed fast enough from the store? Every encoder, streamed and in memory, on a 1,000-clip store.

    python bench/gpu_train.py --sample DIR [--clips 1000] [--epochs 2] [--deadline-s 480]   # -> $OUT or bench/results

For one call on a lent GPU machine (bench/gpu.sh installs the wheels the image lacks first; see bench/README.md).
The corpus is bench/scale.py's: CREMA-D's clip names hard-linked to a sample corpus's clips, extracted cold at
224 px, T=16, fusion concat (and concat224 for the encoders that need a square input) on all but two cores.
Each encoder then trains `--epochs` epochs twice: held in memory (`--max-memory-gb 1000`) and streamed from
the store (`--max-memory-gb 0`, the default loader workers). Per run it reports the samples/s and the share of
step time spent waiting for data in the LAST epoch (the first holds torch.compile and cuDNN warm-up), from
`train.log`, and the whole run's figures from `metrics.json`. Runs go in priority order and none starts after
`--deadline-s`, so the call ends inside the device tool's limit; what did not run is listed as such.
The ladder is left out: it reads LLD and embedding sequences (an `opensmile` extraction), not images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import REPO, crema_d_names, link, pick  # noqa: E402

# Priority order: the target (0 % waiting) names the 2D encoders, simple3d and i3d.
ENCODERS = ["resnet18", "simple3d", "i3d", "vgg16", "googlenet", "vit", "xattn", "late", "videomae", "vit-b16"]
EPOCH_LINE = re.compile(r"epoch (\d+): .*?, ([\d.]+) s \((\d+) % waiting for data\)")


def fusion_for(encoder: str) -> str:
    sys.path.insert(0, str(REPO))
    from encoders.registry import get_spec

    spec = get_spec(encoder)
    if spec.input_kind.startswith("pair"):
        return "none"
    return "concat224" if spec.square_input else "concat"


def train(store: Path, encoder: str, streamed: bool, epochs: int, out: Path, timeout: float, device: str = "cuda") -> dict:
    fusion = fusion_for(encoder)
    run_dir = out / f"{encoder}-{'streamed' if streamed else 'memory'}"
    command = [sys.executable, str(REPO / "cli.py"), "train", "--encoder", encoder, "--fusion", fusion, "--store", str(store),
               "--epochs", str(epochs), "--device", device, "--max-memory-gb", "0" if streamed else "1000",
               "--out", str(run_dir), "--no-progress"]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        output, code = (err.stdout or b"").decode() + (err.stderr or b"").decode(), "timeout"
    row = {"encoder": encoder, "fusion": fusion, "path": "streamed" if streamed else "in memory", "exit": code,
           "wall_s": round(time.perf_counter() - started, 1)}
    log = (run_dir / "train.log").read_text() if (run_dir / "train.log").is_file() else output
    epochs_seen = EPOCH_LINE.findall(log)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        m = json.loads(metrics_file.read_text())
        per_epoch = m["samples_per_second"] * m["seconds_per_epoch"]  # training samples per epoch, all ranks
        last = m["history"][-1]["seconds"]
        row.update(train_clips=m["clips"]["train"], in_memory=m["inputs"]["in_memory"], compiled=m["device_plan"]["compiled"],
                   first_epoch_s=round(m["history"][0]["seconds"], 1), last_epoch_samples_per_s=round(per_epoch / last),
                   whole_run_wait=round(m["data_wait_fraction"], 3), device=m["device"])
    if epochs_seen:
        row["last_epoch_wait"] = int(epochs_seen[-1][2]) / 100
    if code != 0:
        row["tail"] = output[-600:]
    print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
    return row


def markdown(rows: list[dict], extract: dict, skipped: list[str], machine: str) -> str:
    lines = [f"### Training fed from the store on a GPU (`bench/gpu_train.py`, {machine})", "",
             f"Store: {extract['clips']} clips (CREMA-D names hard-linked to a sample corpus), 224 px, T=16, extracted in "
             f"{extract['wall_s']:.0f} s on {extract['workers']} workers. Each run: defaults (batch 16, bf16, default loader workers).", "",
             "| encoder | fusion | path | train clips | epoch 1 s | samples/s, last epoch | waiting for data, last epoch | whole run | exit |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        wait = f"{100 * r['last_epoch_wait']:.0f} %" if "last_epoch_wait" in r else "-"
        whole = f"{100 * r['whole_run_wait']:.0f} %" if "whole_run_wait" in r else "-"
        lines.append(f"| {r['encoder']} | {r['fusion']} | {r['path']} | {r.get('train_clips', '-')} | {r.get('first_epoch_s', '-')} | "
                     f"{r.get('last_epoch_samples_per_s', '-')} | {wait} | {whole} | {r['exit']} |")
    if skipped:
        lines += ["", f"Not run (deadline reached): {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, required=True, help="a sample corpus (cli.py sample) to link to")
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--encoders", nargs="+", default=ENCODERS)
    parser.add_argument("--deadline-s", type=float, default=480, help="no run starts after this many seconds")
    parser.add_argument("--run-timeout-s", type=float, default=150)
    parser.add_argument("--device", default="cuda", help="cpu only to check the script itself")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "bench" / "results")))
    args = parser.parse_args()
    begun = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="avstore-gputrain-"))
    link(pick(crema_d_names(), args.clips), args.sample, work / "corpus")
    workers = max(1, (os.cpu_count() or 4) - 2)
    store = work / "store.zarr"
    started = time.perf_counter()
    fusions = sorted({f for f in map(fusion_for, args.encoders) if f != "none"})
    fusion_args = [a for f in fusions for a in ("--fusion", f)]
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--dataset", "crema-d", "--root", str(work / "corpus"),
                           "--store", str(store), "--workers", str(workers), "--device", "cpu", *fusion_args, "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)
    extract = {"clips": args.clips, "workers": workers, "wall_s": time.perf_counter() - started, "exit": proc.returncode,
               "tail": (proc.stdout + proc.stderr)[-1500:]}
    print(f"extract: {extract['wall_s']:.1f} s, exit {proc.returncode}\n{extract['tail']}", flush=True)
    rows, skipped = [], []
    for encoder in args.encoders:
        for streamed in (False, True):
            if time.perf_counter() - begun > args.deadline_s:
                skipped.append(f"{encoder} {'streamed' if streamed else 'in memory'}")
                continue
            rows.append(train(store, encoder, streamed, args.epochs, work / "runs", args.run_timeout_s, args.device))
    try:
        machine = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        machine = "no nvidia-smi"
    machine = f"{machine}, {os.cpu_count()} cores"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-train.md").write_text(markdown(rows, extract, skipped, machine))
    (args.out / "gpu-train.json").write_text(json.dumps({"machine": machine, "extract": extract, "runs": rows, "skipped": skipped}, indent=1))
    print(markdown(rows, extract, skipped, machine))


if __name__ == "__main__":
    main()
