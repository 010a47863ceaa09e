"""Statuses that tell the truth: one clock for audio and video, face coverage, retries, exit codes, timeouts.

Variants of a generated sample clip are made with ffmpeg: audio shifted with `-itsoffset` (an MP4 edit list),
a face that leaves the frame halfway, two faces side by side, a file cut short and then made whole again.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import MelConfig
from pipeline.clock import audio_offset, audio_on_video_clock
from pipeline.corpora.sample import write_sample_corpus
from pipeline.extract import extract_audio, extract_faces, probe_timeline
from pipeline.faces import FaceConfig
from pipeline.media import ffmpeg_exe, probe
from pipeline.records import ClipRecord
from pipeline.run import ExtractConfig, ExtractSummary, process_clip
from stores.store import FeatureStore
from tests.conftest import run_cli

SMALL = ["--size", "48", "--n-mels", "32", "--frames", "10", "--detect-every", "3", "--no-progress", "--workers", "0"]
FACES = FaceConfig(frames=10, size=48, detect_every=3)


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def record(path: Path, audio: Path | None = None) -> ClipRecord:
    return ClipRecord(clip_id=path.stem, video_path=str(path), label=0, emotion="ANG", speaker="1001", audio_path=str(audio) if audio else None)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("truth")
    corpus = out / "corpus"
    write_sample_corpus(corpus, actors=3, sentences=1, seed=0)
    flv = sorted((corpus / "VideoFlash").glob("*.flv"))
    a, b = flv[0], flv[6]  # two actors
    made = {"corpus": corpus}
    # 2.0 s exactly, so that 0.5 s is two of T=8 spans; MP4 (mpeg4 + the FLV's mp3) as a camera would write it
    made["orig"] = out / "orig.mp4"
    ffmpeg("-i", str(a), "-frames:v", "60", "-c:v", "mpeg4", "-q:v", "3", "-c:a", "copy", str(made["orig"]))
    made["late"] = out / "late.mp4"  # same streams, the audio starting 0.5 s later (an edit list)
    ffmpeg("-i", str(made["orig"]), "-itsoffset", "0.5", "-i", str(made["orig"]), "-map", "0:v", "-map", "1:a", "-c", "copy", str(made["late"]))
    made["leaves"] = out / "leaves.mp4"  # the face slides out of the frame after 40 % of the clip
    ffmpeg("-i", str(a), "-filter_complex", "color=gray:s=480x360:r=30[bg];[bg][0:v]overlay=x='if(lt(t,1.0),0,min(W,(t-1.0)*3000))':y=0:shortest=1",
           "-t", "2.5", "-c:v", "mpeg4", "-q:v", "3", "-an", str(made["leaves"]))
    made["two"] = out / "two.mp4"  # two actors side by side
    ffmpeg("-i", str(a), "-i", str(b), "-filter_complex", "[0:v][1:v]hstack=shortest=1", "-c:v", "mpeg4", "-q:v", "3", "-an", str(made["two"]))
    return made


# ---- one clock ---------------------------------------------------------------------------------------------
def test_late_audio_is_padded_and_early_audio_cut_on_the_video_clock():
    audio = np.arange(1, 101, dtype=np.float32)
    late = audio_on_video_clock(audio, 100, audio_offset(video_start=0.0, audio_start=0.25))
    assert late.shape == (125,) and (late[:25] == 0).all() and (late[25:] == audio).all()
    early = audio_on_video_clock(audio, 100, audio_offset(video_start=0.1, audio_start=0.0))
    assert (early == audio[10:]).all()
    assert (audio_on_video_clock(audio, 100, audio_offset(0.3, None)) == audio).all()  # a separate file starts with the picture


def test_stream_start_times_come_from_the_container(clips):
    orig, late = probe(str(clips["orig"])), probe(str(clips["late"]))
    assert late.audio_start - orig.audio_start == pytest.approx(0.5, abs=1e-3)
    assert late.video_start == pytest.approx(orig.video_start, abs=1e-3)
    assert orig.n_frames == late.n_frames == 60


def test_audio_that_starts_half_a_second_late_gives_chunks_shifted_by_half_a_second(clips):
    # 16 kHz, hop 400: 0.5 s is 20 mel frames, and each of the T=8 spans of the 2 s clip is 0.25 s (10 frames)
    mel = MelConfig(sample_rate=16000, n_fft=1024, hop_length=400, n_mels=32)
    steps, size = 8, 32
    orig = extract_audio(record(clips["orig"]), mel, steps, size)
    late = extract_audio(record(clips["late"]), mel, steps, size)
    assert orig.status == late.status == "ok", (orig.reason, late.reason)
    assert float(late.arrays["audio_offset"] - orig.arrays["audio_offset"]) == pytest.approx(0.5, abs=1e-3)
    o, l = orig.arrays["chunks"].astype(float), late.arrays["chunks"].astype(float)
    shifted = np.abs(l[2:] - o[:-2]).mean()  # late chunk i+2 covers what original chunk i covers
    unshifted = np.abs(l[2:] - o[2:]).mean()
    assert shifted < 3.0 and unshifted > 4 * shifted, (shifted, unshifted)
    assert l[:2].mean() < 0.5 * o[:2].mean()  # the first 0.5 s of the late clip is silence
    n = int(orig.arrays["mel_frames"])
    mel_o, mel_l = orig.arrays["mel"].astype(float), late.arrays["mel"].astype(float)
    assert np.abs(mel_l[:, 25 : n - 5] - mel_o[:, 5 : n - 25]).mean() < 1.0  # 20 mel frames = 0.5 s later


# ---- faces -------------------------------------------------------------------------------------------------
def test_a_face_that_leaves_the_frame_halfway_is_face_lost_with_its_coverage(clips):
    result = extract_faces(record(clips["leaves"]), FACES, max_duration=10)
    assert result.status == "face_lost", result.reason
    coverage = float(result.arrays["coverage"])
    assert 0.2 <= coverage < 0.8 and f"coverage {coverage:.2f}" in result.reason
    found = result.arrays["found"]
    assert found[0] and not found[-1] and coverage == pytest.approx(found.mean())
    lenient = extract_faces(record(clips["leaves"]), FaceConfig(frames=10, size=48, detect_every=3, min_coverage=0.2), max_duration=10)
    assert lenient.status == "ok"  # the threshold is an option


def test_with_two_faces_one_is_followed_and_both_are_counted(clips):
    result = extract_faces(record(clips["two"]), FACES, max_duration=10)
    assert result.status == "ok", result.reason
    assert int(result.arrays["faces_seen"]) == 2 and "2 faces seen" in result.reason
    centres = (result.arrays["boxes"][:, 0] + result.arrays["boxes"][:, 2]) / 2
    assert ((centres < 480).all() or (centres >= 480).all()), centres  # one identity, never jumping across
    assert float(result.arrays["coverage"]) == 1.0


# ---- timeouts and exit codes -------------------------------------------------------------------------------
def test_an_ffmpeg_call_past_its_timeout_is_a_decode_error_named_timeout(clips):
    faces, audio, _, _ = process_clip(record(clips["orig"]), ExtractConfig(faces=FACES, ffmpeg_timeout=0.001), True, True, "cpu")
    assert faces.status == audio.status == "decode_error"
    assert faces.reason.startswith("timeout")


def test_the_verdict_fails_on_an_error_or_when_nothing_is_usable_and_names_the_commonest_reason():
    fine = ExtractSummary(clips=3, computed=3, skipped=0, usable=2, failures={"c": "faces no_face: no face"})
    assert fine.verdict()[0] == 0 and "expected media status" in fine.verdict()[1] and "faces no_face" in fine.verdict()[1]
    bug = ExtractSummary(clips=3, computed=3, skipped=0, usable=2, errors={"a": "KeyError: 'x' at extract.py:9", "b": "KeyError: 'y'"})
    assert bug.verdict()[0] == 1 and "unexpected error" in bug.verdict()[1] and "KeyError" in bug.verdict()[1]
    nothing = ExtractSummary(clips=2, computed=2, skipped=0, usable=0, failures={"a": "faces decode_error: x", "b": "faces decode_error: y"})
    assert nothing.verdict()[0] == 1 and "no clip" in nothing.verdict()[1] and "decode_error" in nothing.verdict()[1]


# ---- retries -----------------------------------------------------------------------------------------------
def write_manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    path.write_text("video,label,speaker\n" + "".join(f"{video},{label},{speaker}\n" for video, label, speaker in [(v, "ANG", s) for v, s in rows]))
    return path


@pytest.mark.slow
def test_a_truncated_file_replaced_by_a_good_one_becomes_ok_and_ok_clips_are_not_redone(clips, tmp_path):
    good = sorted((clips["corpus"] / "VideoFlash").glob("*.flv"))
    media = tmp_path / "media"
    media.mkdir()
    for k, src in enumerate(good[:3]):
        shutil.copy(src, media / f"clip{k}.flv")
    whole = (media / "clip0.flv").read_bytes()
    (media / "clip0.flv").write_bytes(whole[: len(whole) // 4])  # a download not finished
    csv = write_manifest(tmp_path / "corpus.csv", [(media / f"clip{k}.flv", f"100{k + 1}") for k in range(3)])
    store = tmp_path / "s.zarr"
    first = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert first.returncode == 0, first.stderr  # two usable clips, one expected media failure
    faces = FeatureStore.open(store).feature_sets("faces")[0]
    assert faces.status()[0] == "decode_error" and list(faces.status()[1:]) == ["ok", "ok"]
    again = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert " 0 processed" in again.stdout  # nothing changed: nothing redone
    (media / "clip0.flv").write_bytes(whole)  # the download finished
    fixed = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert fixed.returncode == 0 and " 1 processed" in fixed.stdout and "1 of them redone" in fixed.stdout, fixed.stdout
    s = FeatureStore.open(store)
    faces, audio = s.feature_sets("faces")[0], s.feature_sets("audio")[0]
    assert list(faces.status()) == ["ok"] * 3 and list(audio.status()) == ["ok"] * 3
    assert s.feature_sets("fusion-concat")[0].ok().all()  # its fusion was derived again
    retry = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), "--retry-failed", *SMALL)
    assert " 0 processed" in retry.stdout  # --retry-failed never redoes ok clips


@pytest.mark.slow
def test_extract_exits_1_when_no_clip_is_usable_and_retry_failed_redoes_failures(clips, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for k in range(3):
        (media / f"clip{k}.flv").write_bytes(b"not a video at all" * (k + 1))
    csv = write_manifest(tmp_path / "corpus.csv", [(media / f"clip{k}.flv", f"100{k + 1}") for k in range(3)])
    store = tmp_path / "s.zarr"
    result = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), *SMALL)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "no clip has both faces and audio ok" in result.stdout and "commonest reason: faces decode_error" in result.stdout
    retry = run_cli("extract", "--dataset", "manifest", "--root", str(csv), "--store", str(store), "--retry-failed", *SMALL)
    assert " 3 processed" in retry.stdout and "3 of them redone" in retry.stdout and retry.returncode == 1


# ---- known-bad clips and the contact sheet -----------------------------------------------------------------
@pytest.fixture(scope="module")
def flagged_store(clips, tmp_path_factory) -> tuple[str, str, str]:
    """The sample clips plus the face-leaving clip (face_lost), one good train clip flagged broken by its corpus."""
    import dataclasses

    from pipeline.corpora import load_corpus
    from pipeline.run import run_extract
    from pipeline.splits import assign_splits

    records = assign_splits(load_corpus("sample", clips["corpus"]), seed=0)
    leaving = dataclasses.replace(records[0], clip_id="leaves", video_path=str(clips["leaves"]), audio_path=records[0].audio_path)
    flagged = next(r for r in records if r.split == "train")
    records = [dataclasses.replace(r, broken="documented as broken") if r is flagged else r for r in records] + [leaving]
    location = str(tmp_path_factory.mktemp("flagged") / "s.zarr")
    config = ExtractConfig(faces=FACES, mel=MelConfig(n_mels=32))
    run_extract(records, location, config, dataset="sample", class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=0, progress=False)
    return location, flagged.clip_id, "leaves"


@pytest.mark.slow
def test_training_leaves_out_clips_the_corpus_flags_broken_unless_asked(flagged_store):
    from encoders.train import TrainConfig, load_data

    location, flagged, _ = flagged_store
    ids = list(FeatureStore.open(location).clip_table()["clip_id"])
    default = load_data(location, TrainConfig(encoder="resnet18", modality="audio", fusion="none"))
    included = load_data(location, TrainConfig(encoder="resnet18", modality="audio", fusion="none", include_broken=True))
    assert default.excluded_broken == 1 and included.excluded_broken == 0
    assert ids.index(flagged) not in default.splits["train"].rows and ids.index(flagged) in included.splits["train"].rows
    assert len(included.splits["train"]) == len(default.splits["train"]) + 1


@pytest.mark.slow
def test_preview_puts_the_face_lost_clip_first_on_a_sheet_of_the_expected_size(flagged_store, tmp_path):
    from PIL import Image

    location, _, lost = flagged_store
    copy = tmp_path / "published.zarr"
    shutil.copytree(location, copy)
    before = sorted((p, p.stat().st_mtime_ns) for p in copy.rglob("*"))
    subprocess.run(["chmod", "-R", "a-w", str(copy)], check=True)  # a published, read-only store
    sheet = tmp_path / "sheet.png"
    result = run_cli("preview", "--store", str(copy), "--out", str(sheet), "--clips", "3")
    assert result.returncode == 0, result.stderr
    image = Image.open(sheet)
    assert image.size == (4 * 2 * 96, 3 * (16 + 96))  # 4 crop|chunk pairs of 96 px (48 px crops enlarged), 3 bands
    shown = image.text["avstore:clips"].split(",")
    assert shown[0] == lost and len(shown) == 3
    only = run_cli("preview", "--store", str(copy), "--out", str(tmp_path / "lost.png"), "--status", "face_lost")
    assert only.returncode == 0 and Image.open(tmp_path / "lost.png").text["avstore:clips"] == lost
    assert sorted((p, p.stat().st_mtime_ns) for p in copy.rglob("*")) == before  # nothing written into the store
    bad = run_cli("preview", "--store", str(copy), "--status", "lost")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    subprocess.run(["chmod", "-R", "u+w", str(copy)], check=True)


def test_each_stage_records_its_own_source_file_even_when_the_probe_fails(clips, tmp_path):
    short = tmp_path / "short.mp4"  # too short for 10 steps: one probe answer shared by both stages
    ffmpeg("-i", str(clips["orig"]), "-frames:v", "5", "-c", "copy", str(short))
    wav = tmp_path / "voice.wav"
    ffmpeg("-i", str(clips["orig"]), "-vn", str(wav))
    faces, audio, _, _ = process_clip(record(short, wav), ExtractConfig(faces=FACES), True, True, "cpu")
    assert faces.status == audio.status == "too_short"
    assert str(short.stat().st_size) in faces.source and str(wav.stat().st_size) in audio.source
