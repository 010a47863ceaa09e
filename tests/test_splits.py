import subprocess
import sys

import pytest

import random


from encoders.partition import split_column
from pipeline.records import ClipRecord
from pipeline.splits import SplitError, actor_disjoint_split, add_to_store, check_disjoint, fold_partitions, kfold_by_actor
from stores.splits import FRACTIONS, PARTITIONS, VAL_SHARE, generations, replay_split
from stores.store import FeatureStore
from tests.conftest import run_cli

SPEAKERS = [f"{1001 + i}" for i in range(91)]


def test_split_is_deterministic_disjoint_and_seeded():
    a = actor_disjoint_split(SPEAKERS, seed=3)
    assert a == actor_disjoint_split(list(reversed(SPEAKERS)), seed=3)  # order of input irrelevant
    assert a != actor_disjoint_split(SPEAKERS, seed=4)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert all(abs(counts[p] - f * 91) < 1 for p, f in zip(PARTITIONS, FRACTIONS)), counts


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


@pytest.mark.parametrize("k", [3, 5, 10])
def test_kfold_validation_is_a_share_of_the_other_folds_not_the_next_fold(k):
    """Rule 2: every speaker in exactly one partition; validation is VAL_SHARE of the non-test speakers, drawn from
    every other fold; training gets (k-1)/k minus validation (under rule 1, --folds 3 trained on a third)."""
    folds = kfold_by_actor(SPEAKERS, k=k, seed=0)
    for test_fold in range(k):
        parts = fold_partitions(folds, test_fold=test_fold, k=k)
        assert set(parts) == set(SPEAKERS) and set(parts.values()) == {"train", "val", "test"}
        val = {s for s, p in parts.items() if p == "val"}
        assert val != {s for s, f in folds.items() if f == (test_fold + 1) % k}  # not the next fold
        assert len({folds[s] for s in val}) > 1  # drawn from several folds
        rest = len(SPEAKERS) - sum(p == "test" for p in parts.values())
        assert abs(len(val) - VAL_SHARE * rest) < 1
        train_share = sum(p == "train" for p in parts.values()) / len(SPEAKERS)
        assert abs(train_share - (k - 1) / k * (1 - VAL_SHARE)) < 1.5 / len(SPEAKERS)


def test_kfold_validation_never_moves_as_speakers_are_added():
    old = kfold_by_actor(SPEAKERS[:40], k=5, seed=3)
    new = kfold_by_actor(SPEAKERS, k=5, seed=3, existing=old)
    for test_fold in range(5):
        before = fold_partitions(old, test_fold=test_fold, k=5, seed=3, gens=[SPEAKERS[:40]])
        after = fold_partitions(new, test_fold=test_fold, k=5, seed=3, gens=[SPEAKERS[:40], SPEAKERS[40:]])
        assert {s: after[s] for s in before} == before


def test_check_refuses_a_speaker_in_two_partitions():
    clip = dict(video_path="v", label=0, emotion="ANG")
    records = [ClipRecord(clip_id="a", speaker="1", split="train", **clip), ClipRecord(clip_id="b", speaker="1", split="val", **clip)]
    with pytest.raises(SplitError, match="speaker 1 is in both 'train' and 'val'"):
        check_disjoint(records)


# ---- stability: adding speakers moves nobody ---------------------------------------------------------------
def within_one_of_target(split: dict[str, str]) -> bool:
    n = len(split)
    return all(abs(sum(v == p for v in split.values()) - f * n) < 1 for p, f in zip(PARTITIONS, FRACTIONS))


@pytest.mark.parametrize("before, after", [(8, 12), (90, 91), (3, 4), (20, 91)])
def test_adding_speakers_moves_none_of_the_70_15_15_split(before, after):
    for seed in range(5):
        old = actor_disjoint_split(SPEAKERS[:before], seed=seed)
        new = actor_disjoint_split(SPEAKERS[:after], seed=seed, existing=old)
        assert {s: new[s] for s in old} == old
        assert set(new) == set(SPEAKERS[:after]) and set(new.values()) == set(PARTITIONS)
        assert within_one_of_target(new) or after < 5, (seed, new)


def test_speakers_arriving_in_many_batches_never_move_and_fractions_stay_within_one():
    for seed in range(20):
        rng = random.Random(seed)
        order = SPEAKERS[:]
        rng.shuffle(order)
        split, start = {}, 0
        while start < len(order):
            batch = order[start : start + rng.choice([1, 2, 3, 7, 20])] if start else order[:3]
            start += len(batch)
            grown = actor_disjoint_split(batch, seed=seed, existing=split)
            assert {s: grown[s] for s in split} == split
            split = grown
            assert within_one_of_target(split) or len(split) < 4


@pytest.mark.parametrize("before, after, k", [(8, 12, 5), (90, 91, 5), (10, 31, 3)])
def test_adding_speakers_moves_nobody_between_folds(before, after, k):
    for seed in range(5):
        old = kfold_by_actor(SPEAKERS[:before], k=k, seed=seed)
        new = kfold_by_actor(SPEAKERS[:after], k=k, seed=seed, existing=old)
        assert {s: new[s] for s in old} == old
        sizes = [list(new.values()).count(f) for f in range(k)]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == after


def test_a_speaker_is_placed_by_its_own_hash_not_by_the_others():
    """Within one generation the placing order depends on each speaker alone: listing order is irrelevant."""
    assert actor_disjoint_split(SPEAKERS[:30], seed=1) == actor_disjoint_split(SPEAKERS[29::-1], seed=1)
    assert kfold_by_actor(SPEAKERS[:30], k=5, seed=1) == kfold_by_actor(SPEAKERS[29::-1], k=5, seed=1)


def test_generations_come_from_the_rows_where_each_extract_began():
    rows = ["a", "a", "b", "c", "a", "d", "e", "d"]
    assert generations(rows, [0]) == [["a", "b", "c", "d", "e"]]
    assert generations(rows, [0, 5]) == [["a", "b", "c"], ["d", "e"]]


# ---- the store keeps its split ----------------------------------------------------------------------------
def clips(speakers, per=3, split=""):
    return [ClipRecord(clip_id=f"{s}_{k}", video_path=f"{s}_{k}.flv", label=k % 6, emotion="ANG", speaker=s, split=split)
            for s in speakers for k in range(per)]


def recorded(store: FeatureStore) -> dict[str, str]:
    return dict(zip(store.root["clips/speaker"][:], store.root["clips/split"][:]))


def test_a_store_grown_by_extracts_moves_no_speaker_in_its_split_or_any_fold(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=["ANG"], split_seed=4)
    add_to_store(store, clips(SPEAKERS[:8]), seed=None)
    first, folds_before = recorded(store), {}
    for fold in range(4):
        folds_before[fold] = split_column(store, store.clip_table(), split_seed=None, fold=fold, folds=4)
    other_seed = split_column(store, store.clip_table(), split_seed=9, fold=None, folds=5)
    rows, wrote, _ = add_to_store(store, clips(SPEAKERS[8:12]), seed=None)
    assert wrote and list(rows) == list(range(24, 36)) and store.speaker_batches == [0, 24]
    after = recorded(store)
    assert {s: after[s] for s in first} == first and within_one_of_target(after)
    for fold in range(4):  # k-fold by actor, replayed from the generations the store recorded
        now = split_column(store, store.clip_table(), split_seed=None, fold=fold, folds=4)
        assert list(now[:24]) == list(folds_before[fold])
    assert list(split_column(store, store.clip_table(), split_seed=9, fold=None, folds=5)[:24]) == list(other_seed)
    # the store's own split is what the rule gives when replayed over the same generations
    assert replay_split(generations(store.root["clips/speaker"][:], store.speaker_batches), seed=4) == after
    assert add_to_store(store, clips(SPEAKERS[:12]), seed=None)[1] is False  # a re-run writes nothing


def test_a_store_made_under_the_old_rule_keeps_its_split(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=["ANG"], split_seed=0)
    legacy = {s: PARTITIONS[i % 3] for i, s in enumerate(SPEAKERS[:9])}  # any recorded split, not the new rule's
    store.add_clips([r.with_split(legacy[r.speaker]) for r in clips(SPEAKERS[:9])])
    store.root.attrs["avstore"] = {k: v for k, v in store.info.items() if k not in ("speaker_batches", "split_rule")}
    add_to_store(store, clips(SPEAKERS[:15]), seed=None)
    after = recorded(store)
    assert {s: after[s] for s in legacy} == legacy and store.speaker_batches == [0, 27]


def test_a_split_option_that_disagrees_with_the_store_is_refused_and_nothing_written(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=["ANG"], split_seed=0)
    add_to_store(store, clips(SPEAKERS[:6]), seed=0)
    with pytest.raises(SplitError, match="--split-seed 5 disagrees .* recorded with --split-seed 0"):
        add_to_store(store, clips(SPEAKERS[:8]), seed=5)
    moved = recorded(store)[SPEAKERS[0]]
    other = next(p for p in PARTITIONS if p != moved)
    given = [r.with_split(other if r.speaker == SPEAKERS[0] else recorded(store)[r.speaker]) for r in clips(SPEAKERS[:6])]
    with pytest.raises(SplitError, match=f"speaker {SPEAKERS[0]} in '{other}' but the store recorded '{moved}'"):
        add_to_store(store, given, seed=None)
    assert len(FeatureStore.open(tmp_path / "s.zarr")) == 18


def test_cli_extract_with_a_disagreeing_split_seed_exits_2_with_one_line(tmp_path):
    csv = tmp_path / "corpus.csv"
    csv.write_text("video,label,speaker\n" + "".join(f"v{s}_{k}.flv,{('ANG', 'HAP')[k]},{s}\n" for s in SPEAKERS[:5] for k in range(2)))
    for s in SPEAKERS[:5]:
        for k in range(2):
            (tmp_path / f"v{s}_{k}.flv").write_bytes(b"")
    location = tmp_path / "s.zarr"
    from pipeline.corpora import load_corpus

    store = FeatureStore.create(location, dataset="manifest", class_names=["ANG", "HAP"], split_seed=0)
    add_to_store(store, load_corpus("manifest", csv), seed=0)
    before = sorted(p.relative_to(location) for p in location.rglob("*"))
    result = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(location), "--split-seed", "3", "--workers", "0")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--split-seed 3" in result.stderr and "--split-seed 0" in result.stderr
    assert sorted(p.relative_to(location) for p in location.rglob("*")) == before


# ---- any number of speakers (issue 23) --------------------------------------------------------------------------
def test_a_store_of_one_or_two_speakers_has_no_split_until_the_third_arrives(tmp_path):
    """One or two videos from the wild can be extracted: the store holds no split and says so; the extract that
    brings the third speaker splits all of them, as the stable rule replayed over the generations does."""
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["ANG"], split_seed=0)
    add_to_store(store, clips(SPEAKERS[:1]), seed=None)
    add_to_store(store, clips(SPEAKERS[:2]), seed=None)
    from stores.splits import missing_split

    table = store.clip_table()
    assert set(table["split"]) == {""} and store.recorded_split() == {}
    why = missing_split(table["speaker"], table["split"], store.location)
    assert "no train/val/test split" in why and "2 speaker(s)" in why and "split column" in why
    with pytest.raises(SplitError, match="no train/val/test split: its 2 speaker"):
        split_column(store, table, split_seed=None, fold=None, folds=5)
    add_to_store(store, clips(SPEAKERS[2:4]), seed=None)
    after = recorded(store)
    assert sorted(set(after.values())) == ["test", "train", "val"] and len(after) == 4
    assert replay_split(generations(store.root["clips/speaker"][:], store.speaker_batches), seed=0) == after
    assert missing_split(store.clip_table()["speaker"], store.clip_table()["split"], store.location) is None


def test_a_manifest_split_column_splits_even_one_speaker(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["ANG"], split_seed=0)
    add_to_store(store, clips(SPEAKERS[:1], split="test"), seed=None)
    assert recorded(store) == {SPEAKERS[0]: "test"}


@pytest.mark.slow
def test_one_speakers_videos_are_extracted_without_a_split_and_train_asks_for_one_in_one_line(tmp_path):
    """Before, extract refused the corpus ("cannot make actor-disjoint splits"), so a user could not extract one video."""
    from pipeline.corpora.sample import write_sample_corpus

    write_sample_corpus(tmp_path / "corpus", actors=3, sentences=1, seed=0)
    videos = sorted((tmp_path / "corpus" / "VideoFlash").glob("1001_*.flv"))[:2]
    csv = tmp_path / "wild.csv"
    csv.write_text("video,label,speaker\n" + "".join(f"{v},ANG,singer\n" for v in videos))
    store = str(tmp_path / "s.zarr")
    small = ["--size", "48", "--n-mels", "32", "--frames", "6", "--no-progress", "--workers", "0"]
    extracted = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", store, *small)
    assert extracted.returncode == 0, extracted.stderr
    assert "splits: store" in extracted.stdout and "no train/val/test split: its 1 speaker(s)" in extracted.stdout
    assert list(FeatureStore.open(store).feature_sets("faces")[0].status()) == ["ok", "ok"]
    trained = run_cli("train", "--encoder", "resnet18", "--modality", "audio", "--store", store, "--out", str(tmp_path / "run"), "--no-progress")
    assert trained.returncode == 2 and trained.stderr.count("\n") == 1, trained.stderr
    assert "no train/val/test split" in trained.stderr and "split column" in trained.stderr
