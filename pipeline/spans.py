"""Units of extraction work: the clips of whole shards, computed and written by one Dask task.

Why whole shards: a shard file holds the large arrays of SHARD_ROWS consecutive rows, so a task that covers
every row of its shards writes each file once, whole, and never reads one back (stores/shard_files.py). The
task's result is what is small (per-clip values and statuses, and the sums of the files it wrote), so the
client, one process for the whole cluster, only commits (pipeline/commit.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import zarr

from pipeline.extract import TaskResult
from pipeline.records import ClipRecord
from stores.codecs import chain_for
from stores.shard_files import FileSum, ShardedArray
from stores.store import FeatureSet


@dataclass(frozen=True)
class Span:
    """One task: each clip as (row, record, want_faces, want_audio, want_lld), and the large arrays of each feature
    set kind it writes ("faces", "audio", "lld", "fusion-<name>"), in the store at `store` (a path or URL)."""

    store: str
    clips: list[tuple[int, ClipRecord, bool, bool, bool]]
    arrays: dict[str, dict[str, ShardedArray]]

    @property
    def rows(self) -> list[int]:
        return [clip[0] for clip in self.clips]


@dataclass
class SpanResult:
    """What a task sends back: per clip, kind -> its result with the small arrays only (a kind it did not compute
    is absent; a fusion is present, ok or skipped, when the task computed both faces and audio without error),
    and the files it wrote (store-relative path -> FileSum)."""

    rows: list[int]
    stages: list[dict[str, TaskResult]]
    files: dict[str, FileSum] = field(default_factory=dict)


def sharded_arrays(feature_set: FeatureSet, arrays: dict[str, zarr.Array]) -> dict[str, ShardedArray]:
    """The feature set's large arrays (those stored in shards; `arrays`: all of its arrays, opened), as a worker writes them."""
    return {name: ShardedArray.of(array, chain_for(feature_set.kind, name)) for name, array in sorted(arrays.items()) if array.shards is not None}


def rows_per_span(arrays: dict[str, dict[str, ShardedArray]], commit_every: int) -> int:
    """Rows of one task: whole shards of every array written (their common multiple), as many as come nearest to
    `commit_every` clips (at least one shard's worth)."""
    unit = math.lcm(*(a.shard_rows for by_name in arrays.values() for a in by_name.values())) if any(arrays.values()) else 1
    return unit * max(1, round(commit_every / unit))


def plan_spans(todo: list[tuple[int, ClipRecord, bool, bool, bool]], span_rows: int) -> list[list[tuple[int, ClipRecord, bool, bool, bool]]]:
    """The clips to compute, grouped by the span of `span_rows` store rows that holds them, in row order."""
    groups: dict[int, list] = {}
    for clip in sorted(todo, key=lambda c: int(c[0])):
        groups.setdefault(int(clip[0]) // span_rows, []).append(clip)
    return [groups[k] for k in sorted(groups)]


def small_values(result: TaskResult | None, arrays: dict[str, ShardedArray]) -> TaskResult | None:
    """`result` without its large arrays (they are in the shards now)."""
    if result is None or not result.arrays:
        return result
    return TaskResult(result.status, result.reason, {k: v for k, v in result.arrays.items() if k not in arrays}, result.source)
