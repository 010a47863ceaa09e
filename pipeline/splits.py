"""Splits applied to clip records. The speaker-level functions live in stores/splits.py (shared with training)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.records import ClipRecord
from stores.splits import PARTITIONS, SplitError, actor_disjoint_split, fold_partitions, kfold_by_actor

__all__ = ["PARTITIONS", "SplitError", "actor_disjoint_split", "fold_partitions", "kfold_by_actor", "assign_splits", "check_disjoint"]


def assign_splits(records: list[ClipRecord], *, seed: int = 0) -> list[ClipRecord]:
    """Give each record its speaker's partition; a corpus that brings its own splits keeps them (checked)."""
    if records and all(r.split for r in records):
        check_disjoint(records)
        return records
    partition = actor_disjoint_split((r.speaker for r in records), seed=seed)
    assigned = [r.with_split(partition[r.speaker]) for r in records]
    check_disjoint(assigned)
    return assigned


def check_disjoint(records: Iterable[ClipRecord]) -> None:
    """Raise SplitError naming the first speaker found in more than one partition."""
    seen: dict[str, str] = {}
    for record in records:
        if record.split not in PARTITIONS:
            raise SplitError(f"clip {record.clip_id} has split '{record.split}', not one of {PARTITIONS}")
        first = seen.setdefault(record.speaker, record.split)
        if first != record.split:
            raise SplitError(f"speaker {record.speaker} is in both '{first}' and '{record.split}'; splits must be actor-disjoint")
