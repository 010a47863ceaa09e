"""`cli.py extract` as one function: a corpus into a store, with the options checked first and the outcome told in a
few lines (what was computed, each clip that is not ok, what the store now holds) and an exit code.

The work itself is pipeline/run.py's `run_extract`; this module is what a user sees around it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.audio import MelConfig
from pipeline.compare import LldConfig
from pipeline.corpora import class_list
from pipeline.faces import FaceConfig
from pipeline.fuse import list_fusions
from pipeline.hardware import resolve_device
from pipeline.run import ExtractConfig, ExtractSummary, committed_clips, run_extract
from pipeline.splits import corpus_records
from pipeline.tracking import FACE_POLICIES
from stores.location import check_writable, store_or_default
from stores.splits import missing_split
from stores.store import FeatureStore

INTERRUPTED = 130
"""The exit code of a run stopped by Ctrl-C (the shell's code for SIGINT)."""


class ExtractOptionError(ValueError):
    """An extract option no run can use; the message lists the valid choices."""


def extract_corpus(dataset: str, root: Path | None, store: str | None, meta: Path | None, *, classes: str | None,
                   split_seed: int | None, frames: int, size: int, margin: float, detect_every: int, min_coverage: float,
                   face_policy: str, scene: bool, sr: int, n_fft: int, hop: int, n_mels: int, fusion: list[str], lld: bool,
                   ffmpeg_timeout: float, device: str, started: float | None = None, **run_options) -> int:
    """Extract `dataset` (its folder: `root`, default data/<dataset>) into `store` (default: the dataset's) and print
    the outcome; the exit code is 0 when every clip is ok or has an expected media status, 1 when a clip ended in
    `error` or none is usable, 130 when interrupted. The options are the CLI's (FaceConfig, MelConfig, ExtractConfig
    fields under its names); `run_options` go to run_extract (workers, scheduler, progress, commit_every, retry_failed)."""
    if face_policy not in FACE_POLICIES:
        raise ExtractOptionError(f"unknown --face-policy '{face_policy}'; choose one of {', '.join(FACE_POLICIES)}")
    unknown = [f for f in fusion if f not in list_fusions()]
    if unknown:
        raise ExtractOptionError(f"unknown fusion '{unknown[0]}'; choose from: {', '.join(sorted(list_fusions()))}")
    root = root or Path("data") / dataset
    store = store_or_default(store, dataset)
    device = resolve_device(device)
    records = corpus_records(dataset, root, meta, split_seed, assign=False, classes=classes)
    class_names, classes_declared = class_list(dataset, records, classes)
    config = ExtractConfig(
        faces=FaceConfig(frames=frames, size=size, margin=margin, detect_every=detect_every, min_coverage=min_coverage, policy=face_policy, scene=scene),
        mel=MelConfig(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels),
        fusions=tuple(dict.fromkeys(fusion)), ffmpeg_timeout=ffmpeg_timeout, lld=LldConfig() if lld else None,
    )
    check_writable(store)
    try:
        result = run_extract(records, store, config, dataset=dataset, class_names=class_names, split_seed=split_seed, device=device,
                             started=started, classes_declared=classes_declared, **run_options)
    except KeyboardInterrupt:
        return interrupted(store, config, len(records))
    print_outcome(result, store, lld)
    code, verdict = result.verdict()
    print(verdict)
    return code


def print_outcome(result: ExtractSummary, store: str, lld: bool) -> None:
    """What the run did, each clip that is not ok and why, and what the store holds now."""
    for line in result.changes:  # labels or speakers the corpus corrected, classes new to the store
        print(line)
    print(f"{result.clips} clips: {result.computed} processed (faces {result.faces_computed}, audio {result.audio_computed}"
          f"{f', lld {result.lld_computed}' if lld else ''}), "
          f"{result.retried} of them redone (source changed or --retry-failed), {result.skipped} already done; "
          f"{result.fusions_computed} fused entries computed; {result.seconds:.1f} s, {result.clips_per_second:.2f} clips/s"
          + (f" (first clip after {result.timings['first_clip']:.1f} s: start-up)" if "first_clip" in result.timings else ""))
    print("status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        print(f"  not ok: {clip_id}: {why}")
    print(f"store:  {store}  (feature sets: {', '.join(result.feature_sets)})")
    table = FeatureStore.open(store).clip_table()
    no_split = missing_split([str(s) for s in table["speaker"]], [str(p) for p in table["split"]], store)
    if no_split:  # one or two videos: extracted, but `train` needs a split first
        print(f"splits: {no_split}")
    if result.files_hashed:
        print(f"checksums: {result.files_hashed} files hashed here (metadata, small arrays, files no recorded sum describes); "
              "the workers hashed the shards they wrote")


def interrupted(store: str, config: ExtractConfig, n_records: int) -> int:
    """Ctrl-C: one line saying what is kept and how to go on. The writer finished the batch it held, so every clip
    counted is whole; the rest are redone by a re-run."""
    done, clips = committed_clips(store, config)
    print(f"interrupted: {done} of {clips or n_records} clips committed in {store}; re-run the same command to resume "
          "(committed clips are kept; until then train refuses this store)", file=sys.stderr)
    return INTERRUPTED
