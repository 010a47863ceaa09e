"""Splits applied to clip records. The speaker-level functions live in stores/splits.py (shared with training)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.corpora import load_corpus
from pipeline.records import ClipRecord
from pipeline.reconcile import plan_changes, write_changes
from stores.store import FeatureStore
from stores.splits import PARTITIONS, SplitError, actor_disjoint_split, extend_recorded, fold_partitions, kfold_by_actor

__all__ = ["PARTITIONS", "SplitError", "actor_disjoint_split", "fold_partitions", "kfold_by_actor", "assign_splits", "check_disjoint", "corpus_records", "corpus_splits", "split_for_store", "add_to_store"]


def assign_splits(records: list[ClipRecord], *, seed: int = 0) -> list[ClipRecord]:
    """Give each record its speaker's partition; a corpus that brings its own splits keeps them (checked)."""
    if records and all(r.split for r in records):
        check_disjoint(records)
        return records
    partition = actor_disjoint_split((r.speaker for r in records), seed=seed)
    assigned = [r.with_split(partition[r.speaker]) for r in records]
    check_disjoint(assigned)
    return assigned


def corpus_records(dataset: str, root: Path, meta: Path | None = None, split_seed: int | None = None, *, assign: bool = True,
                   classes: str | None = None) -> list[ClipRecord]:
    """A corpus's records with their splits: assigned with `split_seed` (summary, demo), or with `assign=False` the
    corpus's own or none, leaving the split to the store (extract)."""
    records = load_corpus(dataset, root, meta, classes)
    return assign_splits(records, seed=split_seed or 0) if assign else corpus_splits(records)


def corpus_splits(records: list[ClipRecord]) -> list[ClipRecord]:
    """Records as the corpus gives them: its own splits (a manifest's split column) checked, else none, so that
    the store assigns them (`split_for_store`)."""
    if records and all(r.split for r in records):
        check_disjoint(records)
        return records
    return [r.with_split("") if r.split else r for r in records]


def split_for_store(records: list[ClipRecord], recorded: dict[str, str], *, seed: int | None, recorded_seed: int, store: str,
                    waiting: Iterable[str] = ()) -> dict[str, str]:
    """Speaker -> partition for a store that already records `recorded` (made with `recorded_seed`).

    Recorded speakers never move. New ones take the records' own splits when every record has one (a
    manifest's), else the stable rule with the store's seed. A --split-seed or a corpus split that disagrees
    with what the store recorded is refused with both named: silently reshuffling would leak speakers.
    `waiting`: speakers the store holds without a partition yet (it had fewer than 3); they are placed with the new."""
    if seed is not None and recorded and seed != recorded_seed:
        raise SplitError(
            f"--split-seed {seed} disagrees with store '{store}', whose split was recorded with --split-seed {recorded_seed}; "
            f"splits never move: drop --split-seed (or pass {recorded_seed}), or extract into a new --store")
    given = {r.speaker: r.split for r in records} if records and all(r.split for r in records) else None
    return extend_recorded(recorded, [*waiting, *(r.speaker for r in records)], seed=recorded_seed if seed is None else seed, given=given)


def add_to_store(store: FeatureStore, records: list[ClipRecord], *, seed: int | None, class_names: list[str] | None = None,
                 classes_declared: bool = True) -> tuple[np.ndarray, bool, list[str]]:
    """Add `records` to the store's clip table with their partitions: (their rows, whether anything was written,
    one line per kind of change made to clips already stored).

    Clips already stored take the corpus's label and speaker when these changed (pipeline/reconcile.py); a
    corrected speaker's clips join that speaker's partition, or, for a speaker new to the store, the partition
    the stable rule gives it. Labels are numbered by the store's class list, grown at its end by classes new to
    it (`class_names`: the corpus's list; `classes_declared`: whether that list states numbers the store must
    keep). Speakers a store of fewer than 3 holds without a partition are placed with the new ones.
    Everything is settled first, so a disagreement is refused before anything is written."""
    clips_before, table = len(store), store.clip_table()
    changes = plan_changes(table, store.class_names, records, class_names, declared=classes_declared, store=store.location)
    records = changes.numbered(records)
    recorded = {str(s): str(p) for row, (s, p) in enumerate(zip(table["speaker"], table["split"])) if p and row not in changes.speakers}
    waiting = sorted({str(s) for s, p in zip(table["speaker"], table["split"]) if not p})
    split_of = split_for_store(records, recorded, seed=seed, recorded_seed=store.info["split_seed"], store=store.location, waiting=waiting)
    write_changes(store, changes, table)  # from here on, things are written
    rows = store.add_clips(records)
    wrote = store.set_splits(split_of, clips_before)
    if not recorded and seed is not None and seed != store.info["split_seed"]:  # a store's first split: its seed
        store.root.attrs["avstore"] = {**store.info, "split_seed": seed}
        wrote = True
    told = changes.messages()
    moved = [row for row, (_, new) in changes.speakers.items() if split_of.get(new, "") != str(table["split"][row])]
    if moved:
        told.append(f"split: {len(moved)} clip(s) of corrected speakers moved to their speaker's partition "
                    f"(stable rule for speakers new to the store; no speaker is in two partitions)")
    return rows, bool(wrote or changes or len(store) > clips_before or store.votes_written), told


def check_disjoint(records: Iterable[ClipRecord]) -> None:
    """Raise SplitError naming the first speaker found in more than one partition."""
    seen: dict[str, str] = {}
    for record in records:
        if record.split not in PARTITIONS:
            raise SplitError(f"clip {record.clip_id} has split '{record.split}', not one of {PARTITIONS}")
        first = seen.setdefault(record.speaker, record.split)
        if first != record.split:
            raise SplitError(f"speaker {record.speaker} is in both '{first}' and '{record.split}'; splits must be actor-disjoint")
