"""Raters' votes: read from CREMA-D's tables, generated for the sample corpus, given in a manifest, kept in the
store's clip table, summarised without decoding, and the raters' accuracy that reproduces the CREMA-D paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from encoders.plots import HUMAN_RATERS_CREMA_D
from pipeline.corpora import CorpusError, cremad, load_corpus
from pipeline.corpora.sample import SENTENCES, VOTE_ACCURACY, VOTE_RATERS, ClipSpec, clip_id, sample_votes
from pipeline.records import CREMA_D_EMOTIONS, VOTE_MODALITIES, ClipRecord
from pipeline.votes import (
    agreement_levels, hard_labels, raters_accuracy, read_tabulated_votes, record_votes, summarise, write_tabulated_votes,
)
from stores.clip_votes import read_votes
from stores.store import FeatureStore
from tests.conftest import run_cli

PAPER = {"voice": HUMAN_RATERS_CREMA_D["audio"], "face": HUMAN_RATERS_CREMA_D["vision"], "av": HUMAN_RATERS_CREMA_D["av"]}
"""Cao et al. 2014: raters' accuracy against the intended emotion, 40.9 / 58.2 / 63.6 %."""


def intended_of(name: str) -> int:
    return CREMA_D_EMOTIONS.index(cremad.parse_clip_name(name)["emotion"])


def test_the_real_tables_give_every_clip_three_vote_distributions(cremad_meta):
    votes = read_tabulated_votes(cremad_meta / "tabulatedVotes.csv")
    assert len(votes) == 7442 and sum(len(v) for v in votes.values()) == 22326
    first = votes["1001_IEO_NEU_XX"]
    assert first["voice"] == [0, 0, 0, 1, 10, 0]  # A D F H N S of row 100001
    assert set(first) == set(VOTE_MODALITIES)


def test_raters_accuracy_recomputed_from_the_tables_matches_the_paper_within_one_point(cremad_meta):
    """Balanced (mean over the six intended emotions of votes for it / all votes) lands within 0.5 points of each
    of the paper's figures, pooled (all votes) within 0.9; both stay within one point."""
    votes = read_tabulated_votes(cremad_meta / "tabulatedVotes.csv")
    names = sorted(votes)
    intended = np.asarray([intended_of(n) for n in names])
    for modality, paper in PAPER.items():
        counts = np.asarray([votes[n][modality] for n in names])
        accuracy = raters_accuracy(intended, counts, names, modality)
        assert accuracy["clips"] == 7442
        assert abs(accuracy["balanced"] - paper) < 0.01, (modality, accuracy)
        assert abs(accuracy["pooled"] - paper) < 0.01, (modality, accuracy)
        assert accuracy["majority"] > accuracy["pooled"]  # the crowd as one classifier beats a single rater


def test_summary_prints_the_raters_accuracy_over_the_clips_the_tables_cover(cremad_meta, tmp_path):
    names = cremad.read_clip_names(cremad_meta)
    (tmp_path / "VideoFlash").mkdir()
    for name in [*names, "1092_IEO_ANG_HI"]:  # an actor the tables do not know
        (tmp_path / "VideoFlash" / f"{name}.flv").write_bytes(b"")
    result = run_cli("summary", "--dataset", "crema-d", "--root", str(tmp_path), "--meta", str(cremad_meta))
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    for modality, paper in PAPER.items():
        printed = float(lines[modality].split()[1])
        assert abs(printed - 100 * paper) < 1.0, lines[modality]
        assert "7442 of 7443 clips" in lines[modality]
    as_json = json.loads(run_cli("summary", "--dataset", "crema-d", "--root", str(tmp_path), "--meta", str(cremad_meta), "--json").stdout)
    assert as_json["perceived"]["av"]["votes"] == 71778 and sum(as_json["perceived"]["av"]["levels"].values()) == 7442


def test_ties_are_broken_by_a_seeded_hash_of_the_clip_not_by_class_order():
    tied = np.asarray([[3, 0, 0, 3, 1, 0]] * 200)  # ANG and HAP tied on every clip
    ids = [f"c{i}" for i in range(200)]
    labels = hard_labels(tied, ids, "av")
    assert set(labels.tolist()) == {0, 3} and 60 < np.sum(labels == 0) < 140  # both tied classes, about evenly
    assert np.array_equal(labels, hard_labels(tied, ids, "av"))  # the same every time
    assert np.array_equal(labels[::-1], hard_labels(tied[::-1], ids[::-1], "av"))  # whatever the order of the clips
    assert not np.array_equal(labels, hard_labels(tied, ids, "av", seed=1))  # the seed changes the draw
    assert hard_labels(np.asarray([[0, 0, 5, 1, 0, 0], [0] * 6]), ["a", "b"], "av").tolist() == [2, -1]  # a clear majority; no votes


def test_agreement_levels():
    votes = np.asarray([[0, 0, 7, 0, 0, 0], [0, 1, 5, 1, 0, 0], [2, 1, 3, 1, 0, 1], [3, 3, 1, 0, 0, 0], [0] * 6])
    assert agreement_levels(votes).tolist() == ["unanimous", "majority", "plurality", "tie", ""]


def test_sample_votes_follow_their_documented_relation_to_the_intended_emotion():
    specs = [ClipSpec(clip_id(a, s, e), a, s, e, 60) for a in range(40) for s in range(len(SENTENCES)) for e in range(6)]
    records = [ClipRecord(clip_id=spec.clip_id, video_path="", label=spec.emotion, emotion=CREMA_D_EMOTIONS[spec.emotion],
                          speaker=str(spec.actor), votes=sample_votes(spec, seed=0)) for spec in specs]
    assert records[5].votes == sample_votes(specs[5], seed=0) != sample_votes(specs[5], seed=1)
    for modality, expected in VOTE_ACCURACY.items():
        intended, votes, ids = record_votes(records, modality)
        raters = votes.sum(1)
        assert raters.min() >= VOTE_RATERS[0] and raters.max() <= VOTE_RATERS[1]
        assert raters_accuracy(intended, votes, ids, modality)["pooled"] == pytest.approx(expected, abs=0.02)


def test_the_sample_corpus_writes_its_votes_in_crema_d_format_and_reads_them_back(tmp_path):
    from pipeline.corpora.sample import write_sample_corpus

    ids = write_sample_corpus(tmp_path, actors=1, sentences=1, seed=0)
    records = load_corpus("sample", tmp_path)
    assert [r.clip_id for r in records] == ids
    tables = read_tabulated_votes(tmp_path / "tabulatedVotes.csv")
    for record in records:
        spec = ClipSpec(record.clip_id, 0, 0, record.label, 0)
        assert record.votes == tables[record.clip_id] == sample_votes(spec, seed=0)
        assert record.extra["perceived_av"]  # the majority string, as CREMA-D's reader gives it


def test_crema_d_meta_needs_one_of_its_tables(tmp_path):
    (tmp_path / "VideoFlash").mkdir()
    (tmp_path / "VideoFlash" / "1001_IEO_NEU_XX.flv").write_bytes(b"")
    (tmp_path / "meta").mkdir()
    with pytest.raises(CorpusError, match="lacks VideoDemographics.csv and tabulatedVotes.csv"):
        cremad.load(tmp_path, meta=tmp_path / "meta")
    write_tabulated_votes(tmp_path / "meta" / "tabulatedVotes.csv", {"1001_IEO_NEU_XX": {"face": [0, 0, 1, 0, 4, 0]}})
    (record,) = cremad.load(tmp_path, meta=tmp_path / "meta")
    assert record.votes == {"face": [0, 0, 1, 0, 4, 0]} and record.extra["perceived_face"] == "N"


def test_manifest_takes_optional_vote_columns(tmp_path):
    csv = tmp_path / "m.csv"
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).touch()  # a manifest's files must exist (checked before any work)
    csv.write_text("video,label,speaker,votes_av,votes_voice\na.mp4,happy,s1,happy:3 SAD:1,\nb.mp4,sad,s2,,sad:2;HAP:2\n")
    a, b = load_corpus("manifest", csv)
    assert a.votes == {"av": [3, 1]} and b.votes == {"voice": [2, 2]}  # classes HAP=0, SAD=1, any spelling of the table
    csv.write_text("video,label,speaker,votes_face\na.mp4,happy,s1,angry:3\n")
    with pytest.raises(CorpusError, match=r"line 2, column votes_face: 'angry:3' is not label:count"):
        load_corpus("manifest", csv)


def test_the_store_keeps_votes_in_its_clip_table_and_fills_them_in_later(tmp_path):
    location = tmp_path / "s.zarr"
    store = FeatureStore.create(location, dataset="sample", class_names=CREMA_D_EMOTIONS, split_seed=0)
    plain = [ClipRecord(clip_id=f"c{i}", video_path="v", label=i % 6, emotion="ANG", speaker=str(i)) for i in range(3)]
    store.add_clips(plain)
    assert read_votes(store.root) is None and not store.votes_written  # no votes, no arrays
    voted = [ClipRecord(**{**r.to_dict(), "votes": {"av": [0, 0, 0, 1, 3, 0], "voice": [2, 2, 0, 0, 0, 0]}}) for r in plain[1:]]
    extra = ClipRecord(clip_id="c9", video_path="v", label=0, emotion="ANG", speaker="9", votes={"face": [4, 0, 0, 0, 0, 0]})
    rows = store.add_clips([*voted, extra])
    assert rows.tolist() == [1, 2, 3] and store.votes_written
    stored = read_votes(FeatureStore.open(location).root)
    assert stored.votes.shape == (4, 3, 6)
    assert stored.raters.tolist() == [[0, 0, 0], [4, 0, 4], [4, 0, 4], [0, 4, 0]]
    assert stored.modality("av")[1].tolist() == [0, 0, 0, 1, 3, 0]
    assert stored.agreement[1].tolist() == pytest.approx([0.5, 0.0, 0.75])
    store.add_clips(plain)  # a run without votes leaves them alone
    assert not store.votes_written and read_votes(store.root).raters[1].tolist() == [4, 0, 4]
    store.add_clips([ClipRecord(clip_id="c10", video_path="v", label=0, emotion="ANG", speaker="10")])
    assert read_votes(store.root).votes.shape[0] == len(store) == 5  # the vote arrays grow with the table


def test_summary_of_records_without_votes_is_empty():
    assert summarise([ClipRecord(clip_id="a", video_path="v", label=0, emotion="ANG", speaker="1")]) == {}


def test_votes_move_to_the_stores_class_order_when_the_corpus_numbers_classes_otherwise():
    """A store that learned HAP after NEU numbers it 2; a corpus listing ANG, HAP, NEU counts its votes in that order.
    Without the move, HAP's votes would be stored as NEU's."""
    from pipeline.reconcile import plan_changes

    table = {"clip_id": np.array(["old"]), "emotion": np.array(["NEU"]), "label": np.array([1]), "speaker": np.array(["s1"])}
    record = ClipRecord(clip_id="new", video_path="v", label=1, emotion="HAP", speaker="s2", votes={"av": [1, 2, 3]})
    changes = plan_changes(table, ["ANG", "NEU"], [record], ["ANG", "HAP", "NEU"], declared=False, store="s.zarr")
    assert changes.class_names == ["ANG", "NEU", "HAP"]
    (numbered,) = changes.numbered([record])
    assert numbered.label == 2 and numbered.votes == {"av": [1, 3, 2]}  # ANG 1, NEU 3, HAP 2
