import subprocess
import sys

import pytest

from pipeline.records import ClipRecord
from pipeline.splits import SplitError, actor_disjoint_split, check_disjoint, fold_partitions, kfold_by_actor

SPEAKERS = [f"{1001 + i}" for i in range(91)]


def test_split_is_deterministic_disjoint_and_seeded():
    a = actor_disjoint_split(SPEAKERS, seed=3)
    assert a == actor_disjoint_split(list(reversed(SPEAKERS)), seed=3)  # order of input irrelevant
    assert a != actor_disjoint_split(SPEAKERS, seed=4)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 63, "val": 14, "test": 14}


def test_split_is_identical_in_a_fresh_process():
    code = "from pipeline.splits import actor_disjoint_split as f; print(sorted(f([str(1001+i) for i in range(91)], seed=7).items()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(actor_disjoint_split(SPEAKERS, seed=7).items()))


def test_small_corpora_keep_every_partition_non_empty():
    split = actor_disjoint_split(["a", "b", "c"], seed=0)
    assert sorted(split.values()) == ["test", "train", "val"]
    with pytest.raises(SplitError, match="at least 3"):
        actor_disjoint_split(["a", "b"])


def test_kfold_covers_every_actor_once_and_rounds_are_disjoint():
    folds = kfold_by_actor(SPEAKERS, k=5, seed=0)
    sizes = sorted(list(folds.values()).count(f) for f in range(5))
    assert sizes == [18, 18, 18, 18, 19]
    for test_fold in range(5):
        parts = fold_partitions(folds, test_fold=test_fold, k=5)
        assert {s for s, p in parts.items() if p == "test"} == {s for s, f in folds.items() if f == test_fold}
        assert {s for s, p in parts.items() if p == "val"} == {s for s, f in folds.items() if f == (test_fold + 1) % 5}


def test_check_refuses_a_speaker_in_two_partitions():
    clip = dict(video_path="v", label=0, emotion="ANG")
    records = [ClipRecord(clip_id="a", speaker="1", split="train", **clip), ClipRecord(clip_id="b", speaker="1", split="val", **clip)]
    with pytest.raises(SplitError, match="speaker 1 is in both 'train' and 'val'"):
        check_disjoint(records)
