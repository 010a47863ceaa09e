"""Actor-disjoint splits of speaker ids: no speaker ever appears in two partitions.

These live in `stores/` because both the pipeline (which stores splits) and the trainer (which may
re-derive them with another seed) need them, and the trainer must not import the pipeline.


The seed code split clips at random, so every actor was in train and test and the models could recognise
the actor instead of the emotion (SPEC defect 1). Here a split is a function of the sorted speaker ids and a
seed only — numpy's PCG64 generator gives the same permutation on every machine — and `check_disjoint`
refuses any overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

PARTITIONS = ("train", "val", "test")


class SplitError(ValueError):
    """A speaker sits in two partitions, or there are too few speakers to split."""


def actor_disjoint_split(speakers: Iterable[str], *, seed: int = 0, fractions: Sequence[float] = (0.70, 0.15, 0.15)) -> dict[str, str]:
    """Speaker -> train/val/test, with about `fractions` of the speakers in each (each non-empty)."""
    unique = sorted(set(speakers))
    if len(unique) < 3:
        raise SplitError(f"{len(unique)} speaker(s) cannot make actor-disjoint train/val/test splits; at least 3 are needed")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    n_val = max(1, round(fractions[1] * len(unique)))
    n_test = max(1, round(fractions[2] * len(unique)))
    n_train = len(unique) - n_val - n_test
    if n_train < 1:
        raise SplitError(f"{len(unique)} speakers are too few for fractions {tuple(fractions)}")
    return {s: ("train" if k < n_train else "val" if k < n_train + n_val else "test") for k, s in enumerate(order)}


def kfold_by_actor(speakers: Iterable[str], *, k: int = 5, seed: int = 0) -> dict[str, int]:
    """Speaker -> fold 0..k-1, folds differing in size by at most one speaker."""
    unique = sorted(set(speakers))
    if len(unique) < k:
        raise SplitError(f"{len(unique)} speakers cannot make {k} actor-disjoint folds")
    order = [unique[i] for i in np.random.default_rng(seed).permutation(len(unique))]
    return {s: n % k for n, s in enumerate(order)}


def fold_partitions(folds: dict[str, int], *, test_fold: int, k: int) -> dict[str, str]:
    """Cross-validation round `test_fold`: that fold is test, the next one validation, the rest train."""
    val_fold = (test_fold + 1) % k
    return {s: "test" if f == test_fold else "val" if f == val_fold else "train" for s, f in folds.items()}


