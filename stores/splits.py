"""Actor-disjoint splits of speaker ids that never move: no speaker is in two partitions, and adding speakers
moves none of those already placed.

These live in `stores/` because both the pipeline (which stores splits) and the trainer (which may re-derive
them with another seed, or by k-fold) need them, and the trainer must not import the pipeline.

The seed code split clips at random, so every actor was in train and test and the models could recognise the
actor instead of the emotion (SPEC defect 1). Until format rule 2 a split was a permutation of *all* current
speakers, so a store that grew from 90 to 91 actors moved 6 of the 90 to another partition, and a model could be
tested on actors it had trained on. The rule now (`SPLIT_RULE` 2):

- Speakers arrive in *generations* (the speakers a store first saw in one extract). Each generation is placed
  with the earlier ones frozen: an existing speaker's partition is never recomputed.
- A generation's new speakers are taken in the order of a keyed hash, sha256(seed, speaker) (the same on every
  machine, independent of the other speakers), and each goes to the partition furthest below its target
  fraction (an empty partition first, so three speakers already give train, val and test).

So a speaker's partition depends on the seed, on itself and on the generations before its own, never on later
ones; and partition sizes stay within one speaker of the fractions (`test_splits.py` checks both). A pure
per-speaker hash compared with thresholds would be stable too, but meets the fractions only in expectation
(CREMA-D's 14-actor test set would vary by +-3 actors), so it is not used. K-fold by actor follows the same
rule: new speakers, in hash order, join the fold with the fewest speakers.

K-fold round i (`FOLD_RULE` 2): fold i is the test set; of the remaining speakers, `VAL_SHARE` (15/85, the
stored split's val : train+val) validate and the rest train, placed by the same rule (generations frozen, a
keyed hash order of its own, each speaker to the partition furthest below its share, an empty one first). So
5 folds train on 4/5 x 70/85 of the speakers and 3 folds on 2/3 x 70/85, never one third as under rule 1,
where validation was simply the next fold. A run records the rule it was made with (partition.json).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence

PARTITIONS = ("train", "val", "test")
FRACTIONS = (0.70, 0.15, 0.15)
SPLIT_RULE = 2
FOLD_RULE = 2
"""1: validation = the next fold; 2: validation = VAL_SHARE of the speakers outside the test fold."""
VAL_SHARE = FRACTIONS[1] / (FRACTIONS[0] + FRACTIONS[1])  # 15/85: the same val : train ratio as the stored split


class SplitError(ValueError):
    """A speaker sits in two partitions, a split disagrees with a recorded one, or there are too few speakers."""


def speaker_key(speaker: str, seed: int | str) -> str:
    """The order in which new speakers are placed: a keyed hash of the speaker alone (stable across machines)."""
    return hashlib.sha256(f"{seed}\x00{speaker}".encode()).hexdigest()


def actor_disjoint_split(
    speakers: Iterable[str], *, seed: int = 0, fractions: Sequence[float] = FRACTIONS, existing: dict[str, str] | None = None,
) -> dict[str, str]:
    """Speaker -> train/val/test for `speakers` plus `existing`, whose partitions are kept as they are.

    New speakers, in `speaker_key` order, each join an empty partition if one is left, else the partition
    furthest below `fractions` of the speakers placed so far (ties: train, val, test).
    """
    result = dict(existing or {})
    for speaker, partition in result.items():
        if partition not in PARTITIONS:
            raise SplitError(f"speaker {speaker} is recorded in partition '{partition}', not one of {PARTITIONS}")
    new = sorted(set(speakers) - set(result), key=lambda s: speaker_key(s, seed))
    if len(result) + len(new) < 3:
        raise SplitError(f"{len(result) + len(new)} speaker(s) cannot make actor-disjoint train/val/test splits; at least 3 are needed: "
                         "extract more speakers, or give the corpus a split column (train/val/test per clip)")
    counts = [sum(p == name for p in result.values()) for name in PARTITIONS]
    for speaker in new:
        n = sum(counts) + 1
        empty = [k for k, c in enumerate(counts) if c == 0]
        k = empty[0] if empty else max(range(len(PARTITIONS)), key=lambda i: (fractions[i] * n - counts[i], -i))
        counts[k] += 1
        result[speaker] = PARTITIONS[k]
    return result


def kfold_by_actor(speakers: Iterable[str], *, k: int = 5, seed: int = 0, existing: dict[str, int] | None = None) -> dict[str, int]:
    """Speaker -> fold 0..k-1; `existing` folds are kept, new speakers (hash order) join the smallest fold."""
    result = _extend_folds(dict(existing or {}), list(speakers), k, seed)
    if len(result) < k:
        raise SplitError(f"{len(result)} speakers cannot make {k} actor-disjoint folds")
    return result


def fold_partitions(folds: dict[str, int], *, test_fold: int, k: int, seed: int = 0,
                    gens: Sequence[Sequence[str]] | None = None) -> dict[str, str]:
    """Cross-validation round `test_fold` (FOLD_RULE 2): that fold is test; of the other speakers, VAL_SHARE
    validate and the rest train, placed generation by generation (`gens`, default one generation) so that
    adding speakers moves none of them."""
    if not 0 <= test_fold < k:
        raise SplitError(f"fold {test_fold} is outside 0..{k - 1} for {k} folds")
    result = {s: "test" for s, f in folds.items() if f == test_fold}
    rest: dict[str, str] = {}
    for gen in (gens if gens is not None else [sorted(folds)]):
        rest = _place_rest(rest, [s for s in gen if s in folds and folds[s] != test_fold], seed)
    return {**rest, **result}


def _place_rest(placed: dict[str, str], new: Sequence[str], seed: int) -> dict[str, str]:
    """Non-test speakers to train or val: the stored split's rule with shares (1 - VAL_SHARE, VAL_SHARE)."""
    result = dict(placed)
    counts = [sum(p == "train" for p in result.values()), sum(p == "val" for p in result.values())]
    shares = (1.0 - VAL_SHARE, VAL_SHARE)
    for speaker in sorted(set(new) - set(result), key=lambda s: speaker_key(s, f"val{seed}")):  # type: ignore[arg-type]
        n = sum(counts) + 1
        empty = [i for i, c in enumerate(counts) if c == 0]
        i = empty[0] if empty else max((0, 1), key=lambda j: (shares[j] * n - counts[j], -j))
        counts[i] += 1
        result[speaker] = ("train", "val")[i]
    return result


def generations(speaker_of_row: Sequence[str], batches: Sequence[int] = (0,)) -> list[list[str]]:
    """The speakers each extract added, from the clip table (rows are append-only) and the row at which each
    extract that added speakers began (the store's `speaker_batches`; a store without it is one generation)."""
    starts = sorted(set(batches) | {0})
    found: list[dict[str, None]] = [{} for _ in starts]
    seen: set[str] = set()
    for row, speaker in enumerate(speaker_of_row):
        if speaker not in seen:
            seen.add(speaker)
            found[bisect.bisect_right(starts, row) - 1][speaker] = None
    return [list(g) for g in found if g]


def replay_split(gens: Sequence[Sequence[str]], *, seed: int = 0, fractions: Sequence[float] = FRACTIONS) -> dict[str, str]:
    """The train/val/test split the stable rule gives these generations, placed one after another."""
    result: dict[str, str] = {}
    pending: list[str] = []
    for gen in gens:
        pending += list(gen)
        if len(result) + len(set(pending)) >= 3:  # a first generation of under 3 waits for the next
            result = actor_disjoint_split(pending, seed=seed, fractions=fractions, existing=result)
            pending = []
    if pending or not result:
        result = actor_disjoint_split(pending, seed=seed, fractions=fractions, existing=result)
    return result


def replay_folds(gens: Sequence[Sequence[str]], *, k: int = 5, seed: int = 0) -> dict[str, int]:
    """K-fold by actor over these generations, placed one after another."""
    result: dict[str, int] = {}
    for gen in gens:
        result = _extend_folds(result, gen, k, seed)
    if len(result) < k:
        raise SplitError(f"{len(result)} speakers cannot make {k} actor-disjoint folds")
    return result


def _extend_folds(result: dict[str, int], gen: Sequence[str], k: int, seed: int) -> dict[str, int]:
    new = sorted(set(gen) - set(result), key=lambda s: speaker_key(s, seed))
    counts = [sum(f == i for f in result.values()) for i in range(k)]
    result = dict(result)
    for speaker in new:
        fold = min(range(k), key=lambda i: (counts[i], i))
        counts[fold] += 1
        result[speaker] = fold
    return result


def extend_recorded(
    recorded: dict[str, str], speakers: Iterable[str], *, seed: int, given: dict[str, str] | None = None,
) -> dict[str, str]:
    """The store's split after adding `speakers`: recorded speakers keep their partition; new ones take the
    corpus's own split when it has one (`given`), else the stable rule. A given split that moves a recorded
    speaker is refused, naming both. Fewer than 3 speakers and nothing recorded: no split ("" for each), as
    `replay_split` lets a first generation of under 3 wait for the next."""
    if given:
        for speaker, partition in given.items():
            if speaker in recorded and recorded[speaker] != partition:
                raise SplitError(
                    f"the corpus puts speaker {speaker} in '{partition}' but the store recorded '{recorded[speaker]}'; "
                    "splits never move: fix the corpus's split column or extract into a new --store")
        return {**{s: "" for s in speakers}, **recorded, **{s: p for s, p in given.items() if s not in recorded}}
    speakers = list(speakers)
    if not recorded and len(set(speakers)) < 3:  # no split yet: the next extract that brings the third speaker makes it
        return {s: "" for s in speakers}
    return actor_disjoint_split(speakers, seed=seed, existing=recorded)


MIN_SPEAKERS = 3


def missing_split(speakers: Sequence[str], splits: Sequence[str], location: str) -> str | None:
    """None when every clip of the store has a partition; else one line saying why it has none and what to do.

    A store of one or two speakers (one or two videos from the wild) is extracted without a split: an
    actor-disjoint train/val/test split needs three. It gets one when later extracts bring more speakers."""
    if all(splits):
        return None
    n = len(set(speakers))
    return (f"store '{location}' has no train/val/test split: its {n} speaker(s) are fewer than the {MIN_SPEAKERS} an actor-disjoint "
            "split needs; extract more speakers into it, or extract from a manifest with a split column (train/val/test per clip)")
