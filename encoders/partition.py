"""A run's own partition: the exact speakers and clips it trained, validated and tested on.

A store lives for months and grows; `evaluate`, `--ablate` and `report` must judge a model on the clips it was
tested on when it was trained, never on whatever the store says today. So `train` records every partition's
speaker ids and clip ids (`partition.json` in the run folder, its sha256 in metrics.json), and re-evaluation
selects exactly those clips. What changed in the store since is reported: lost or no-longer-usable test clips
and changed feature sets are refused (the numbers would not be the run's); a speaker the store now places
elsewhere only warns, because the run's recorded partition is used and its test speakers stay unseen.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from stores.splits import FOLD_RULE, PARTITIONS, SplitError, fold_partitions, generations, missing_split, replay_folds, replay_split
from stores.store import FeatureStore, StoreError

PARTITION_FILE = "partition.json"


class PartitionError(StoreError):
    """The store no longer holds what the run was tested on; the message says how much and what to do."""


def split_column(store: FeatureStore, table: dict[str, np.ndarray], *, split_seed: int | None, fold: int | None, folds: int) -> np.ndarray:
    """Each clip row's partition under a run's split options: the store's recorded split; the stable rule
    replayed with another seed; or round `fold` of k-fold by actor (FOLD_RULE: test fold `fold`, validation a
    fixed share of the other speakers). All three never move a speaker as
    speakers are added (the store records the generations in which they arrived)."""
    speakers = [str(s) for s in table["speaker"]]
    gens = generations(speakers, store.speaker_batches)
    if fold is not None:
        if not 0 <= fold < folds:
            raise ValueError(f"--fold {fold} is outside 0..{folds - 1} for --folds {folds}")
        seed = split_seed or 0
        partition = fold_partitions(replay_folds(gens, k=folds, seed=seed), test_fold=fold, k=folds, seed=seed, gens=gens)
    elif split_seed is not None and split_seed != store.info.get("split_seed"):
        partition = replay_split(gens, seed=split_seed)
    else:
        why = missing_split(speakers, [str(p) for p in table["split"]], store.location)
        if why:
            raise SplitError(why)
        return np.asarray(table["split"], dtype=object)
    return np.asarray([partition[s] for s in speakers], dtype=object)


def record(table: dict[str, np.ndarray], rows: dict[str, np.ndarray]) -> dict:
    """{partition: {"speakers": sorted ids, "clips": clip ids}} for the rows a run uses, and "fold_rule": the
    k-fold rule of this code (stores.splits.FOLD_RULE), so a --fold run made under an older rule is known."""
    recorded: dict = {name: {"speakers": sorted({str(s) for s in table["speaker"][r]}), "clips": [str(c) for c in table["clip_id"][r]]}
                      for name, r in rows.items()}
    recorded["fold_rule"] = FOLD_RULE
    return recorded


def fold_rule(partition: dict | None) -> int:
    """The k-fold rule a run's partition was made under: 1 (validation = the next fold) when not recorded."""
    return int((partition or {}).get("fold_rule", 1))


def digest(partition: dict) -> str:
    return hashlib.sha256(json.dumps(partition, sort_keys=True).encode()).hexdigest()


def load(run: Path) -> dict | None:
    """The run's recorded partition, or None for a run made before partitions were recorded."""
    path = Path(run) / PARTITION_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def save(run: Path, partition: dict) -> str:
    (Path(run) / PARTITION_FILE).write_text(json.dumps(partition))
    return digest(partition)


def recorded_rows(table: dict[str, np.ndarray], usable: np.ndarray, recorded: dict, current: np.ndarray, location: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rows of the recorded partition's clips that are still usable, and warnings about what moved.

    Raises PartitionError when some recorded test clips are gone or no longer usable: the test set would not
    be the run's."""
    index = {str(c): row for row, c in enumerate(table["clip_id"])}
    rows = {}
    for name in PARTITIONS:
        ids = recorded[name]["clips"]
        found = np.asarray(sorted(index[c] for c in ids if c in index), dtype=np.int64)
        rows[name] = found[usable[found]] if len(found) else found
        if name == "test" and len(rows[name]) < len(ids):
            raise PartitionError(
                f"store '{location}' lost {len(ids) - len(rows[name])} of the run's {len(ids)} test clips (missing, or no longer "
                "extracted ok); evaluate with --store pointing at the store the run was trained on, or re-extract them")
    now = {}
    for speaker, partition in zip(table["speaker"], current):
        now.setdefault(str(speaker), str(partition))
    moved = [(s, name, now[s]) for name in PARTITIONS for s in recorded[name]["speakers"] if s in now and now[s] != name]
    warnings = []
    if moved:
        s, was, is_now = next((m for m in moved if m[1] == "test"), moved[0])
        warnings.append(
            f"the store now places {len(moved)} of this run's speakers in another partition (e.g. {was} speaker {s} is now "
            f"in {is_now}); evaluating on the run's own recorded partition, so its test speakers stay unseen in training")
    return rows, warnings
