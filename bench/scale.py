"""Full-size rehearsal: CREMA-D's 7,442 clip names extracted at the defaults, then trained from, on today's code.

The corpus takes CREMA-D's real clip names (the dataset's SentenceFilenames.csv when present, else its naming
scheme: 91 actors x 12 sentences x 6 emotions) and hard-links to each name a sample-corpus clip with the same
emotion, so it costs no generation time and no disk. Actor 1091 (82 clips) is held back and added at the end.
Extraction runs at the defaults (224 px, 512 mels, T=16, fusion concat, 2 local workers).

Every step is the real CLI in a subprocess. This process is a subreaper and polls every process of the step's tree
(the client or trainer, the Dask import server and workers, the loader workers) every 0.1 s: wall time, CPU-seconds
(rusage of the reaped tree) and each process's peak RSS. In order:

1. extraction of all clips but the held-back actor's, uninterrupted (the reference): wall, CPU-s and MB per clip,
   peak RSS of the client and of each Dask worker; `verify`; a no-op re-run;
2. the same extraction into a second store, killed with SIGKILL (the client: `kill -9`) at half the reference's
   wall time, then resumed, `verify`-ed and `diff`-ed against the reference (when the disk holds both stores;
   otherwise the reference is deleted first and the resumed store's chunk checksums are compared with the
   reference's: byte identity of every chunk file, said so in the results);
3. the held-back actor's clips added to the reference: clips processed, time, files re-hashed; `verify`;
4. training with `train --max-steps`: resnet18 (2D concat) and simple3d (3D concat), `--encoder-steps` optimiser
   steps each, at the path `train` picks by its memory budget and streamed (`--max-memory-gb 0`): samples/s and
   the peak RSS of the trainer and each loader worker;
5. every registered encoder (`cli.py encoders`) at its default CPU batch (16) for `--max-steps` steps: peak RSS of
   every process. An encoder over 3 GB is measured again at batch 8 and 4; a run is also stopped at
   `--survey-limit` s, or when one of its processes passes `--ceiling-gb` (the machine is shared). The square-input encoders read `stack` fused on the device; the
   ladder reads LLD (`extract --lld`) and face embeddings (`embed --backbone vgg16 --size 32`: random weights,
   the study's 4,096-d width, a small input to keep the pass short), prepared first unless `--no-ladder`.

A training run is stopped `--grace` s after its steps, in the evaluation that follows (`--full-evaluation` lets
the resnet18 and simple3d runs finish): at full size a CPU evaluates every split for 15-30 min per run with these
two, for an hour or more with the 3D and large models, reading as the steps read, without gradients. What that
leaves unmeasured is the copy of the best epoch's parameters made after the validation pass; the parameter
count is beside each run.

    nice .venv/bin/python bench/scale.py                              # 7,442 clips -> results/scale-7442.{json,md}
    nice .venv/bin/python bench/scale.py --clips 282 --encoder-steps 5  # a small rehearsal -> results/scale-282.{json,md}

Results are timings on a shared machine: the load average before and after each step is recorded beside it.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("AVSTORE_SHARED_DATA", REPO.parent / "shared" / "data")) / "crema-d" / "SentenceFilenames.csv"
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
HELD_BACK = "1091"
GB, MB = 1e9, 1e6
TARGETS = {  # issue 22 item 4 and issue 24 item 2
    "cpu_s_per_clip": 0.2, "client_rss_gb": 1.0, "worker_rss_gb": 1.5, "noop_s": 10.0, "training_rss_gb": 3.0,
}
SQUARE_FUSION = "stack"  # for encoders that take square images only (fused on the device from the stored faces and audio)


# ---- the corpus ---------------------------------------------------------------------------------------------
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
        if not name.startswith(HELD_BACK + "_"):
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


# ---- one measured step ----------------------------------------------------------------------------------------
def role_of(process: psutil.Process, root: int) -> str:
    """What a process of a step's tree is: the step's own process, Dask's import server, a helper, or a worker."""
    cmd = " ".join(process.cmdline())
    if process.pid == root:
        return "main"
    if process.ppid() == root and process.cmdline() == psutil.Process(root).cmdline():
        return "fork before exec"  # e.g. subprocess's child before it runs git: its RSS is the parent's pages, shared
    if "resource_tracker" in cmd:
        return "resource tracker"
    if "forkserver" in cmd and process.ppid() == root:
        return "import server"
    if "forkserver" in cmd or "spawn_main" in cmd:
        return "worker"  # a Dask worker (a fork of the import server) or a DataLoader worker (spawned)
    return "other"  # a short-lived command (git, ldconfig)


def measured(command: list[str], label: str, *, kill_at: float | None = None, stop_after: str | None = None, grace: float = 0.0,
             limit_s: float | None = None, ceiling_gb: float | None = None, expect_ok: bool = True) -> dict:
    """Run `command` (the CLI), polling every process of its tree: wall, CPU-seconds, each process's peak RSS.

    `kill_at`: SIGKILL the step's own process after that many seconds (kill -9). `stop_after`: once a line of the
    output contains it, let the step run `grace` s more, then stop it (SIGTERM); `limit_s` and `ceiling_gb` (the RSS of
    any one process) stop it too, so that a model too big for the machine cannot take the memory of everything else
    on it. Processes left behind are waited for up to 60 s, then killed by pid and counted (`lingering`). This
    process is a subreaper, so the orphans (the import server, its workers) are reaped here and their CPU counts."""
    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    before, load_before = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    processes: dict[int, dict] = {}
    lines: list[tuple[float, str]] = []
    done, stop_at, largest = threading.Event(), [None], [0]

    def poll() -> None:
        me = psutil.Process()
        while not done.is_set():
            now = 0  # the largest process's RSS (loader workers share their batch buffers: a sum counts them twice)
            for p in me.children(recursive=True):  # orphans too: they are re-parented to this subreaper
                try:
                    rss = p.memory_info().rss
                    entry = processes.get(p.pid) or processes.setdefault(p.pid, {"pid": p.pid, "role": role_of(p, proc.pid), "peak_rss": 0,
                                                                                  "cmd": " ".join(p.cmdline())[:160]})
                except psutil.Error:
                    continue
                entry["peak_rss"] = max(entry["peak_rss"], rss)
                now = max(now, rss)
            largest[0] = now
            time.sleep(0.1)

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line.rstrip("\n")))
            if stop_after and stop_at[0] is None and stop_after in line:
                stop_at[0] = time.perf_counter() + grace

    threads = [threading.Thread(target=poll, daemon=True), threading.Thread(target=read, daemon=True)]
    for t in threads:
        t.start()
    ended = None  # why the bench ended the step, if it did
    while proc.poll() is None and ended is None:
        elapsed = time.perf_counter() - started
        if kill_at is not None and elapsed >= kill_at:
            ended = "killed"
        elif stop_at[0] is not None and time.perf_counter() >= stop_at[0]:
            ended = "stopped in the evaluation"
        elif limit_s is not None and elapsed >= limit_s:
            ended = f"stopped at the {limit_s:.0f} s limit"
        elif ceiling_gb is not None and largest[0] > ceiling_gb * GB:
            ended = f"stopped over {ceiling_gb:g} GB"
        else:
            time.sleep(0.05)
    if ended is not None:
        proc.send_signal(signal.SIGKILL if ended == "killed" else signal.SIGTERM)
    proc.wait()
    wall = time.perf_counter() - started
    lingering = reap_descendants()
    done.set()
    for t in threads:
        t.join(timeout=5)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    output = "\n".join(line for _, line in lines)
    if expect_ok and ended is None and proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{output[-3000:]}")
    by_role = {role: sorted((p["peak_rss"] / GB for p in processes.values() if p["role"] == role), reverse=True)
               for role in ("main", "worker", "import server")}
    result = {"command": " ".join(command[1:]), "wall_s": wall, "cpu_s": cpu, "returncode": proc.returncode, "ended": ended,
              "main_peak_rss_gb": max(by_role["main"], default=0.0), "worker_peak_rss_gb": by_role["worker"],
              "import_server_peak_rss_gb": max(by_role["import server"], default=0.0), "lingering": lingering,
              "processes": sorted(processes.values(), key=lambda p: p["pid"]), "load_before": load_before, "load_after": os.getloadavg()[0],
              "output": output[-6000:]}
    print(f"{label}: {wall:.1f} s wall, {cpu:.1f} CPU-s, main {result['main_peak_rss_gb']:.2f} GB, workers "
          f"{[round(w, 2) for w in result['worker_peak_rss_gb']]} GB{', ' + ended if ended else ''}", flush=True)
    return result


def reap_descendants(timeout: float = 60.0) -> int:
    """Wait for what a step left behind (re-parented here), then kill it by pid; how many had to be killed."""
    left = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(left, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)
    return len(alive)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def found(pattern: str, text: str) -> int | None:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


# ---- extraction -----------------------------------------------------------------------------------------------
def committed_clips(store: Path) -> int:
    """Clips whose faces are committed (read straight from the store, as a resume would)."""
    from stores.store import FeatureStore

    faces = FeatureStore.open(store).feature_sets("faces")
    return int(faces[0].done().sum()) if faces else 0


def chunk_digests(store: Path) -> dict[str, str]:
    """sha256 of every chunk file (`.../c/...`) from the store's checksum list: what byte identity is judged on."""
    from stores.integrity import read_checksums

    return {rel: entry["sha256"] for rel, entry in read_checksums(store).items() if "/c/" in rel or rel.startswith("c/")}


def kill_and_resume(py: list[str], extract: list[str], reference: Path, killed: Path, at: float, clips: int) -> dict:
    """Extraction into `killed`, SIGKILL at `at` s, resumed, verified and compared with the uninterrupted `reference`.

    With room for both stores: `cli.py diff` (content). Without: the reference's chunk checksums are kept, the
    reference deleted, and the resumed store (then the store the rest of the rehearsal uses, at the reference's
    path) must have the same bytes in every chunk file."""
    size, free = du(reference), shutil.disk_usage(reference.parent).free
    separate = free > 1.15 * size + 2 * GB
    saved = None if separate else chunk_digests(reference)
    if not separate:
        shutil.rmtree(reference)
        killed = reference
    command = [a if a != str(reference) else str(killed) for a in extract]
    result = {"compared_with": "cli.py diff against the uninterrupted reference store" if separate
              else "the reference's chunk checksums (no room for two stores: the reference was deleted first)",
              "kill_after_s": at, "first": measured(command, "extract, killed with SIGKILL half way", kill_at=at)}
    result["committed_at_kill"] = committed_clips(killed)
    print(f"killed with {result['committed_at_kill']} of {clips} clips committed", flush=True)
    result["resume"] = measured(command, "resume")
    result["resume"]["processed"] = found(r"(\d+) processed", result["resume"]["output"])
    result["verify"] = measured([*py, "verify", "--store", str(killed)], "verify the resumed store", expect_ok=False)
    if separate:
        result["diff"] = measured([*py, "diff", str(reference), str(killed)], "diff against the reference", expect_ok=False)
        result["identical"] = result["diff"]["returncode"] == 0
        shutil.rmtree(killed)
    else:
        now = chunk_digests(killed)
        result["identical"] = now == saved
        result["chunk_files_compared"] = len(saved)
        result["chunk_files_differing"] = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))[:20]
    result["verified"] = result["verify"]["returncode"] == 0
    return result


# ---- training -------------------------------------------------------------------------------------------------
def train_run(py: list[str], store: Path, runs: Path, encoder: str, steps: int, *, fusion: str | None = None, streamed: bool = False,
              batch: int = 16, fuse_on_device: bool = False, grace: float | None = None, limit_s: float | None = None,
              ceiling_gb: float | None = None) -> dict:
    """`train --max-steps` for one encoder; with `grace`, stopped that long after its steps, in the evaluation that follows
    (at full size on a CPU the validation pass alone takes minutes to an hour, and reads as the steps read, without
    gradients). The copy of the best epoch's parameters, made after the validation pass, is then not measured: the
    parameter count is recorded so that its size can be read beside the peak."""
    name = f"{encoder}-{fusion or 'default'}-b{batch}{'-streamed' if streamed else ''}"
    out = runs / name
    shutil.rmtree(out, ignore_errors=True)
    command = [*py, "train", "--encoder", encoder, "--modality", "av", "--store", str(store), "--epochs", "1000", "--max-steps", str(steps),
               "--batch-size", str(batch), "--out", str(out), "--no-progress"]
    command += ["--fusion", fusion] if fusion else []
    command += ["--max-memory-gb", "0"] if streamed else []
    command += ["--fuse-on-device"] if fuse_on_device else []
    run = measured(command, f"train {name}", stop_after=f"stopped after {steps} optimiser steps" if grace is not None else None, grace=grace or 0.0,
                   limit_s=limit_s, ceiling_gb=ceiling_gb, expect_ok=False)  # one encoder failing is a result, not the end of the rehearsal
    text = run["output"]
    path = re.search(r"data: (in memory|streamed) \((.*)\)", text)
    rate = re.search(r"stopped after (\d+) optimiser steps \(--max-steps\): (\d+) training samples in ([\d.]+) s, ([\d.]+) samples/s", text)
    params = re.search(r"encoder \S+ \(([\d,]+) params\)", text)
    run.update(encoder=encoder, fusion=fusion, batch=batch, streamed_asked=streamed, fuse_on_device=fuse_on_device,
               path=path.group(1) if path else None, why=path.group(2) if path else None,
               steps=int(rate.group(1)) if rate else None, samples=int(rate.group(2)) if rate else None,
               train_seconds=float(rate.group(3)) if rate else None, samples_per_second=float(rate.group(4)) if rate else None,
               complete=(out / "metrics.json").is_file(), peak_rss_gb=max([run["main_peak_rss_gb"], *run["worker_peak_rss_gb"]]),
               parameters=int(params.group(1).replace(",", "")) if params else None)
    run["met"] = run["peak_rss_gb"] <= TARGETS["training_rss_gb"] and run["steps"] == steps
    shutil.rmtree(out, ignore_errors=True)
    return run


def survey_plan() -> list[tuple[str, str | None, bool]]:
    """(encoder, fusion, fuse on the device) for every registered encoder, as a user's plain `train` would read it."""
    from encoders.registry import get_spec, list_models

    plan = []
    for name in list_models():
        spec = get_spec(name)
        if spec.square_input:
            plan.append((name, SQUARE_FUSION, True))  # concat (224 x 448) is not square
        else:
            plan.append((name, None, False))  # train's default: concat for 2D/3D, the pair models and the ladder fuse themselves
    return plan


def prepare_ladder(py: list[str], extract: list[str], store: Path) -> dict:
    """The ladder's inputs: LLD sequences (a re-run with --lld decodes the audio again) and face embeddings."""
    return {"lld": measured([*extract, "--lld"], "extract --lld"),
            "embed": measured([*py, "embed", "--store", str(store), "--backbone", "vgg16", "--size", "32", "--no-progress"], "embed (vgg16 at 32 px)")}


# ---- the rehearsal --------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=None, help="clips in all, the held-back actor's 82 included (default: all 7,442)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default /var/tmp/avstore-scale-<clips>; removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (corpus, store)")
    parser.add_argument("--encoder-steps", type=int, default=50, help="optimiser steps of the resnet18 and simple3d runs")
    parser.add_argument("--max-steps", type=int, default=2, help="optimiser steps of each encoder's run in the memory survey")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds a training run may spend evaluating after its steps before it is stopped")
    parser.add_argument("--full-evaluation", action="store_true", help="let the resnet18 and simple3d runs evaluate every split (~1.5 h more at full size)")
    parser.add_argument("--survey-limit", type=float, default=900.0, help="seconds a survey run may take in all before it is stopped")
    parser.add_argument("--ceiling-gb", type=float, default=8.0, help="a survey run whose processes together pass this is stopped (the machine is shared)")
    parser.add_argument("--encoders", nargs="+", default=None, help="the survey's encoders (default: every registered one)")
    parser.add_argument("--no-ladder", action="store_true", help="leave the ladder out of the survey (it needs extract --lld and embed first)")
    parser.add_argument("--sample-actors", type=int, default=6, help="actors of the sample corpus the links point to")
    args = parser.parse_args()
    names = crema_d_names()
    held = [n for n in names if n.startswith(HELD_BACK + "_")]
    base = pick(names, (args.clips or len(names)) - len(held))
    label = f"scale-{len(base) + len(held)}"
    work = args.work or Path("/var/tmp") / f"avstore-scale-{len(base) + len(held)}"
    py = [sys.executable, str(REPO / "cli.py")]
    sample, corpus, store = work / "sample", work / "corpus", work / "store.zarr"
    started = time.time()
    result: dict = {"clips": len(base) + len(held), "base_clips": len(base), "actors": len({n.split('_')[0] for n in base}), "held_back_actor": HELD_BACK,
                    "held_back_clips": len(held), "targets": TARGETS, "arguments": {k: str(v) for k, v in vars(args).items()},
                    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))}
    try:
        for stale in (store, work / "killed.zarr", corpus, work / "runs"):
            shutil.rmtree(stale, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        if not sample.is_dir():
            subprocess.run([*py, "sample", "--out", str(sample), "--actors", str(args.sample_actors), "--sentences", "2"], check=True, cwd=REPO)
        link(base, sample, corpus)
        extract = [*py, "extract", "--dataset", "crema-d", "--root", str(corpus), "--store", str(store), "--no-progress"]

        reference = result["extract"] = measured(extract, f"extract {len(base)} clips")
        reference["processed"] = found(r"(\d+) processed", reference["output"])
        result["store_bytes_per_clip"] = du(store) / len(base)
        result["verify"] = measured([*py, "verify", "--store", str(store)], "verify")
        result["noop_rerun"] = measured(extract, "no-op re-run")
        result["kill"] = kill_and_resume(py, extract, store, work / "killed.zarr", reference["wall_s"] / 2, len(base))

        link(held, sample, corpus)
        added = result["held_back"] = measured(extract, f"add actor {HELD_BACK} ({len(held)} clips)")
        text = added["output"]
        added.update(processed=found(r"(\d+) processed", text), files_hashed=found(r"checksums: (\d+) files hashed", text),
                     files_in_store=sum(1 for p in store.rglob("*") if p.is_file()))
        result["verify_after_add"] = measured([*py, "verify", "--store", str(store)], "verify after the addition")
        result["store_bytes"] = du(store)

        runs = work / "runs"
        grace = None if args.full_evaluation else args.grace
        result["training"] = [train_run(py, store, runs, encoder, args.encoder_steps, streamed=streamed, grace=grace)
                              for encoder in ("resnet18", "simple3d") for streamed in (False, True)]
        survey = [s for s in survey_plan() if args.encoders is None or s[0] in args.encoders]
        if args.no_ladder:
            survey = [s for s in survey if s[0] != "ladder"]
        elif any(s[0] == "ladder" for s in survey):
            result["ladder_inputs"] = prepare_ladder(py, extract, store)
        result["survey"] = []
        for encoder, fusion, on_device in survey:
            limits = dict(fusion=fusion, fuse_on_device=on_device, grace=args.grace, limit_s=args.survey_limit, ceiling_gb=args.ceiling_gb)
            run = train_run(py, store, runs, encoder, args.max_steps, **limits)
            result["survey"].append(run)
            if run["peak_rss_gb"] > TARGETS["training_rss_gb"]:  # over 3 GB at the default batch: how much of it is the model step?
                result["survey"] += [train_run(py, store, runs, encoder, args.max_steps, batch=b, **limits) for b in (8, 4)]
        result["seconds"] = time.time() - started
        result["machine"] = machine()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = REPO / "bench" / "results"
    (out / f"{label}.json").write_text(json.dumps(result, indent=2))
    (out / f"{label}.md").write_text(markdown(result))
    print(markdown(result))


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "memory_gb": psutil.virtual_memory().total / GB}


# ---- the report -----------------------------------------------------------------------------------------------
def met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def gb(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " GB" if values else "none"


def extraction_rows(r: dict) -> list[str]:
    t, e, n, k, h = r["targets"], r["extract"], r["base_clips"], r["kill"], r["held_back"]
    cpu, workers, noop = e["cpu_s"] / n, e["worker_peak_rss_gb"], r["noop_rerun"]
    ok = "ok" if r["verify"]["returncode"] == 0 else "FAILED"
    return [
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| wall time | {e['wall_s']:.0f} s ({e['wall_s'] / n:.3f} s per clip) | | |",
        f"| CPU-seconds per clip, all processes | {cpu:.3f} ({e['cpu_s']:.0f} CPU-s) | <= {t['cpu_s_per_clip']} | {met(cpu <= t['cpu_s_per_clip'])} |",
        f"| store MB per clip | {r['store_bytes_per_clip'] / MB:.2f} | | |",
        f"| peak RSS, client | {e['main_peak_rss_gb']:.2f} GB | <= {t['client_rss_gb']:g} GB | {met(e['main_peak_rss_gb'] <= t['client_rss_gb'])} |",
        f"| peak RSS, each Dask worker | {gb(workers)} (import server {e['import_server_peak_rss_gb']:.2f} GB) | <= {t['worker_rss_gb']:g} GB | "
        f"{met(bool(workers) and max(workers) <= t['worker_rss_gb'])} |",
        f"| `verify` | {r['verify']['wall_s']:.1f} s, {ok} | | |",
        f"| no-op re-run | {noop['wall_s']:.1f} s ({noop['cpu_s']:.1f} CPU-s) | <= {t['noop_s']:g} s | {met(noop['wall_s'] <= t['noop_s'])} |",
        f"| kill -9 of the client at {k['kill_after_s']:.0f} s (half the wall time) | {k['committed_at_kill']} of {n} clips committed; "
        f"{k['first']['lingering']} process(es) still alive 60 s later, killed | | |",
        f"| resume | {k['resume']['wall_s']:.0f} s, {k['resume']['processed']} clips processed; peak RSS client "
        f"{k['resume']['main_peak_rss_gb']:.2f} GB, workers {gb(k['resume']['worker_peak_rss_gb'])} | | |",
        f"| resumed store: `verify`, and compared with {k['compared_with']} | verify {'ok' if k['verified'] else 'FAILED'}; "
        f"{'identical' if k['identical'] else 'DIFFERENT'} | verify ok, identical | {met(k['verified'] and k['identical'])} |",
        f"| actor {r['held_back_actor']} added | {h['processed']} clips processed in {h['wall_s']:.1f} s ({h['cpu_s']:.0f} CPU-s); "
        f"re-hashed {h['files_hashed']} of {h['files_in_store']} files | only its {r['held_back_clips']} clips | "
        f"{met(h['processed'] == r['held_back_clips'])} |",
        f"| `verify` after the addition | {r['verify_after_add']['wall_s']:.1f} s, {'ok' if r['verify_after_add']['returncode'] == 0 else 'FAILED'} | | |",
    ]


def training_rows(runs: list[dict], target: float) -> list[str]:
    rows = ["| encoder (parameters) | input | batch | path (why) | steps | samples/s | peak RSS: trainer | loader workers | run | "
            f"every process <= {target:g} GB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        how = "streaming asked" if run["streamed_asked"] else "default"
        where = f"{run['path']} ({run['why'].split('; --max-memory-gb')[0]})" if run["path"] else "not reached"
        done = "complete" if run["complete"] else run["ended"] or f"FAILED ({run['returncode']})"
        rate = f"{run['samples_per_second']:.1f}" if run["samples_per_second"] else "-"
        cut = run["steps"] is None and run["ended"] not in (None, "stopped in the evaluation")  # stopped during its steps: a lower bound
        size = "?" if not run["parameters"] else f"{run['parameters'] / 1e6:.1f} M" if run["parameters"] >= 1e5 else f"{run['parameters']:,}"
        rows.append(f"| {run['encoder']} ({size}) | {run['fusion'] or 'default'}{' fused on the device' if run['fuse_on_device'] else ''} | "
                    f"{run['batch']} | {how}: {where} | {run['steps'] or '-'} | {rate} | {'>= ' if cut else ''}{run['main_peak_rss_gb']:.2f} GB | "
                    f"{gb(run['worker_peak_rss_gb'])} | {done}, {run['wall_s']:.0f} s | {met(run['met'])} |")
    return rows


def markdown(r: dict) -> str:
    m, t, args = r["machine"], r["targets"], r["arguments"]
    lines = [
        f"# Full-size rehearsal: {r['clips']:,} clips ({r['base_clips']:,} from {r['actors']} actors, then actor {r['held_back_actor']}'s "
        f"{r['held_back_clips']})",
        "",
        f"`bench/scale.py --clips {r['clips']} --encoder-steps {args['encoder_steps']} --max-steps {args['max_steps']}` on {m['cpus']} cores "
        f"({m['processor']}, {m['memory_gb']:.0f} GB, torch {m['torch']}), started {r['started']}, {r['seconds'] / 60:.0f} min in all. "
        "Extraction at the defaults: 224 px, 512 mels, T=16, fusion concat, 2 local Dask workers. CPU-seconds count every process "
        "of a step (reaped by the bench as a subreaper); the load average before and after each step is in the JSON.",
        "",
        "## Extraction",
        "",
        *extraction_rows(r),
        "",
        "## Training from the store (CPU, `train --max-steps`)",
        "",
        f"resnet18 (2D concat, 224 x 448) and simple3d (3D concat) for {args['encoder_steps']} optimiser steps at batch 16, at the path "
        f"`train` picks by its memory budget and streamed ({'each run evaluated in full' if args['full_evaluation'] == 'True' else 'each stopped ' + format(float(args['grace']), 'g') + ' s into the evaluation after its steps'}). "
        "Samples/s: the training samples over the seconds of the steps (first batch included), from train.log. Peak RSS of every "
        f"process of the run (trainer, loader workers; shared batch buffers count in each) against {t['training_rss_gb']:g} GB.",
        "",
        *training_rows(r["training"], t["training_rss_gb"]),
        "",
        f"Every registered encoder at its default CPU batch (16) for {args['max_steps']} steps, and at batch 8 and 4 when over "
        f"{t['training_rss_gb']:g} GB. A run is stopped {float(args['grace']):g} s into the evaluation after its steps, at {float(args['survey_limit']):g} s, "
        f"or when one of its processes passes {float(args['ceiling_gb']):g} GB (then its peak is a lower bound, `>=`). The copy of the best "
        "epoch's parameters (4 bytes per parameter) that a whole run adds after the validation pass is not in these peaks. "
        "Square-input encoders read `stack` fused on the device; pair models and the ladder fuse themselves.",
        "",
        *training_rows(r["survey"], t["training_rss_gb"]),
    ]
    if "ladder_inputs" in r:
        li = r["ladder_inputs"]
        lines += ["", f"The ladder's inputs: `extract --lld` took {li['lld']['wall_s']:.0f} s and `embed --backbone vgg16 --size 32` "
                  f"{li['embed']['wall_s']:.0f} s."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
