"""Extraction as a whole: plan what is missing, compute it on a Dask cluster, write it into the store.

The orchestration holds no feature logic (that is extract.py): it finds the rows whose feature sets are not
yet done and submits one task per span of whole shards to a cluster of processes (one MTCNN and one mel
filterbank per worker, loaded once; pipeline/spans.py). A task computes its clips, fuses them, and writes the
shards of every large array into the store itself (stores/shard_files.py); this process, the client, receives
only the small per-clip values and the sums of the files written, and commits (pipeline/commit.py). A fusion
asked for later, or a row of which only one stage was redone, is derived from the stored crops and chunks, so
it costs no decoding and no detection.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.audio import MelConfig
from pipeline.extract import (
    TaskResult, audio_arrays, audio_params, decode_clip_audio, extract_audio, extract_faces, extract_lld,
    face_arrays, face_params, fuse_clip, fusion_arrays, fusion_params, lld_arrays, lld_params, probe_timeline, read_notes, stored_arrays,
)
from pipeline.compare import LldConfig
from pipeline.faces import FaceConfig
from pipeline.media import FFMPEG_TIMEOUT_S
from pipeline.numeric import numeric_environment, pinned
from pipeline.records import ClipRecord
from pipeline.sources import file_signature, source_changed
from pipeline.labels import LabelError
from pipeline.splits import SplitError, add_to_store
from pipeline.commit import CommitTargets, commit_span
from pipeline.spans import Span, SpanResult, plan_spans, rows_per_span, sharded_arrays, small_values
from pipeline.workers import local_cluster, start_import_server
from stores.integrity import checksums_match_listing, refresh_checksums
from stores.location import Location, locate
from stores.lock import WriterLock
from stores.provenance import provenance
from stores.shard_files import FileSum, ShardWriteError, write_rows
from stores.state import UNFINISHED, mark_finished, mark_unfinished
from stores.store import SHARD_ROWS, FeatureSet, FeatureStore, StoreError, store_exists

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    """What to compute. Defaults are the comparison study's values."""

    faces: FaceConfig = FaceConfig()
    mel: MelConfig = MelConfig()
    fusions: tuple[str, ...] = ("concat",)
    fusion_seed: int = 0  # orders the rfas sequences
    ffmpeg_timeout: float = FFMPEG_TIMEOUT_S  # seconds to decode one clip; not in any fingerprint (no number depends on it)
    lld: LldConfig | None = None  # ComParE LLD sequences (seed 002), from the audio decoded for the mel; None: not made


@dataclass
class ExtractSummary:
    clips: int
    computed: int
    skipped: int
    status: Counter = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)
    feature_sets: list[str] = field(default_factory=list)
    faces_computed: int = 0
    audio_computed: int = 0
    lld_computed: int = 0
    fusions_computed: int = 0
    retried: int = 0  # rows redone because their source changed or --retry-failed asked
    errors: dict[str, str] = field(default_factory=dict)  # clip id -> what failed in our code (status `error`)
    changes: list[str] = field(default_factory=list)  # one line per kind of change to clips already stored (reconcile.py)
    usable: int = 0  # clips whose faces and audio are both ok
    files_hashed: int = 0  # by the checksum update: only files no task or earlier list gave the sum of (metadata, small arrays)
    hashed: dict[str, int] = field(default_factory=dict)  # those files -> their sizes
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds: first_clip (the first task back, from the call), committing, fusion (from the store)

    def verdict(self) -> tuple[int, str]:
        """Exit code and one line: 1 when our code failed on a clip or no clip at all is usable, else 0
        (clips whose media are broken are expected: each has its status and reason)."""
        reasons = Counter(why.split(":", 1)[0] if why else "" for why in (self.errors or self.failures).values())
        commonest = f"; commonest reason: {reasons.most_common(1)[0][0]}" if reasons else ""
        if self.errors:
            return 1, f"FAILED: {len(self.errors)} clip(s) ended in an unexpected error (a bug, not the media){commonest}"
        if self.usable == 0:
            return 1, f"FAILED: no clip has both faces and audio ok{commonest}"
        if self.failures:
            return 0, f"ok: {self.usable} usable clips; {len(self.failures)} not ok, each with an expected media status{commonest}"
        return 0, f"ok: all {self.usable} clips usable"

    @property
    def clips_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


@pinned  # one thread for every kernel: the stored bytes must not depend on the worker's settings (numeric.py)
def process_clip(record: ClipRecord, config: ExtractConfig, want_faces: bool, want_audio: bool, device: str,
                 want_lld: bool = False) -> tuple[TaskResult | None, TaskResult | None, TaskResult | None, dict[str, dict[str, np.ndarray]]]:
    """The Dask task: faces, audio and LLD results (None for what was not asked), and the fused tensors of every
    configured fusion when faces and audio both ran here and are ok (fusion name -> arrays), so the writer only
    writes. The container is opened once and the audio decoded once, for the mel and the LLDs alike. Broken
    media become statuses inside the stages; an exception here is a bug, and the caller records it as status
    `error` (run.py's compute), which fails the run."""
    video_source = file_signature(record.video_path)
    audio_source = file_signature(record.audio_path) if record.audio_path else video_source
    timeout = config.ffmpeg_timeout
    timeline = probe_timeline(record, config.faces.frames, config.mel.max_duration, timeout)  # one open, for every stage
    try:
        faces = extract_faces(record, config.faces, config.mel.max_duration, device, timeline, timeout) if want_faces else None
        decoded = decode_clip_audio(record, config.mel, timeline, timeout) if want_audio or want_lld else None
        audio = extract_audio(record, config.mel, config.faces.frames, config.faces.size, timeline, timeout, decoded) if want_audio else None
        lld = extract_lld(decoded, timeline, config.lld, config.mel) if want_lld else None
    finally:
        if not isinstance(timeline, TaskResult):
            timeline[0].close()
    fused = {}
    if faces is not None and audio is not None and faces.status == audio.status == "ok":
        fused = {name: fuse_clip(name, faces.arrays, audio.arrays, record.clip_id, config.fusion_seed) for name in config.fusions}
    # copies: a failed probe is one TaskResult shared by the stages, and each records its own source file
    return (None if faces is None else dataclasses.replace(faces, source=video_source),
            None if audio is None else dataclasses.replace(audio, source=audio_source),
            None if lld is None else dataclasses.replace(lld, source=audio_source), fused)


STAGES = ("faces", "audio", "lld")
SKIPPED_FUSION = "faces or audio not ok for this clip"


def shards_task(span: Span, config: ExtractConfig, device: str) -> SpanResult:
    """The Dask task: compute the span's clips (process_clip), write the shards of every large array they fill
    straight into the store (stores/shard_files.py), and return only what is small: per clip, each stage's
    status and small arrays, and the sums of the files written. The client then commits (pipeline/commit.py).

    A clip that raises gets task_error's results, made here where its traceback still exists (status `error`,
    left uncommitted, redone by the next run), and the others go on. Fusions are committed from here for every
    clip whose faces and audio both ran here: ok with the fused tensors, or `skipped` when one stage is not ok.
    Encoded chunks are held until the span's shards are written: ~2 MB per clip at the defaults."""
    keep_freed_memory()
    where = locate(span.store)
    fusions = [kind for kind in span.arrays if kind.startswith("fusion-")]
    chunks: dict[tuple[str, str], dict[int, bytes | None]] = {}
    stages = []
    for row, record, want_faces, want_audio, want_lld in span.clips:
        try:
            *results, fused = process_clip(record, config, want_faces, want_audio, device, want_lld)
        except Exception as err:  # a bug in one clip's task: status `error`, the run exits 1
            *results, fused = task_error(err, want_faces, want_audio, want_lld)
        clip = {kind: result for kind, result in zip(STAGES, results) if result is not None}
        if want_faces and want_audio and "error" not in (clip["faces"].status, clip["audio"].status):
            for kind in fusions:
                arrays = fused.get(kind.removeprefix("fusion-"))
                clip[kind] = TaskResult("ok", "", arrays) if arrays is not None else TaskResult("skipped", SKIPPED_FUSION)
        for kind, result in clip.items():
            for name, array in span.arrays.get(kind, {}).items():
                value = (result.arrays or {}).get(name)
                chunks.setdefault((kind, name), {})[int(row)] = None if value is None else array.encode(value)
        stages.append({kind: small_values(result, span.arrays.get(kind, {})) for kind, result in clip.items()})
        del results, fused, clip  # this clip's arrays: before the next clip's
    files: dict[str, FileSum] = {}
    for (kind, name), rows in chunks.items():
        files.update(write_rows(where, span.arrays[kind][name], rows))
    return SpanResult(span.rows, stages, files)


def failed_span(span: Span, exception: BaseException) -> SpanResult:
    """A task that failed as a whole (its worker died on every retry): each clip `error` for what it was asked."""
    stages = [{kind: r for kind, r in zip(STAGES, task_error(exception, wf, wa, wl)[:3]) if r is not None} for _, _, wf, wa, wl in span.clips]
    return SpanResult(span.rows, stages)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Let this process's allocator keep the memory a clip frees for the next clip (glibc; elsewhere nothing).

    Why: Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ),
    and glibc, given any such variable, stops raising its mmap threshold. Every array over 128 KiB (a clip's frames,
    crops, chunks: tens of MB) was then mapped fresh and unmapped again: ~30,000 page faults and 228 instead of
    179 CPU-ms per clip, measured in one process with and without the variable. Arrays up to 32 MiB come from the
    heap now, and the heap is trimmed when 128 MiB sit free at its top. Returns whether glibc took the settings."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 128 << 20))


def task_error(exception: BaseException, want_faces: bool, want_audio: bool, want_lld: bool = False) -> tuple:
    """A task that raised: status `error` for what it was asked, with the exception and where it was raised."""
    import traceback

    where = traceback.extract_tb(exception.__traceback__)[-1:] if exception.__traceback__ else []
    at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
    reason = f"{type(exception).__name__}: {exception}{at}"
    return (*(TaskResult("error", reason) if wanted else None for wanted in (want_faces, want_audio, want_lld)), {})


def open_writer(location: str, dataset: str, class_names: list[str], split_seed: int | None) -> FeatureStore:
    if store_exists(location):
        store = FeatureStore.open(location, mode="r+")
        if store.info["dataset"] != dataset:
            raise StoreError(f"store '{location}' holds dataset '{store.info['dataset']}', not '{dataset}'; use another --store")
        return store
    return FeatureStore.create(location, dataset=dataset, class_names=class_names, split_seed=split_seed or 0)


def run_extract(
    records: list[ClipRecord], location: str | Path, config: ExtractConfig, *, dataset: str, class_names: list[str],
    split_seed: int | None = None, workers: int = 2, scheduler: str | None = None, device: str = "cpu", progress: bool = True,
    commit_every: int = SHARD_ROWS, retry_failed: bool = False, started: float | None = None, classes_declared: bool = True,
) -> ExtractSummary:
    """Compute what the store lacks for `records` and commit it, one task of whole shards at a time.

    A task holds `commit_every` clips rounded to whole shards (pipeline/spans.py): it writes its shards and its
    clips are committed when it finishes, so a smaller one loses less work to a crash. A committed row
    is redone when its source file changed since (size, mtime, hash of its ends), and a non-ok one also when
    `retry_failed`; an ok row whose source is unchanged never is. Speakers the store has recorded keep their
    partition; new ones get theirs by the stable rule (stores/splits.py) with the store's seed, or the records'
    own splits when every record has one. Labels are numbered by the store's class list: `class_names` starts a
    new store and grows an existing one at its end; with `classes_declared` it states numbers, and one that
    would renumber the store is refused. A stored clip whose label or speaker the corpus changed is updated,
    and told in the summary's `changes`. `split_seed=None`: the store's seed. `started`: the time.perf_counter()
    the summary's seconds and timings count from (the CLI passes its command's start; default: this call).
    """
    started = time.perf_counter() if started is None else started
    location = str(location)
    where = locate(location)  # a local folder or a URL (s3://...): same code below
    where.prepare_for_writing()
    with WriterLock(where) as lock:
        incremental = not lock.took_over and checksums_match_listing(where)  # the last list is current: refresh it
        was_unfinished = where.exists(UNFINISHED)  # left so by an interrupted run: stays so until one finishes
        mark_unfinished(where)  # before the first write: readers refuse the store until this run has finished (stores/state.py)
        remove_partial_files(where)
        store = open_writer(location, dataset, class_names, split_seed)
        sets_before = len(store.feature_sets())
        try:
            rows, wrote, told = add_to_store(store, records, seed=split_seed, class_names=class_names,  # a split or class list
                                             classes_declared=classes_declared)  # disagreement: refused, nothing written
        except (SplitError, LabelError):
            if not was_unfinished:
                mark_finished(where)  # refused before any write: the store is as it was
            raise
        if sets_before == 0 and len(records) and workers > 0 and scheduler is None:
            start_import_server()  # a fresh store: every clip is to compute, so the workers' imports can start now
        who = provenance(device=device)
        faces = store.ensure_feature_set("faces", face_params(config.faces), face_arrays(config.faces), who)
        audio = store.ensure_feature_set(
            "audio", audio_params(config.mel, config.faces.frames, config.faces.size),
            audio_arrays(config.mel, config.faces.frames, config.faces.size), who,
        )
        lld = None if config.lld is None else store.ensure_feature_set(  # --lld: ComParE sequences (seed 002)
            "lld", lld_params(config.lld, config.mel, config.faces.frames), lld_arrays(config.lld, config.mel, config.faces.frames), who)
        audio_paths = [r.audio_path or r.video_path for r in records]
        redo_faces = stale_rows(faces, rows, [r.video_path for r in records], retry_failed)
        redo_audio = stale_rows(audio, rows, audio_paths, retry_failed)
        redo_lld = np.zeros(len(rows), bool) if lld is None else stale_rows(lld, rows, audio_paths, retry_failed)
        invalidate(store, faces, audio, rows[redo_faces | redo_audio], redo_faces, redo_audio, rows)
        if redo_lld.any():
            store.uncommit_rows(lld, rows[redo_lld])
        todo_faces, todo_audio = ~faces.done()[rows], ~audio.done()[rows]
        todo_lld = np.zeros(len(rows), bool) if lld is None else ~lld.done()[rows]
        todo = np.flatnonzero(todo_faces | todo_audio | todo_lld)
        summary = ExtractSummary(
            clips=len(records), computed=len(todo), skipped=len(records) - len(todo),
            faces_computed=int(todo_faces.sum()), audio_computed=int(todo_audio.sum()), lld_computed=int(todo_lld.sum()),
            retried=int((redo_faces | redo_audio | redo_lld).sum()), changes=told,
        )
        summary.feature_sets = [faces.name, audio.name] + ([lld.name] if lld is not None else [])
        known: dict[str, dict] = {}  # the files the tasks wrote -> their checksum entries (stores/shard_files.py)
        fused_sets = {name: store.ensure_feature_set(
            "fusion-" + name, fusion_params(name, faces.fingerprint, audio.fingerprint, config.fusion_seed),
            stored_arrays(name, config.faces.frames, config.faces.size), {**who, **read_notes(name)}) for name in config.fusions}
        if len(todo):
            sets = {"faces": faces, "audio": audio, **({"lld": lld} if lld is not None else {}),
                    **{"fusion-" + name: s for name, s in fused_sets.items()}}
            opened = {kind: dict(s.group.arrays()) for kind, s in sets.items()}  # each zarr.json read once
            large = {kind: sharded_arrays(s, opened[kind]) for kind, s in sets.items()}
            targets = {kind: CommitTargets.of(s, opened[kind], where) for kind, s in sets.items()}
            clips = [(int(rows[i]), records[i], bool(todo_faces[i]), bool(todo_audio[i]), bool(todo_lld[i])) for i in todo]
            target = str(where.local_path.resolve()) if where.is_local else location  # as a worker in another folder sees it
            spans = [Span(target, group, large) for group in plan_spans(clips, rows_per_span(large, commit_every))]
            environments: list[dict] = []
            results = timed_first(compute(spans, config, workers=workers, scheduler=scheduler, device=device, progress=progress,
                                          environments=environments), started, summary.timings)
            errors, summary.fusions_computed = commit_results(store, where, targets, results, known, summary.timings)
            clip_of_row = {int(row): record.clip_id for row, record in zip(rows, records)}
            summary.errors = {clip_of_row[row]: why for row, why in errors.items()}
            fused_on_workers = [(s, summary.fusions_computed) for s in fused_sets.values()]
            for feature_set, computed in ((faces, summary.faces_computed), (audio, summary.audio_computed), (lld, summary.lld_computed),
                                          *fused_on_workers):
                if computed:
                    feature_set.add_numeric_environments(environments)
        fusion_started = time.perf_counter()
        for name in config.fusions:  # rows the workers could not fuse (one stage was already stored): from the store
            fused, n = materialise_fusion(store, name, faces, audio, seed=config.fusion_seed, progress=progress, who=who)
            summary.feature_sets.append(fused.name)
            summary.fusions_computed += n
        summary.timings["fusion_from_store"] = time.perf_counter() - fusion_started
        summary.usable = int((faces.ok() & audio.ok())[rows].sum())
        for feature_set in (faces, audio, *([lld] if lld is not None else [])):
            status, reason = feature_set.status()[rows], feature_set["reason"][:][rows]
            summary.status.update(f"{feature_set.kind}:{s}" for s in status)
            for record, s, why in zip(records, status, reason):
                if s != "ok":
                    summary.failures.setdefault(record.clip_id, f"{feature_set.kind} {s}: {why}")
        for clip_id, why in summary.errors.items():
            summary.failures[clip_id] = f"error (will be retried by the next run): {why}"
        wrote = wrote or summary.computed or summary.fusions_computed or len(store.feature_sets()) > sets_before
        if summary.computed:
            remove_partial_files(where)  # a worker lost mid-write (its task was redone elsewhere) left its temporary file
        if wrote or not checksums_match_listing(where):
            summary.hashed = refresh_checksums(where, store.touched, known, trust_list=incremental)
            summary.files_hashed = len(summary.hashed)
        mark_finished(where)
    summary.seconds = time.perf_counter() - started
    return summary


def timed_first(results, started: float, timings: dict[str, float]):
    """`results` unchanged; timings["first_clip"]: seconds from `started` until the first clip came back (the
    start-up a user waits through: cluster, imports, MTCNN loaded)."""
    for k, item in enumerate(results):
        if k == 0:
            timings["first_clip"] = time.perf_counter() - started
        yield item


def compute(spans: list[Span], config: ExtractConfig, *, workers: int, scheduler: str | None, device: str, progress: bool,
            environments: list[dict] | None = None):
    """Yield each span's SpanResult as its task finishes, from a Dask cluster (or in-process for workers=0).

    `environments` receives the numeric environment of every process that computed clips, once they finished.
    """
    environments = [] if environments is None else environments
    bar = tqdm(total=sum(len(span.clips) for span in spans), desc="extract", unit="clip", disable=not progress, file=sys.stderr)
    if workers == 0 and scheduler is None:
        for span in spans:
            yield shards_task(span, config, device)
            bar.update(len(span.clips))
        bar.close()
        environments.append(numeric_environment())
        return
    from dask.distributed import Client, as_completed

    repo = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
    cluster = None
    if scheduler is None:
        cluster = local_cluster(workers)
    client = Client(cluster or scheduler)
    interrupted = False
    try:
        n_workers = max(workers, len(client.scheduler_info()["workers"]))
        waiting = iter(spans)  # a bounded number in flight: the scheduler holds a few tasks per worker, whatever the corpus
        futures: dict = {}

        def submit(n: int) -> list:
            batch = []
            for span in itertools.islice(waiting, n):
                future = client.submit(shards_task, span, config, device, pure=False, retries=2)
                futures[future] = span
                batch.append(future)
            return batch

        running = as_completed(submit(2 * n_workers + 2))
        for future in running:
            span = futures.pop(future)
            if future.status == "error" and isinstance(future.exception(), ShardWriteError):
                raise future.exception()  # the workers cannot reach the store: every task would fail alike
            result = failed_span(span, future.exception()) if future.status == "error" else future.result()
            future.release()
            yield result
            bar.update(len(span.clips))
            for new in submit(1):
                running.add(new)
        environments.extend(client.run(numeric_environment).values())
    except KeyboardInterrupt:
        interrupted = cluster is not None  # a shared cluster (--scheduler) is left as it is
        if interrupted:
            silence_logs()
            client.run(silence_logs, on_error="ignore")
        raise
    finally:
        bar.close()
        client.close()
        if cluster is not None:
            cluster.close()
        if interrupted:
            logging.disable(logging.NOTSET)


def silence_logs() -> None:
    """Ctrl-C closes our local cluster mid-task, and its processes log each connection that closes under them
    (a traceback each, over the one line that says what was kept: cli.py extract). Nothing they say then is news."""
    logging.disable(logging.CRITICAL)


def commit_results(store: FeatureStore, where: Location, targets: dict[str, CommitTargets], results, known: dict[str, dict],
                   timings: dict[str, float] | None = None) -> tuple[dict[int, str], int]:
    """Commit each task's clips as its result arrives (pipeline/commit.py), and collect in `known` the checksum
    entries of the files the tasks wrote. Returns row -> reason of the rows that ended in `error` (left
    uncommitted, so the next run redoes them) and how many fused rows were committed."""
    timings = {} if timings is None else timings
    timings.setdefault("committing", 0.0)
    errors: dict[int, str] = {}
    n_fused = 0
    try:
        for result in results:
            started = time.perf_counter()
            failed, fused = commit_span(store, where, targets, result)
            errors.update(failed)
            n_fused += fused
            known.update((rel, s.entry()) for rel, s in result.files.items())
            timings["committing"] += time.perf_counter() - started
    finally:
        getattr(results, "close", lambda: None)()  # a commit that failed stops the cluster now
    return errors, n_fused


def stale_rows(feature_set: FeatureSet, rows: np.ndarray, paths: list[str], retry_failed: bool) -> np.ndarray:
    """(len(rows),) bool: committed rows to redo, because their source file changed since they were made
    (any status), or because they are not ok and `retry_failed` asks. A stat per clip; hashes only on change."""
    done = feature_set.done()[rows]
    if not done.any():
        return np.zeros(len(rows), bool)
    status = feature_set.status()[rows]
    sources = feature_set["source"][:][rows] if "source" in feature_set.group.array_keys() else np.full(len(rows), "")
    redo = np.zeros(len(rows), bool)
    for k in np.flatnonzero(done):
        redo[k] = (retry_failed and status[k] != "ok") or source_changed(str(sources[k]), paths[k])
    return redo


def invalidate(store: FeatureStore, faces: FeatureSet, audio: FeatureSet, stale: np.ndarray, redo_faces: np.ndarray,
               redo_audio: np.ndarray, rows: np.ndarray) -> None:
    """Un-commit the rows about to be redone (done=0), and the fusions made from them, so no reader sees the
    old row as current and the fusions are derived again from the new one."""
    if not len(stale):
        return
    for feature_set, redo in ((faces, redo_faces), (audio, redo_audio)):
        if redo.any():
            store.uncommit_rows(feature_set, rows[redo])
    for fused in store.feature_sets():
        derived = fused.kind.startswith("fusion-") or fused.kind == "embed"  # embed: face embeddings (encoders/embed.py)
        if derived and {fused.params.get("faces"), fused.params.get("audio")} & {faces.fingerprint, audio.fingerprint}:
            store.uncommit_rows(fused, stale)


def materialise_fusion(store: FeatureStore, name: str, faces: FeatureSet, audio: FeatureSet, *, seed: int, progress: bool, who: dict) -> tuple[FeatureSet, int]:
    """Derive fusion `name` for every row whose faces and audio are ok, from the stored arrays; cached."""
    frames, size = faces.params["frames"], faces.params["size"]
    fused = store.ensure_feature_set("fusion-" + name, fusion_params(name, faces.fingerprint, audio.fingerprint, seed), stored_arrays(name, frames, size),
                                   {**who, **read_notes(name)})
    faces_done, audio_done = faces.done(), audio.done()
    todo = np.flatnonzero(~fused.done() & faces_done & audio_done)
    if not len(todo):  # the usual case: the workers fused every clip
        return fused, 0
    clip_ids = store.root["clips/clip_id"][:]
    both_ok = (faces_done & (faces.status() == "ok")) & (audio_done & (audio.status() == "ok"))
    bar = tqdm(total=len(todo), desc=f"fusion {name}", unit="clip", disable=not progress or not len(todo), file=sys.stderr)
    for start in range(0, len(todo), SHARD_ROWS):  # a shard's worth at a time: memory bounded whatever the corpus
        rows = todo[start : start + SHARD_ROWS]
        needed = rows[both_ok[rows]]  # only these rows are read, never the range between them
        face_data = {k: read_selected(faces[k], needed) for k in ("crops", "middle")}
        audio_data = {k: read_selected(audio[k], needed) for k in ("spec", "chunks")}
        at = {int(row): n for n, row in enumerate(needed)}
        outputs = {k: np.zeros((len(rows), *fused[k].shape[1:]), fused[k].dtype) for k in fusion_arrays(name, frames, size) if k in fused.group}
        status, reason = [], []
        for k, row in enumerate(rows):
            if not both_ok[row]:
                status.append("skipped")
                reason.append(SKIPPED_FUSION)
                continue
            n = at[int(row)]
            one = fuse_clip(name, {key: v[n] for key, v in face_data.items()}, {key: v[n] for key, v in audio_data.items()}, str(clip_ids[row]), seed)
            for key in outputs:  # the set's arrays (stored_arrays; a set made before issue 24 also holds the video)
                outputs[key][k] = one[key]
            status.append("ok")
            reason.append("")
        store.write_rows(fused, rows, outputs, status, reason)
        bar.update(len(rows))
    bar.close()
    if len(todo):
        fused.add_numeric_environments([numeric_environment()])
    return fused, len(todo)


def read_selected(array, rows: np.ndarray) -> np.ndarray:
    """Exactly `rows` of a Zarr array (sorted): only the chunks holding them are read and decoded.

    One slice per run of consecutive rows. Not `get_orthogonal_selection`: on a sharded array zarr 3 decodes
    the whole shard once per selected chunk, all at once (32 rows of 224 px crops: 9 GB and 30 s, against
    0.3 GB and 1 s by slices).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return np.zeros((0, *array.shape[1:]), array.dtype)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return np.concatenate([array[int(run[0]) : int(run[-1]) + 1] for run in np.split(rows, breaks)])


def derive_fusion(location: str, name: str, faces_fingerprint: str, audio_fingerprint: str, *, seed: int = 0, progress: bool = True) -> int:
    """Add fusion `name` to an existing store from its stored crops and chunks (no decoding, no detection)."""
    where = locate(location)
    with WriterLock(where) as lock:
        trust_list = not lock.took_over and checksums_match_listing(where)
        store = FeatureStore.open(location, mode="r+")
        faces = next(s for s in store.feature_sets("faces") if s.fingerprint == faces_fingerprint)
        audio = next(s for s in store.feature_sets("audio") if s.fingerprint == audio_fingerprint)
        mark_unfinished(where)
        _, n = materialise_fusion(store, name, faces, audio, seed=seed, progress=progress, who=provenance())
        refresh_checksums(where, store.touched, trust_list=trust_list)
        mark_finished(where)
    return n


def committed_clips(location: str | Path, config: ExtractConfig) -> tuple[int, int]:
    """(clips whose faces and audio of `config` are committed, clips in the store): what an interrupted run leaves."""
    try:
        store = FeatureStore.open(str(location))
    except StoreError:
        return 0, 0  # stopped before the store was made
    faces = store.find("faces", face_params(config.faces))
    audio = store.find("audio", audio_params(config.mel, config.faces.frames, config.faces.size))
    if faces is None or audio is None:
        return 0, len(store)
    return int((faces.done() & audio.done()).sum()), len(store)


def remove_partial_files(location: Location | Path) -> None:
    """A writer killed mid-write (this process, or a worker writing its shards) leaves its temporary `*.partial`
    files (Zarr's and stores/location.py's); they were never visible. Object stores have none: a PUT is atomic,
    so an interrupted one leaves nothing behind."""
    where = locate(location)
    if not where.is_local:
        return
    for path in where.local_path.rglob("*.partial"):
        path.unlink(missing_ok=True)
