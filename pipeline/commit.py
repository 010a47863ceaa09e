"""The client's part of an extraction: commit what the tasks computed and wrote.

A task has written the shards of its large arrays itself (stores/shard_files.py) and sends back per clip only
what is small. For each finished task the client writes those small arrays (statuses, reasons, sources, boxes,
timestamps, ...), records the sums of the files the task wrote (stores/integrity.record_sums), and then marks
the rows done: fusions, LLDs, audio, and faces last, so a row whose faces are done has all of its sets
committed. A row that ended in `error` is left uncommitted, and the next run redoes it.

Why the arrays are opened once (`CommitTargets`), and written through chunks kept in memory (stores/small_arrays.py):
a commit writes some thirty arrays, and opening each (reading its zarr.json), then reading back, decoding and
encoding its chunk through zarr cost ~2 CPU-ms an array, most of the client's CPU per clip.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np
import zarr

from pipeline.extract import TaskResult
from pipeline.spans import SpanResult
from stores.integrity import record_sums
from stores.location import Location, local_stamp
from stores.small_arrays import ChunkWriter
from stores.store import FeatureSet, FeatureStore, StoreError

log = logging.getLogger(__name__)

ROW_STATE = ("status", "reason", "done", "source")
"""Per-row arrays every set has (source: the sets computed from a file); the others are its features."""


@dataclass(frozen=True)
class CommitTargets:
    """The small arrays of one feature set, opened once for the whole run (its large ones are the workers')."""

    feature_set: FeatureSet
    features: dict[str, ChunkWriter]  # name -> its writer, without ROW_STATE
    state: dict[str, ChunkWriter]  # ROW_STATE names it has -> its writer

    @classmethod
    def of(cls, feature_set: FeatureSet, arrays: dict[str, zarr.Array], where: Location) -> "CommitTargets":
        """`arrays`: all of the set's arrays, opened."""
        writers = {name: ChunkWriter(array, where) for name, array in arrays.items() if array.shards is None}
        return cls(feature_set, {n: w for n, w in writers.items() if n not in ROW_STATE}, {n: w for n, w in writers.items() if n in ROW_STATE})


DONE_ORDER = ("fusion-", "lld", "audio", "faces")
"""The order in which a commit marks rows done, by kind (prefix): faces last."""


def commit_span(store: FeatureStore, where: Location, targets: dict[str, CommitTargets], result: SpanResult) -> tuple[dict[int, str], int]:
    """Commit one task's clips; returns (row -> reason of each row that ended in `error`, fused rows committed)."""
    check_written_here(where, result)
    errors: dict[int, str] = {}
    committed: dict[str, tuple[np.ndarray, list[TaskResult]]] = {}
    for kind, target in targets.items():
        rows, results = [], []
        for row, stages in zip(result.rows, result.stages):
            stage = stages.get(kind)
            if stage is None:
                continue
            if stage.status == "error":
                log.error("clip row %d, %s: %s", row, kind, stage.reason)
                errors[int(row)] = stage.reason
                continue
            rows.append(int(row))
            results.append(stage)
        if rows:
            committed[kind] = (np.asarray(rows, dtype=np.int64), results)
            write_values(target, committed[kind][0], results)
            store.touched.setdefault(target.feature_set.name, set()).update(rows)
    if result.files:
        first, last = min(result.rows), max(result.rows)
        name = f"{first:09d}-{last:09d}-{uuid.uuid4().hex[:8]}"  # never another commit's: sums are matched by stamp, none lost
        record_sums(where, name, {rel: s.entry() for rel, s in result.files.items()})
    for kind in sorted(committed, key=done_rank):
        rows = committed[kind][0]
        targets[kind].state["done"].write(rows, np.ones(len(rows), np.uint8))
    return errors, sum(len(rows) for kind, (rows, _) in committed.items() if kind.startswith("fusion-"))


def check_written_here(where: Location, result: SpanResult) -> None:
    """Refuse to commit rows whose shards this process does not see as the task wrote them (a stat per file).

    Why: with `--scheduler`, a local --store path names a folder on each worker's own machine; a worker that
    cannot see the client's folder writes its shards into another one of the same name, and committing the rows
    would leave the store without their data. An object store is one place for all (a worker without access
    fails its task instead)."""
    if not where.is_local:
        return
    for rel, written in result.files.items():
        for wait in (0.0, 0.2, 0.5, 1.0, 2.0):  # a shared filesystem's client may show a new file a moment late
            time.sleep(wait)
            try:
                if local_stamp(os.stat(where.local_path / rel)) == written.stamp:
                    break
            except FileNotFoundError:
                pass
        else:
            raise StoreError(f"a worker wrote '{rel}' where this process does not see it: with --scheduler, --store must be a folder "
                             f"every worker sees at the same path (a shared filesystem) or an s3:// URL")


def done_rank(kind: str) -> int:
    return next(k for k, prefix in enumerate(DONE_ORDER) if kind.startswith(prefix))


def write_values(target: CommitTargets, rows: np.ndarray, results: list[TaskResult]) -> None:
    """The rows' small arrays, status, reason and source (not `done`): zeros where a result has no value (a failed clip)."""
    for name, writer in target.features.items():
        values = np.zeros((len(rows), *writer.array.shape[1:]), writer.array.dtype)
        for k, result in enumerate(results):
            value = (result.arrays or {}).get(name)
            if value is not None:
                values[k] = value
        writer.write(rows, values)
    if "source" in target.state:
        target.state["source"].write(rows, np.asarray([r.source for r in results], dtype=object))
    target.state["status"].write(rows, np.asarray([r.status for r in results], dtype=object))
    target.state["reason"].write(rows, np.asarray([r.reason for r in results], dtype=object))
