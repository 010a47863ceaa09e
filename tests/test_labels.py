"""Label maps: one emotion table, manifests numbered by their own classes, messy CSVs, and stores that follow a
corrected or growing corpus without ever relabelling a clip silently."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.corpora import CorpusError, class_list, load_corpus, manifest
from pipeline.labels import EMOTIONS, LabelError, emotion_code, merge_class_lists
from pipeline.records import ClipRecord
from pipeline.splits import add_to_store
from stores.store import FeatureStore
from tests.conftest import run_cli

SMALL = ["--size", "48", "--n-mels", "32", "--frames", "8", "--detect-every", "3", "--no-progress", "--workers", "0"]


def touch(folder: Path, *names: str) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")


# ---- the emotion table and manifest parsing -------------------------------------------------------------
@pytest.mark.parametrize("spellings, code", [
    (("ANG", "ang", "anger", "Angry"), "ANG"), (("DIS", "disgust"), "DIS"), (("FEA", "Fear"), "FEA"),
    (("HAP", " happy", "HAPPINESS "), "HAP"), (("NEU", "neutral"), "NEU"), (("SAD", "sad", "Sadness"), "SAD"),
    (("CAL", "calm"), "CAL"), (("SUR", "surprise", "Surprised"), "SUR")])
def test_every_spelling_of_an_emotion_maps_to_its_one_code(spellings, code):
    assert code in EMOTIONS and {emotion_code(s) for s in spellings} == {code}
    assert emotion_code("joy") is None


def test_a_manifest_saved_by_a_spreadsheet_reads_like_a_clean_one(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4", "d.mp4")
    messy = "\ufeffVideo, Label , speaker\r\na.mp4, HAP,s1\r\nb.mp4,happy ,s2\r\n c.mp4 ,Sadness, s3\r\n\r\nd.mp4,neu,s1\r\n"
    (tmp_path / "messy.csv").write_bytes(messy.encode("utf-8"))
    (tmp_path / "clean.csv").write_text("video,label,speaker\na.mp4,HAP,s1\nb.mp4,HAP,s2\nc.mp4,SAD,s3\nd.mp4,NEU,s1\n")
    messy_records, clean = load_corpus("manifest", tmp_path / "messy.csv"), load_corpus("manifest", tmp_path / "clean.csv")
    assert [r.to_dict() for r in messy_records] == [r.to_dict() for r in clean]
    assert [(r.clip_id, r.emotion, r.label, r.speaker) for r in clean] == [("a", "HAP", 0, "s1"), ("b", "HAP", 0, "s2"), ("c", "SAD", 2, "s3"), ("d", "NEU", 1, "s1")]


def test_a_subset_of_cremad_emotions_is_numbered_by_its_own_classes(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4", "d.mp4")
    (tmp_path / "m.csv").write_text("video,label,speaker\na.mp4,SAD,s1\nb.mp4,ANG,s2\nc.mp4,NEU,s3\nd.mp4,HAP,s1\n")
    records = load_corpus("manifest", tmp_path / "m.csv")
    names, declared = class_list("manifest", records)
    assert names == ["ANG", "HAP", "NEU", "SAD"] and not declared
    assert {r.emotion: r.label for r in records} == {"ANG": 0, "HAP": 1, "NEU": 2, "SAD": 3}
    assert class_list("crema-d", records) == (["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], True)


def test_an_unknown_label_is_refused_unless_the_class_list_is_declared(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4")
    csv = tmp_path / "m.csv"
    csv.write_text("video,label,speaker\na.mp4,bored,s1\nb.mp4,happy,s2\nc.mp4,Bored,s3\n")
    with pytest.raises(CorpusError, match=r"2 label\(s\) outside the emotion table .*: Bored, bored; .* --classes"):
        manifest.load(csv)
    records = load_corpus("manifest", csv, classes="BORED, happy")  # declared order: BORED=0, HAP=1
    assert [(r.emotion, r.label) for r in records] == [("BORED", 0), ("HAP", 1), ("BORED", 0)]
    assert class_list("manifest", records, "BORED, happy") == (["BORED", "HAP"], True)
    with pytest.raises(CorpusError, match=r"2 label\(s\) not in --classes HAP: Bored, bored; add them"):
        load_corpus("manifest", csv, classes="HAP")
    with pytest.raises(CorpusError, match="--classes is for --dataset manifest"):
        load_corpus("crema-d", tmp_path, classes="ANG")


def test_cli_refuses_missing_files_up_front_listing_them_and_writes_nothing(tmp_path):
    touch(tmp_path, "here.mp4")
    rows = "".join(f"gone{k}.mp4,ANG,s{k}\n" for k in range(12))
    (tmp_path / "m.csv").write_text(f"video,label,speaker,audio\nhere.mp4,HAP,s1,gone.wav\n{rows}")
    store = tmp_path / "s.zarr"
    for command in (["extract", "--store", str(store)], ["summary"]):
        result = run_cli(*command, "--dataset", "manifest", "--root", str(tmp_path / "m.csv"))
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "13 file(s) missing: gone.wav, gone0.mp4, gone1.mp4" in result.stderr and "(first 10)" in result.stderr
    assert not store.exists()


def test_cli_refuses_unknown_labels_and_a_classes_list_for_a_fixed_corpus(tmp_path):
    touch(tmp_path, "a.mp4")
    (tmp_path / "m.csv").write_text("video,label,speaker\na.mp4,joy,s1\n")
    result = run_cli("summary", "--dataset", "manifest", "--root", str(tmp_path / "m.csv"))
    assert result.returncode == 2 and "outside the emotion table" in result.stderr and "--classes" in result.stderr
    result = run_cli("summary", "--dataset", "crema-d", "--root", str(tmp_path), "--classes", "ANG")
    assert result.returncode == 2 and "--classes is for --dataset manifest" in result.stderr


# ---- a store follows its corpus -----------------------------------------------------------------------------
def test_class_lists_grow_at_their_end_and_a_declared_list_never_renumbers():
    assert merge_class_lists(["ANG", "SAD"], ["ANG", "CAL", "HAP", "SAD"], declared=False, store="s") == ["ANG", "SAD", "CAL", "HAP"]
    assert merge_class_lists(["ANG", "SAD"], ["ANG", "SAD", "HAP"], declared=True, store="s") == ["ANG", "SAD", "HAP"]
    assert merge_class_lists(["ANG", "SAD", "HAP"], ["ANG"], declared=True, store="s") == ["ANG", "SAD", "HAP"]
    with pytest.raises(LabelError, match="numbers its classes ANG=0, SAD=1.* never change.*--classes ANG,SAD,HAP.*new --store"):
        merge_class_lists(["ANG", "SAD"], ["ANG", "HAP", "SAD"], declared=True, store="s")


def rows_of(speakers: dict[str, list[str]]) -> list[ClipRecord]:
    """Clips named <speaker>_<k>, labelled by the list given per speaker."""
    return [ClipRecord(clip_id=f"{s}_{k}", video_path=f"{s}_{k}.flv", label=-1, emotion=e, speaker=s)
            for s, emotions in speakers.items() for k, e in enumerate(emotions)]


def table_of(store: FeatureStore) -> dict[str, tuple[str, int, str, str]]:
    t = store.clip_table()
    return {str(c): (str(e), int(l), str(s), str(p)) for c, e, l, s, p in zip(t["clip_id"], t["emotion"], t["label"], t["speaker"], t["split"])}


def test_a_corrected_label_and_speaker_are_written_and_told_and_the_split_stays_actor_disjoint(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["ANG", "NEU", "SAD"], split_seed=0)
    first = rows_of({s: ["ANG", "NEU", "SAD"] for s in ("a", "b", "c", "d", "e")})
    add_to_store(store, first, seed=None)
    before = table_of(store)
    assert all(l == ["ANG", "NEU", "SAD"].index(e) for e, l, _, _ in before.values())
    # a_1 was HAP-less NEU, now SAD; b_2 belongs to speaker c; e_0 to a speaker new to the store
    fixed = list(first)
    fixed[1] = ClipRecord(**{**fixed[1].to_dict(), "emotion": "SAD"})
    fixed[5] = ClipRecord(**{**fixed[5].to_dict(), "speaker": "c"})
    fixed[12] = ClipRecord(**{**fixed[12].to_dict(), "speaker": "z"})
    rows, wrote, told = add_to_store(store, fixed, seed=None, class_names=["ANG", "NEU", "SAD"], classes_declared=False)
    after = table_of(store)
    assert wrote and after["a_1"][:2] == ("SAD", 2) and after["b_2"][2] == "c" and after["e_0"][2] == "z"
    assert after["b_2"][3] == before["c_0"][3]  # joined its speaker's partition
    assert {c: v for c, v in after.items() if c not in ("a_1", "b_2", "e_0")} == {c: v for c, v in before.items() if c not in ("a_1", "b_2", "e_0")}
    partitions: dict[str, set[str]] = {}
    for _, _, speaker, split in after.values():
        partitions.setdefault(speaker, set()).add(split)
    assert all(len(p) == 1 for p in partitions.values())  # no speaker in two partitions
    assert any("1 clip(s) relabelled" in line and "a_1: NEU -> SAD" in line for line in told)
    assert any("2 clip(s) speaker corrected" in line and "b_2: b -> c" in line and "e_0: e -> z" in line for line in told)
    moved = [c for c in ("b_2", "e_0") if after[c][3] != before[c][3]]
    assert [line for line in told if line.startswith("split:")] == ([f"split: {len(moved)} clip(s) of corrected speakers moved to their "
                                                                    "speaker's partition (stable rule for speakers new to the store; "
                                                                    "no speaker is in two partitions)"] if moved else [])
    assert len(told) == 2 + bool(moved)  # one line per kind of change
    assert add_to_store(store, fixed, seed=None, class_names=["ANG", "NEU", "SAD"], classes_declared=False)[1:] == (False, [])


def test_appended_rows_with_new_labels_extend_the_class_list_and_keep_every_stored_number(tmp_path):
    six = ["ANG", "DIS", "FEA", "NEU", "SAD", "SUR"]
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=six, split_seed=0)
    first = rows_of({s: six for s in ("a", "b", "c")})
    add_to_store(store, first, seed=None, class_names=six, classes_declared=False)
    before = table_of(store)
    grown = first + rows_of({"d": ["HAP", "CAL"]})
    corpus = sorted({r.emotion for r in grown})  # what the manifest alone would number: ANG CAL DIS FEA HAP ...
    _, _, told = add_to_store(store, grown, seed=None, class_names=corpus, classes_declared=False)
    assert store.class_names == six + ["CAL", "HAP"]
    after = table_of(store)
    assert {c: after[c] for c in before} == before
    assert after["d_0"][:2] == ("HAP", 7) and after["d_1"][:2] == ("CAL", 6)
    assert told == ["class list: added CAL=6, HAP=7 at its end (stored labels keep their numbers; "
                    "to number the classes afresh, extract into a new --store)"]
    with pytest.raises(LabelError, match="never change"):  # a declared list that renumbers: refused, nothing written
        add_to_store(store, grown + rows_of({"f": ["ANG"]}), seed=None, class_names=sorted(six + ["CAL", "HAP"]), classes_declared=True)
    assert len(store) == 20 and store.class_names == six + ["CAL", "HAP"]


def test_a_store_written_with_wrong_label_numbers_is_corrected_and_told(tmp_path):
    """Stores extracted before this fix numbered a 4-class manifest by CREMA-D's map (SAD=5 of 4 classes)."""
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["ANG", "HAP", "NEU", "SAD"], split_seed=0)
    records = rows_of({s: ["ANG", "HAP", "NEU", "SAD"] for s in ("a", "b", "c")})
    store.add_clips([ClipRecord(**{**r.to_dict(), "label": ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"].index(r.emotion)}) for r in records])
    _, wrote, told = add_to_store(store, records, seed=None, class_names=["ANG", "HAP", "NEU", "SAD"], classes_declared=False)
    assert wrote and sorted(set(store.clip_table()["label"].tolist())) == [0, 1, 2, 3]
    assert len(told) == 1 and "9 clip(s) renumbered" in told[0]


def test_a_store_made_before_the_table_has_its_class_names_respelled_not_its_clips_relabelled(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="manifest", class_names=["happy", "joy", "sad"], split_seed=0)
    old = rows_of({s: ["happy", "joy", "sad"] for s in ("a", "b", "c")})
    store.add_clips([ClipRecord(**{**r.to_dict(), "label": ["happy", "joy", "sad"].index(r.emotion)}) for r in old])
    records = [ClipRecord(**{**r.to_dict(), "emotion": {"happy": "HAP", "sad": "SAD"}.get(r.emotion, "JOY")}) for r in old]
    _, wrote, told = add_to_store(store, records, seed=None, class_names=["HAP", "JOY", "SAD"], classes_declared=False)
    assert store.class_names == ["HAP", "joy", "SAD", "JOY"]  # joy is no table spelling: the corpus's JOY is a new class
    assert told[0] == "class list: respelled happy -> HAP, sad -> SAD by the emotion table (same numbers, no clip relabelled)"
    after = table_of(store)
    assert after["a_0"][:2] == ("HAP", 0) and after["a_2"][:2] == ("SAD", 2) and after["a_1"][:2] == ("JOY", 3)
    assert len(told) == 3 and "3 clip(s) relabelled" in told[2] and "a_1: joy -> JOY" in told[2]


# ---- end to end: a real manifest over the sample corpus --------------------------------------------------------
@pytest.fixture(scope="module")
def four_class(tmp_path_factory) -> tuple[Path, Path]:
    """A manifest of ANG/HAP/NEU/SAD clips of the sample corpus (3 actors), extracted through the CLI."""
    from pipeline.corpora.sample import write_sample_corpus

    folder = tmp_path_factory.mktemp("four")
    write_sample_corpus(folder / "corpus", actors=3, sentences=1, seed=0)
    videos = sorted(v for v in (folder / "corpus" / "VideoFlash").glob("*.flv") if v.stem.split("_")[2] in ("ANG", "HAP", "NEU", "SAD"))
    csv = folder / "four.csv"
    csv.write_text("video,audio,label,speaker\n" + "".join(
        f"corpus/VideoFlash/{v.name},corpus/AudioWAV/{v.stem}.wav,{v.stem.split('_')[2]},{v.stem.split('_')[0]}\n" for v in videos))
    store = folder / "four.zarr"
    result = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    return csv, store


@pytest.mark.slow
def test_a_four_class_manifest_trains_and_reports_its_own_classes(four_class, tmp_path):
    from encoders.train import TrainConfig, train

    _, store = four_class
    s = FeatureStore.open(store)
    assert s.class_names == ["ANG", "HAP", "NEU", "SAD"]
    table = s.clip_table()
    assert [s.class_names[l] for l in table["label"]] == [str(e) for e in table["emotion"]]
    metrics = train(str(store), TrainConfig(encoder="simple3d", modality="audio", fusion="none", epochs=1, batch_size=4), tmp_path / "run", progress=False)
    assert metrics["class_names"] == ["ANG", "HAP", "NEU", "SAD"]
    assert np.asarray(metrics["test"]["confusion"]).shape == (4, 4) and metrics["test"]["n"] == 4


@pytest.mark.slow
def test_cli_re_run_after_editing_the_manifest_updates_the_store_and_says_so(four_class, tmp_path):
    csv_before, store_before = four_class
    shutil.copytree(store_before, tmp_path / "s.zarr")
    shutil.copytree(csv_before.parent / "corpus", tmp_path / "corpus")
    store = tmp_path / "s.zarr"
    lines = csv_before.read_text().splitlines()
    first = lines[1].split(",")  # actor 1001's ANG clip: relabel it happy, and give it a speaker new to the store
    lines[1] = ",".join([first[0], first[1], "happy", "9999"])
    angry = Path(first[0]).stem
    fear = next((tmp_path / "corpus" / "VideoFlash").glob("1001_*_FEA_*.flv")).stem  # a row with a class new to the store
    lines.append(f"corpus/VideoFlash/{fear}.flv,corpus/AudioWAV/{fear}.wav,fearful,1001")
    csv = tmp_path / "four.csv"
    csv.write_text("\n".join(lines) + "\n")
    result = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 processed" in result.stdout  # only the new row is computed
    assert "class list: added FEA=4 at its end" in result.stdout
    assert f"1 clip(s) relabelled as the corpus now says ({angry}: ANG -> HAP)" in result.stdout
    assert f"1 clip(s) speaker corrected as the corpus now says ({angry}: 1001 -> 9999)" in result.stdout
    s = FeatureStore.open(store)
    table = {str(c): (str(e), int(l), str(p)) for c, e, l, p in zip(*(s.clip_table()[k] for k in ("clip_id", "emotion", "label", "speaker")))}
    assert s.class_names == ["ANG", "HAP", "NEU", "SAD", "FEA"]
    assert table[angry] == ("HAP", 1, "9999") and table[fear] == ("FEA", 4, "1001")
    again = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert again.returncode == 0 and "0 processed" in again.stdout and "clip table" not in again.stdout and "class list" not in again.stdout
    summary = json.loads(run_cli("summary", "--dataset", "manifest", "--root", str(csv), "--json").stdout)
    assert summary["per_emotion"] == dict(sorted(Counter(e for e, _, _ in table.values()).items()))  # the CSV and the store agree
    refused = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), "--classes", "ANG,FEA,HAP,NEU,SAD", *SMALL)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "never change" in refused.stderr
    assert FeatureStore.open(store).class_names == ["ANG", "HAP", "NEU", "SAD", "FEA"]
