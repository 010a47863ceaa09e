import re
from pathlib import Path

import pytest

from pipeline.corpora import CorpusError, cremad, list_corpora, load_corpus, manifest, ravdess
from pipeline.records import CREMA_D_EMOTIONS
from pipeline.splits import assign_splits, check_disjoint


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_label_map_is_alphabetical_and_single():
    assert CREMA_D_EMOTIONS == ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    assert list(CREMA_D_EMOTIONS) == sorted(CREMA_D_EMOTIONS)


def test_real_cremad_name_list_parses(cremad_meta):
    names = cremad.read_clip_names(cremad_meta)
    assert len(names) == 7442
    parsed = [cremad.parse_clip_name(n) for n in names]
    actors = {p["actor"] for p in parsed}
    assert len(actors) == 91
    assert min(actors) == "1001" and max(actors) == "1091"
    assert {p["sentence"] for p in parsed} == {"IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI"}
    assert {p["level"] for p in parsed} == {"LO", "MD", "HI", "XX"}
    assert set(cremad.KNOWN_BROKEN) <= set(names)


def test_real_cremad_splits_are_actor_disjoint(cremad_meta, tmp_path):
    names = cremad.read_clip_names(cremad_meta)
    records = [cremad.record_for(n, tmp_path / f"{n}.flv", None, cremad.KNOWN_BROKEN) for n in names]
    split = assign_splits(records, seed=0)
    check_disjoint(split)
    speakers = {s: {r.speaker for r in split if r.split == s} for s in ("train", "val", "test")}
    counts = [len(speakers[s]) for s in ("train", "val", "test")]
    assert sum(counts) == 91  # every actor placed, each within one speaker of 70/15/15 (stable rule, stores/splits.py)
    assert all(abs(n - f * 91) < 1 for n, f in zip(counts, (0.70, 0.15, 0.15))), counts
    assert not (speakers["train"] & speakers["test"]) and not (speakers["val"] & speakers["test"])
    assert sum(r.split == "train" for r in split) / len(split) == pytest.approx(0.7, abs=0.03)


def test_cremad_layout_wav_fallback_broken_and_metadata(tmp_path, cremad_meta):
    for name in ("1001_IEO_NEU_XX", "1001_IEO_ANG_HI", "1076_MTI_SAD_XX"):
        touch(tmp_path / "VideoFlash" / f"{name}.flv")
    touch(tmp_path / "AudioWAV" / "1001_IEO_NEU_XX.wav")
    touch(tmp_path / "VideoFlash" / "notes.flv")  # not a clip name: skipped
    records = cremad.load(tmp_path, meta=cremad_meta)
    by_id = {r.clip_id: r for r in records}
    assert list(by_id) == ["1001_IEO_ANG_HI", "1001_IEO_NEU_XX", "1076_MTI_SAD_XX"]
    assert by_id["1001_IEO_NEU_XX"].audio_path.endswith("AudioWAV/1001_IEO_NEU_XX.wav")
    assert by_id["1001_IEO_ANG_HI"].audio_path is None  # the video's own track is the fallback
    assert by_id["1001_IEO_ANG_HI"].label == 0 and by_id["1001_IEO_NEU_XX"].label == 4
    assert "no audio" in by_id["1076_MTI_SAD_XX"].broken
    neutral = by_id["1001_IEO_NEU_XX"].extra
    assert neutral["sex"] == "Male" and neutral["age"] == "51"
    assert neutral["perceived_voice"] == "N" and neutral["perceived_face"] == "N"
    assert neutral["agreement_voice"] == pytest.approx(0.909, abs=1e-3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "does not exist"),
        (lambda p: p, "no VideoFlash/ folder"),
        (lambda p: (p / "VideoFlash").mkdir() or p, "holds no .flv files"),
    ],
)
def test_cremad_bad_roots_say_what_to_do(tmp_path, make, message):
    with pytest.raises(CorpusError, match=message):
        cremad.load(make(tmp_path))


def test_ravdess_takes_audio_visual_files_only(tmp_path):
    touch(tmp_path / "Actor_01" / "01-01-05-02-01-01-01.mp4")  # AV speech, angry
    touch(tmp_path / "Actor_01" / "02-01-05-02-01-01-01.mp4")  # video-only: skipped
    touch(tmp_path / "Actor_02" / "01-02-08-01-02-02-02.mp4")  # AV song, surprised
    records = ravdess.load(tmp_path)
    assert [r.clip_id for r in records] == ["01-01-05-02-01-01-01", "01-02-08-01-02-02-02"]
    assert [r.emotion for r in records] == ["ANG", "SUR"]
    assert [r.label for r in records] == [4, 7]
    assert [r.speaker for r in records] == ["01", "02"]
    assert records[1].extra["vocal_channel"] == "song"


def test_manifest_resolves_paths_keeps_splits_and_checks_them(tmp_path):
    csv = tmp_path / "m.csv"
    absolute = tmp_path / "abs" / "c.mp4"
    for path in (tmp_path / "v/a.mp4", tmp_path / "v/b.mp4", tmp_path / "w/b.wav", absolute):
        touch(path)
    csv.write_text(f"video,label,speaker,split,audio\nv/a.mp4,happy,s1,train,\nv/b.mp4,sad,s2,test,w/b.wav\n{absolute},happy,s3,val,\n")
    records = load_corpus("manifest", csv)
    assert [r.label for r in records] == [0, 1, 0] and [r.emotion for r in records] == ["HAP", "SAD", "HAP"]  # HAP=0, SAD=1
    assert records[0].video_path == str(tmp_path / "v/a.mp4") and records[2].video_path == str(absolute)
    assert records[1].audio_path == str(tmp_path / "w/b.wav")
    assert [r.split for r in assign_splits(records)] == ["train", "test", "val"]
    csv.write_text("video,label,speaker,split\nv/a.mp4,NEU,s1,train\nv/b.mp4,NEU,s1,test\n")
    with pytest.raises(ValueError, match="speaker s1 is in both"):
        assign_splits(load_corpus("manifest", csv))
    csv.write_text("video,label\na.mp4,x\n")
    with pytest.raises(CorpusError, match="lacks column"):
        manifest.load(csv)


def test_unknown_dataset_lists_choices(tmp_path):
    with pytest.raises(CorpusError, match=re.escape(f"unknown dataset 'nope'; choose one of: {', '.join(list_corpora())}")):
        load_corpus("nope", tmp_path)
