"""The synthetic sample corpus: CREMA-D's layout and formats, reproducible bytes, and emotions that show.

Everything runs the real generator, real ffmpeg and the real MTCNN detector. Corpora are tiny (two actors)
and generated once per module.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.corpora.sample import SENTENCES, write_sample_corpus
from pipeline.media import decode_audio, decode_frames, ffmpeg_exe, probe
from pipeline.records import CREMA_D_EMOTIONS

ACTORS, SENTENCE_COUNT = 2, 1
NORMAL_CLIPS = ACTORS * SENTENCE_COUNT * len(CREMA_D_EMOTIONS)
BROKEN = {
    "1001_WSI_ANG_XX": "decode_error",
    "1001_WSI_DIS_XX": "no_audio",
    "1001_WSI_FEA_XX": "no_face",
    "1001_WSI_HAP_XX": "too_short",
}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_(ANG|DIS|FEA|HAP|NEU|SAD)_(HI|XX)$")
WIDTH, HEIGHT = 480, 360


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("sample") / "corpus"
    ids = write_sample_corpus(root, actors=ACTORS, sentences=SENTENCE_COUNT, seed=0, with_broken=True)
    return root, ids


@pytest.fixture(scope="module")
def twin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same seed, different folder: must be byte-identical to `corpus`."""
    root = tmp_path_factory.mktemp("twin") / "elsewhere"
    write_sample_corpus(root, actors=ACTORS, sentences=SENTENCE_COUNT, seed=0, with_broken=True)
    return root


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Seed 1 and one more sentence, so the second sentence's naming gets checked too."""
    root = tmp_path_factory.mktemp("other") / "corpus"
    ids = write_sample_corpus(root, actors=ACTORS, sentences=2, seed=1, with_broken=True)
    return root, ids


@pytest.fixture(scope="module")
def detector():
    """The real MTCNN on CPU, on one thread: faster than two when the machine's cores are busy."""
    import torch
    from facenet_pytorch import MTCNN

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield MTCNN(keep_all=False, device="cpu")
    torch.set_num_threads(threads)


def normal_ids(ids: list[str]) -> list[str]:
    return [clip for clip in ids if clip not in BROKEN]


def flv(root: Path, clip: str) -> Path:
    return root / "VideoFlash" / f"{clip}.flv"


def wav(root: Path, clip: str) -> Path:
    return root / "AudioWAV" / f"{clip}.wav"


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    """Samples as float in [-1, 1], rate, channels, bytes per sample."""
    with wave.open(str(path), "rb") as f:
        rate, channels, width = f.getframerate(), f.getnchannels(), f.getsampwidth()
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    return pcm.astype(np.float64) / 32768, rate, channels, width


def ffmpeg_header(path: Path) -> str:
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path)], capture_output=True, text=True
    ).stderr


def ffmpeg_decode_errors(path: Path) -> str:
    """What ffmpeg complains about while decoding the whole file (empty for a clean file)."""
    return subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr.strip()


def dominant_pitch(samples: np.ndarray, rate: int) -> float:
    """The strongest frequency between 70 and 450 Hz: the fundamental of the synthetic voice."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    band = (freqs > 70) & (freqs < 450)
    return float(freqs[band][np.argmax(spectrum[band])])


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def middle_frame(root: Path, clip: str) -> np.ndarray:
    n_frames = probe(str(flv(root, clip))).n_frames
    return decode_frames(str(flv(root, clip)), [n_frames // 2], WIDTH, HEIGHT)[0]


# ------------------------------------------------------------------------------------------ layout


def test_writes_every_clip_under_crema_d_names(corpus):
    root, ids = corpus
    assert ids == sorted(ids)
    assert len(ids) == NORMAL_CLIPS + len(BROKEN)
    assert sorted(path.stem for path in (root / "VideoFlash").glob("*.flv")) == ids
    for clip in ids:
        actor, sentence, _, level = NAME.match(clip).groups()
        assert actor in ("1001", "1002")
        assert level == ("HI" if sentence == "IEO" else "XX")
    expected_normal = {
        f"{actor}_IEO_{emotion}_HI" for actor in ("1001", "1002") for emotion in CREMA_D_EMOTIONS
    }
    assert set(normal_ids(ids)) == expected_normal
    assert set(BROKEN) <= set(ids)


def test_sentences_follow_crema_d_order(other_seed):
    _, ids = other_seed
    assert SENTENCES[:3] == ("IEO", "TIE", "IOM")
    sentences = {NAME.match(clip).group(2) for clip in normal_ids(ids)}
    assert sentences == {"IEO", "TIE"}
    assert "1002_TIE_SAD_XX" in ids
    assert len(ids) == ACTORS * 2 * 6 + len(BROKEN)


def test_wavs_exist_except_where_the_audio_is_meant_to_be_missing(corpus):
    root, ids = corpus
    without_wav = {clip for clip, expect in BROKEN.items() if expect in ("decode_error", "no_audio")}
    assert sorted(path.stem for path in (root / "AudioWAV").glob("*.wav")) == sorted(set(ids) - without_wav)


def test_manifest_records_parameters_and_broken_clips(corpus):
    root, _ = corpus
    manifest = json.loads((root / "SAMPLE.json").read_text())
    assert manifest["actors"] == ACTORS
    assert manifest["sentences"] == SENTENCE_COUNT
    assert manifest["seed"] == 0
    assert manifest["with_broken"] is True
    assert {entry["id"]: entry["expect"] for entry in manifest["broken"]} == BROKEN


def test_no_broken_clips_unless_asked(tmp_path):
    ids = write_sample_corpus(tmp_path, actors=1, sentences=1, seed=3)
    assert len(ids) == 6
    assert json.loads((tmp_path / "SAMPLE.json").read_text())["broken"] == []
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())  # scratch folder cleaned up


@pytest.mark.parametrize(
    "options",
    [{"sentences": 0}, {"sentences": 13}, {"actors": 0}, {"sentences": 12, "with_broken": True}, {"seed": -1}],
)
def test_rejects_impossible_options(tmp_path, options):
    with pytest.raises(ValueError):
        write_sample_corpus(tmp_path, **options)


# ------------------------------------------------------------------------------------------ formats


def test_videos_are_flash_video_480x360_at_30_fps_with_mp3_audio(corpus):
    root, ids = corpus
    for clip in normal_ids(ids):
        header = ffmpeg_header(flv(root, clip))
        assert "Input #0, flv" in header, header
        assert re.search(r"Video: flv1\b.*480x360.*\b30 fps", header), header
        assert re.search(r"Audio: mp3\b.*\b(44100|22050) Hz, mono", header), header
        info = probe(str(flv(root, clip)))
        assert (info.width, info.height, info.fps, info.has_audio) == (WIDTH, HEIGHT, 30.0, True)
        assert 2.0 <= info.duration <= 3.0


def test_durations_differ_between_clips(corpus):
    root, ids = corpus
    frame_counts = {probe(str(flv(root, clip))).n_frames for clip in normal_ids(ids)}
    assert len(frame_counts) >= 4


def test_wavs_are_16k_mono_int16_as_long_as_the_video(corpus):
    root, ids = corpus
    for clip in normal_ids(ids):
        samples, rate, channels, width = read_wav(wav(root, clip))
        assert (rate, channels, width) == (16_000, 1, 2)
        video_seconds = probe(str(flv(root, clip))).duration
        assert abs(len(samples) / rate - video_seconds) < 1e-3
        assert 0.05 < np.abs(samples).max() < 1.0


def test_video_sound_is_the_wav_sound(corpus):
    """The FLV's mp3 track, decoded at 16 kHz, matches the WAV up to the mp3 encoder's start delay."""
    root, _ = corpus
    clip = "1002_IEO_HAP_HI"
    from_wav, _, _, _ = read_wav(wav(root, clip))
    from_video = decode_audio(str(flv(root, clip)), 16_000).astype(np.float64)
    max_lag = 1600  # 100 ms
    scores = np.correlate(from_video[: 16_000 + max_lag], from_wav[:16_000], mode="valid")
    lag = int(np.argmax(scores))
    aligned = from_video[lag : lag + len(from_wav)]
    assert np.corrcoef(aligned, from_wav[: len(aligned)])[0, 1] > 0.95


# ------------------------------------------------------------------------------------------ reproducibility


def test_same_seed_gives_identical_bytes_in_another_folder(corpus, twin):
    root, _ = corpus
    digests, twin_digests = file_digests(root), file_digests(twin)
    assert digests == twin_digests
    assert len(digests) == 2 * NORMAL_CLIPS + 2 * 2 + 2 + 2  # flv+wav each; 2 broken with both, 2 flv only; json; votes csv


def test_every_clip_has_generated_votes_in_crema_d_format(corpus):
    from pipeline.votes import read_tabulated_votes

    root, ids = corpus
    votes = read_tabulated_votes(root / "tabulatedVotes.csv")
    assert sorted(votes) == ids  # the broken clips too: raters saw them before anyone decoded them
    assert all(set(v) == {"voice", "face", "av"} and all(6 <= sum(c) <= 12 for c in v.values()) for v in votes.values())


def test_different_seed_gives_different_bytes(corpus, other_seed):
    root, ids = corpus
    other_root, other_ids = other_seed
    shared = [clip for clip in normal_ids(ids) if clip in other_ids]
    assert len(shared) == NORMAL_CLIPS
    for clip in shared:
        assert flv(root, clip).read_bytes() != flv(other_root, clip).read_bytes()
        assert wav(root, clip).read_bytes() != wav(other_root, clip).read_bytes()


# ------------------------------------------------------------------------------------------ emotion cues


def test_voice_pitch_rises_with_the_emotion_index(corpus):
    """Emotion k is voiced at about 110 + 35k Hz (plus at most 8 Hz per actor), in CREMA_D_EMOTIONS order."""
    root, ids = corpus
    mean_pitch = []
    for k, emotion in enumerate(CREMA_D_EMOTIONS):
        pitches = []
        for clip in normal_ids(ids):
            if NAME.match(clip).group(3) == emotion:
                samples, rate, _, _ = read_wav(wav(root, clip))
                pitches.append(dominant_pitch(samples, rate))
        assert all(abs(p - (110 + 35 * k)) <= 12 for p in pitches), (emotion, pitches)
        mean_pitch.append(np.mean(pitches))
    assert all(np.diff(mean_pitch) > 20), mean_pitch


def test_loudness_contour_follows_the_emotion(corpus):
    """Anger swells, disgust fades: compare the RMS of the first and last third of each WAV."""
    root, _ = corpus

    def first_and_last_third_rms(clip: str) -> tuple[float, float]:
        samples, _, _, _ = read_wav(wav(root, clip))
        third = len(samples) // 3
        return float(np.sqrt(np.mean(samples[:third] ** 2))), float(np.sqrt(np.mean(samples[-third:] ** 2)))

    for actor in ("1001", "1002"):
        start, end = first_and_last_third_rms(f"{actor}_IEO_ANG_HI")
        assert end > 1.3 * start
        start, end = first_and_last_third_rms(f"{actor}_IEO_DIS_HI")
        assert start > 1.3 * end


@pytest.fixture(scope="module")
def face_crops(corpus, detector) -> dict[str, list[np.ndarray]]:
    """For every normal clip: MTCNN's face in the middle frame and the one at 1/4, resized to 64x64 RGB.

    Asserts on the way that MTCNN is sure (prob > 0.9) it saw a face in each.
    """
    root, ids = corpus
    crops = {}
    for clip in normal_ids(ids):
        n_frames = probe(str(flv(root, clip))).n_frames
        frames = decode_frames(str(flv(root, clip)), [n_frames // 2, n_frames // 4], WIDTH, HEIGHT)
        crops[clip] = []
        for frame in frames:
            boxes, probs = detector.detect(frame)
            assert boxes is not None and probs[0] > 0.9, (clip, probs)
            box = np.round(np.asarray(boxes[0], dtype=np.float64)).astype(int)  # MTCNN returns an object array
            left, top, right, bottom = np.clip(box, 0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
            face = cv2.resize(frame[top:bottom, left:right], (64, 64), interpolation=cv2.INTER_AREA)
            crops[clip].append(face.astype(np.float64))
    return crops


def mouth_colour(crop: np.ndarray) -> np.ndarray:
    """Mean RGB of the middle of the mouth in a 64x64 MTCNN face crop (small: MTCNN's box jitters a little)."""
    return crop[43:51, 27:37].reshape(-1, 3).mean(axis=0)


def test_mtcnn_finds_a_face_in_every_actor_and_emotion(face_crops):
    """The fixture asserts prob > 0.9 in two frames per clip; here: that it covered every clip."""
    assert len(face_crops) == NORMAL_CLIPS
    assert all(len(crops) == 2 for crops in face_crops.values())


def test_emotions_show_in_the_64x64_face_crop(face_crops):
    """Within an actor, the mouth of different emotions differs far more than between frames of one clip."""
    for actor in ("1001", "1002"):
        clips = [f"{actor}_IEO_{emotion}_HI" for emotion in CREMA_D_EMOTIONS]
        within = max(np.linalg.norm(mouth_colour(face_crops[c][0]) - mouth_colour(face_crops[c][1])) for c in clips)
        between = min(
            np.linalg.norm(mouth_colour(face_crops[a][0]) - mouth_colour(face_crops[b][0]))
            for i, a in enumerate(clips)
            for b in clips[i + 1 :]
        )
        assert between > 1.5 * within, (actor, between, within)
        assert between > 30, (actor, between)  # RGB units: clearly visible, not a rounding artefact


def test_mouth_colour_alone_tells_emotions_apart(face_crops):
    """A nearest-centroid rule on mouth colour, fitted on the middle frames, labels the other frames right."""
    for actor in ("1001", "1002"):
        clips = [f"{actor}_IEO_{emotion}_HI" for emotion in CREMA_D_EMOTIONS]
        centroids = np.stack([mouth_colour(face_crops[c][0]) for c in clips])
        for label, clip in enumerate(clips):
            distances = np.linalg.norm(centroids - mouth_colour(face_crops[clip][1]), axis=1)
            assert int(np.argmin(distances)) == label, (clip, distances)


# ------------------------------------------------------------------------------------------ broken clips


def test_truncated_clip_is_cut_short_and_corrupt(corpus):
    root, ids = corpus
    path = flv(root, "1001_WSI_ANG_XX")
    smallest_intact = min(flv(root, clip).stat().st_size for clip in normal_ids(ids))
    assert path.stat().st_size < 0.5 * smallest_intact
    assert ffmpeg_decode_errors(path) != ""
    assert ffmpeg_decode_errors(flv(root, "1001_IEO_ANG_HI")) == ""
    assert probe(str(path)).n_frames < 2 * 30  # the header promises ~2.5 s, the file holds far fewer frames


def test_no_audio_clip_has_no_audio_stream(corpus):
    root, _ = corpus
    header = ffmpeg_header(flv(root, "1001_WSI_DIS_XX"))
    assert "Video: flv1" in header
    assert "Audio:" not in header
    assert not probe(str(flv(root, "1001_WSI_DIS_XX"))).has_audio


def test_no_face_clip_has_sound_but_no_face(corpus, detector):
    root, _ = corpus
    clip = "1001_WSI_FEA_XX"
    assert probe(str(flv(root, clip))).has_audio
    samples, _, _, _ = read_wav(wav(root, clip))
    assert np.abs(samples).max() > 0.05
    n_frames = probe(str(flv(root, clip))).n_frames
    for frame in decode_frames(str(flv(root, clip)), [0, n_frames // 2, n_frames - 1], WIDTH, HEIGHT):
        _, probs = detector.detect(frame)
        assert probs[0] is None or probs[0] < 0.9


def test_too_short_clip_has_nine_frames_of_face_and_matching_sound(corpus, detector):
    root, _ = corpus
    clip = "1001_WSI_HAP_XX"
    info = probe(str(flv(root, clip)))
    assert info.n_frames == 9
    assert info.has_audio
    samples, rate, _, _ = read_wav(wav(root, clip))
    assert len(samples) == round(0.3 * rate)
    _, probs = detector.detect(middle_frame(root, clip))
    assert probs[0] is not None and probs[0] > 0.9
