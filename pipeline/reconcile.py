"""What a re-run changes in a store's clip table: corrected labels and speakers, and classes new to the store.

Why: a corpus gets corrected (a manifest row relabelled, a speaker id fixed) and grows (rows with a label
the store has not seen). Features do not depend on either, so the rows are not recomputed; but a store that
kept the old label would train on it while `summary` reads the new one, and a kept speaker id could leave a
speaker in two partitions. So every re-run compares the corpus with the clip table, writes the differences
and says so, one line per kind of change. Nothing is relabelled silently, and stored class numbers never
move (pipeline/labels.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from pipeline.labels import LabelError, emotion_code, merge_class_lists
from pipeline.records import ClipRecord
from stores.store import FeatureStore

EXAMPLES = 3
"""Clips named per kind of change; the count covers them all."""


@dataclass
class ClipTableChanges:
    """The differences between a corpus and a store's clip table, planned before anything is written."""

    class_names: list[str]  # the store's class list after the run
    appended: list[str] = field(default_factory=list)  # classes added at its end
    respelled: dict[str, str] = field(default_factory=dict)  # stored class name -> its code (stores made before the table)
    relabelled: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (stored emotion, corpus emotion)
    renumbered: dict[int, tuple[int, int]] = field(default_factory=dict)  # row -> (stored label, its class's number)
    speakers: dict[int, tuple[str, str]] = field(default_factory=dict)  # row -> (stored speaker, corpus speaker)
    clip_ids: dict[int, str] = field(default_factory=dict)  # row -> clip id, for the messages
    votes_classes: list[str] = field(default_factory=list)  # the class order of the records' votes (the corpus's list)

    def numbered(self, records: list[ClipRecord]) -> list[ClipRecord]:
        """`records` with labels numbered by the store's class list (a corpus's own numbering may differ)."""
        index = {name: k for k, name in enumerate(self.class_names)}
        missing = sorted({r.emotion for r in records} - set(index))
        if missing:
            raise LabelError(f"labels {', '.join(missing)} are not in the class list {','.join(self.class_names)}; declare them with --classes")
        return [r if r.label == index[r.emotion] and not self._reorders(r) else
                dataclasses.replace(r, label=index[r.emotion], votes=self._votes_in_store_order(r.votes)) for r in records]

    def _reorders(self, record: ClipRecord) -> bool:
        return bool(record.votes) and bool(self.votes_classes) and self.votes_classes != self.class_names

    def _votes_in_store_order(self, votes: dict[str, list[int]]) -> dict[str, list[int]]:
        """Vote counts come in the corpus's class order; the store keeps its own (a corpus's order may differ
        once classes were appended), so each count moves to its class's stored number."""
        if not votes or not self.votes_classes or self.votes_classes == self.class_names:
            return votes
        where = [self.class_names.index(name) for name in self.votes_classes]
        moved = {}
        for modality, counts in votes.items():
            counts_in_store = [0] * len(self.class_names)
            for k, count in zip(where, counts):
                counts_in_store[k] += count
            moved[modality] = counts_in_store
        return moved

    def messages(self) -> list[str]:
        """One line per kind of change, with counts and a few examples."""
        lines = []
        if self.respelled:
            names = ", ".join(f"{old} -> {new}" for old, new in self.respelled.items())
            lines.append(f"class list: respelled {names} by the emotion table (same numbers, no clip relabelled)")
        if self.appended:
            first = len(self.class_names) - len(self.appended)
            added = ", ".join(f"{name}={first + k}" for k, name in enumerate(self.appended))
            lines.append(f"class list: added {added} at its end (stored labels keep their numbers; "
                         "to number the classes afresh, extract into a new --store)")
        for what, changed in (("relabelled", self.relabelled), ("renumbered (label number disagreed with the class list)", self.renumbered),
                              ("speaker corrected", self.speakers)):
            if changed:
                shown = ", ".join(f"{self.clip_ids[row]}: {old} -> {new}" for row, (old, new) in list(changed.items())[:EXAMPLES])
                more = ", ..." if len(changed) > EXAMPLES else ""
                lines.append(f"clip table: {len(changed)} clip(s) {what} as the corpus now says ({shown}{more})")
        return lines

    def __bool__(self) -> bool:
        return bool(self.appended or self.respelled or self.relabelled or self.renumbered or self.speakers)


def plan_changes(table: dict[str, np.ndarray], stored_classes: list[str], records: list[ClipRecord], corpus_classes: list[str] | None,
                 *, declared: bool, store: str) -> ClipTableChanges:
    """Compare `records` with the clip table (`FeatureStore.clip_table()`); raises LabelError when the corpus's
    class list would renumber the store's. `corpus_classes=None`: the store's list, grown by the records' labels."""
    votes_classes = list(corpus_classes or [])  # the records' votes count in the corpus's own order
    if corpus_classes is None:
        corpus_classes, declared = list(dict.fromkeys(r.emotion for r in records)), False
    respelled = respellings(stored_classes)
    stored = [respelled.get(name, name) for name in stored_classes]
    names = merge_class_lists(stored, corpus_classes, declared=declared, store=store)
    changes = ClipTableChanges(class_names=names, appended=names[len(stored):], respelled=respelled, votes_classes=votes_classes)
    index = {name: k for k, name in enumerate(names)}
    row_of = {str(clip_id): row for row, clip_id in enumerate(table["clip_id"])}
    for record in records:
        row = row_of.get(record.clip_id)
        if row is None:
            continue
        emotion, label, speaker = str(table["emotion"][row]), int(table["label"][row]), str(table["speaker"][row])
        emotion = respelled.get(emotion, emotion)
        if emotion != record.emotion:
            changes.relabelled[row] = (emotion, record.emotion)
        elif record.emotion in index and label != index[record.emotion]:
            changes.renumbered[row] = (label, index[record.emotion])
        if speaker != record.speaker:
            changes.speakers[row] = (speaker, record.speaker)
        if row in changes.relabelled or row in changes.renumbered or row in changes.speakers:
            changes.clip_ids[row] = record.clip_id
    return changes


def respellings(stored: list[str]) -> dict[str, str]:
    """Stored class names that the emotion table spells otherwise (`happy` in a store made before it) -> the code,
    when the code is not a class of its own already (then both stay: merging them would renumber)."""
    codes = {name: emotion_code(name) for name in stored}
    wanted = [code for name, code in codes.items() if code and code != name]
    return {name: code for name, code in codes.items() if code and code != name and code not in stored and wanted.count(code) == 1}


def write_changes(store: FeatureStore, changes: ClipTableChanges, table: dict[str, np.ndarray]) -> None:
    """Write the planned class list, labels and speakers into the store (`table`: its clip table as planned from)."""
    if changes.appended or changes.respelled:
        store.extend_class_names(changes.class_names, renamed=changes.respelled)
    if changes.respelled:
        stored = [str(e) for e in table["emotion"]]
        rows = [row for row, name in enumerate(stored) if name in changes.respelled]
        store.set_clip_values("emotion", rows, [changes.respelled[stored[row]] for row in rows])
    stored = {row: str(table["emotion"][row]) for row in changes.renumbered}
    emotion = {**{row: changes.respelled.get(name, name) for row, name in stored.items()}, **{row: new for row, (_, new) in changes.relabelled.items()}}
    rows = sorted(emotion)
    if rows:
        store.set_clip_values("emotion", rows, [emotion[row] for row in rows])
        store.set_clip_values("label", rows, [changes.class_names.index(emotion[row]) for row in rows])
    rows = sorted(changes.speakers)
    if rows:
        store.set_clip_values("speaker", rows, [changes.speakers[row][1] for row in rows])
