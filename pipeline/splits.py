"""Splits applied to clip records. The speaker-level functions live in stores/splits.py (shared with training)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pipeline.records import ClipRecord
from stores.store import FeatureStore
from stores.splits import PARTITIONS, SplitError, actor_disjoint_split, extend_recorded, fold_partitions, kfold_by_actor

__all__ = ["PARTITIONS", "SplitError", "actor_disjoint_split", "fold_partitions", "kfold_by_actor", "assign_splits", "check_disjoint", "corpus_splits", "split_for_store", "add_to_store"]


def assign_splits(records: list[ClipRecord], *, seed: int = 0) -> list[ClipRecord]:
    """Give each record its speaker's partition; a corpus that brings its own splits keeps them (checked)."""
    if records and all(r.split for r in records):
        check_disjoint(records)
        return records
    partition = actor_disjoint_split((r.speaker for r in records), seed=seed)
    assigned = [r.with_split(partition[r.speaker]) for r in records]
    check_disjoint(assigned)
    return assigned


def corpus_splits(records: list[ClipRecord]) -> list[ClipRecord]:
    """Records as the corpus gives them: its own splits (a manifest's split column) checked, else none, so that
    the store assigns them (`split_for_store`)."""
    if records and all(r.split for r in records):
        check_disjoint(records)
        return records
    return [r.with_split("") if r.split else r for r in records]


def split_for_store(records: list[ClipRecord], recorded: dict[str, str], *, seed: int | None, recorded_seed: int, store: str) -> dict[str, str]:
    """Speaker -> partition for a store that already records `recorded` (made with `recorded_seed`).

    Recorded speakers never move. New ones take the records' own splits when every record has one (a
    manifest's), else the stable rule with the store's seed. A --split-seed or a corpus split that disagrees
    with what the store recorded is refused with both named: silently reshuffling would leak speakers."""
    if seed is not None and recorded and seed != recorded_seed:
        raise SplitError(
            f"--split-seed {seed} disagrees with store '{store}', whose split was recorded with --split-seed {recorded_seed}; "
            f"splits never move: drop --split-seed (or pass {recorded_seed}), or extract into a new --store")
    given = {r.speaker: r.split for r in records} if records and all(r.split for r in records) else None
    return extend_recorded(recorded, [r.speaker for r in records], seed=recorded_seed if seed is None else seed, given=given)


def add_to_store(store: FeatureStore, records: list[ClipRecord], *, seed: int | None) -> tuple[np.ndarray, bool]:
    """Add `records` to the store's clip table with their partitions: (their rows, whether anything was written).

    The split is settled first, so a disagreement is refused before anything is written."""
    clips_before, recorded = len(store), store.recorded_split()
    split_of = split_for_store(records, recorded, seed=seed, recorded_seed=store.info["split_seed"], store=store.location)
    rows = store.add_clips(records)
    wrote = store.set_splits(split_of, clips_before)
    if not recorded and seed is not None and seed != store.info["split_seed"]:  # a store's first split: its seed
        store.root.attrs["avstore"] = {**store.info, "split_seed": seed}
        wrote = True
    return rows, wrote or len(store) > clips_before or store.votes_written


def check_disjoint(records: Iterable[ClipRecord]) -> None:
    """Raise SplitError naming the first speaker found in more than one partition."""
    seen: dict[str, str] = {}
    for record in records:
        if record.split not in PARTITIONS:
            raise SplitError(f"clip {record.clip_id} has split '{record.split}', not one of {PARTITIONS}")
        first = seen.setdefault(record.speaker, record.split)
        if first != record.split:
            raise SplitError(f"speaker {record.speaker} is in both '{first}' and '{record.split}'; splits must be actor-disjoint")
