"""In-process decoding (pipeline/media.py) of every container and codec the tests can make with the bundled
ffmpeg: FLV/H.263 as CREMA-D, MPEG-1/MP2 as GRID, MP4/H.264/AAC, WebM/VP9/Opus, a phone-style MP4 whose
pixels are stored sideways under a 90-degree display rotation, and a variable-frame-rate MP4.

The test picture is asymmetric (a white block in the top-left corner) so a sideways or flipped frame is seen,
and a marker moves 2 px right per frame along the bottom, so each decoded frame shows which frame it is
(measured from frame 0's marker, wherever the overlay filter starts counting).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.extract import clip_timeline
from pipeline.media import DecodeError, decode_audio, open_media, probe
from pipeline.media import ffmpeg_exe

W, H, FPS, N = 160, 96, 25, 50  # 2.0 s
PICTURE = (f"color=black:s={W}x{H}:r={FPS},drawbox=x=0:y=0:w=40:h=24:color=white:t=fill[bg];"
           f"color=white:s=4x16:r={FPS}[marker];[bg][marker]overlay=x='2*n':y={H - 16}[out0]")
TONE = "sine=frequency=440:sample_rate={rate}:duration=2"

FORMATS = {  # name: (file suffix, video codec args, audio codec args, audio rate)
    "flv-h263-mp3 (CREMA-D)": (".flv", ["-c:v", "flv", "-q:v", "2"], ["-c:a", "libmp3lame"], 22050),
    "mpeg1-mp2 (GRID)": (".mpg", ["-c:v", "mpeg1video", "-q:v", "2"], ["-c:a", "mp2"], 44100),
    "mp4-h264-aac": (".mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"], ["-c:a", "aac"], 44100),
    "webm-vp9-opus": (".webm", ["-c:v", "libvpx-vp9", "-crf", "10", "-b:v", "0"], ["-c:a", "libopus"], 48000),
}


def ffmpeg(*args: str) -> None:
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"the bundled ffmpeg cannot make this file: {done.stderr.strip().splitlines()[-1:]}")


def encoders() -> str:
    return subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True).stdout


def make(tmp: Path, name: str) -> Path:
    suffix, video, audio, rate = FORMATS[name]
    for codec in (video[1], audio[1]):
        if f" {codec} " not in encoders():
            pytest.skip(f"the bundled ffmpeg has no {codec} encoder")
    path = tmp / f"clip{suffix}"
    ffmpeg("-f", "lavfi", "-i", PICTURE, "-f", "lavfi", "-i", TONE.format(rate=rate), "-frames:v", str(N), *video, *audio,
           "-ar", str(rate), "-shortest", str(path))
    return path


def marker_x(frame: np.ndarray) -> float:
    """Where the moving marker is: the centre of the bright columns of the bottom band."""
    band = np.flatnonzero(frame[H - 12 : H - 4, :, :].mean(axis=(0, 2)) > 128)
    assert len(band), "no marker in the bottom band"
    return float(band.mean())


def assert_upright(frame: np.ndarray) -> None:
    assert frame.shape == (H, W, 3), frame.shape
    corner, other = frame[4:20, 4:36].mean(), frame[4:20, W - 36 : W - 4].mean()
    assert corner > 200 and other < 40, ("the white block is not top-left", corner, other)
    assert frame[H - 40 : H - 28, 4:36].mean() < 40  # and not bottom-left (an upside-down frame)


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_container_and_codec_decodes_with_its_frame_count_duration_orientation_and_audio(name, tmp_path):
    path = make(tmp_path, name)
    with open_media(str(path)) as media:
        info = media.info
        assert (info.n_frames, info.width, info.height) == (N, W, H)
        assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(N / FPS)
        assert info.constant_rate and info.has_audio and info.rotation == 0
        indices = [0, 10, 37, N - 1, 10]  # unsorted, repeated
        frames = media.frames(indices)
        audio = media.audio(16000)
    assert frames.shape == (len(indices), H, W, 3) and frames.dtype == np.uint8
    for frame, index in zip(frames, indices):
        assert_upright(frame)
        assert marker_x(frame) - marker_x(frames[0]) == pytest.approx(2 * index, abs=1.0), (index, marker_x(frame))
    assert (frames[1] == frames[4]).all()
    assert audio.dtype == np.float32 and len(audio) / 16000 == pytest.approx(2.0, abs=0.1)  # an encoder's padding aside
    spectrum = np.abs(np.fft.rfft(audio[2000:18000]))
    assert np.argmax(spectrum) * 16000 / 16000 == pytest.approx(440, abs=2)  # the tone, at the asked rate


def test_a_phone_style_mp4_stored_sideways_decodes_upright(tmp_path):
    upright = make(tmp_path, "mp4-h264-aac")
    sideways = tmp_path / "sideways.mp4"  # the pixels turned a quarter counter-clockwise, as a phone held upright stores them
    ffmpeg("-i", str(upright), "-vf", "transpose=2", "-c:v", "libx264", "-crf", "10", "-c:a", "copy", str(sideways))
    phone = tmp_path / "phone.mp4"  # and a display matrix saying: turn them a quarter clockwise to show them
    ffmpeg("-display_rotation:v:0", "-90", "-i", str(sideways), "-c", "copy", str(phone))
    with open_media(str(sideways)) as media:
        assert (media.info.width, media.info.height) == (H, W)  # no matrix: shown as stored
    with open_media(str(phone)) as media:
        assert (media.info.width, media.info.height, media.info.n_frames) == (W, H, N)
        assert media.info.rotation in (90, 270)
        frames = media.frames([0, 20])
    for frame in frames:
        assert_upright(frame)
    assert marker_x(frames[1]) - marker_x(frames[0]) == pytest.approx(40, abs=1.0)


def test_variable_frame_rate_is_placed_by_timestamps_not_by_frame_counting(tmp_path):
    # 25 frames at 25 fps, then 10 frames at 10 fps: 2.0 s in 35 frames
    vfr = tmp_path / "vfr.mp4"
    ffmpeg("-f", "lavfi", "-i", PICTURE, "-frames:v", "35", "-vf", "settb=1/100,setpts='if(lt(N,25),N/25,1+(N-25)/10)/TB'",
           "-fps_mode", "passthrough", "-enc_time_base:v", "1/100", "-c:v", "libx264", "-crf", "10", "-video_track_timescale", "100", str(vfr))
    with open_media(str(vfr)) as media:
        info = media.info
        assert info.n_frames == 35 and not info.constant_rate
        assert info.duration == pytest.approx(2.0, abs=1e-6)
        timeline = clip_timeline(info, 4)  # span centres at 0.25, 0.75, 1.25, 1.75 s
        assert timeline.frame_index.tolist() == [6, 18, 27, 32]
        assert timeline.timestamps == pytest.approx([0.24, 0.72, 1.2, 1.7], abs=1e-6)
        frames = media.frames([0, *timeline.frame_index.tolist()])
    for frame, index in zip(frames[1:], timeline.frame_index):
        assert marker_x(frame) - marker_x(frames[0]) == pytest.approx(2 * index, abs=1.0)


def test_a_separate_wav_and_a_file_without_audio(tmp_path):
    wav = tmp_path / "voice.wav"
    ffmpeg("-f", "lavfi", "-i", TONE.format(rate=16000), str(wav))
    audio = decode_audio(str(wav), 16000)
    assert len(audio) == 32000 and np.abs(audio).max() > 0.1
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", PICTURE, "-frames:v", "10", "-c:v", "libx264", str(silent))
    assert not probe(str(silent)).has_audio and decode_audio(str(silent), 16000).size == 0
    with pytest.raises(DecodeError, match="no readable video stream"):
        probe(str(wav))


def test_garbage_a_cut_file_and_a_deadline_give_decode_errors(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(DecodeError):
        probe(str(junk))
    whole = make(tmp_path, "flv-h263-mp3 (CREMA-D)").read_bytes()
    cut = tmp_path / "cut.flv"
    cut.write_bytes(whole[: len(whole) // 4])
    info = probe(str(cut))  # readable, but the header promises far more than the packets hold
    assert info.claimed_duration == pytest.approx(2.0, abs=0.1) and info.duration < 0.5 * info.claimed_duration
    with pytest.raises(DecodeError, match="^timeout"):
        probe(str(tmp_path / "clip.flv"), timeout=1e-6)


@pytest.mark.slow  # 15 s of MTCNN and corpus writing; the orientation itself is checked fast above
def test_a_phone_style_clip_of_a_face_finds_the_face(tmp_path):
    """As a new user tried it: a sample clip re-encoded sideways with a display rotation was `no_face`."""
    from pipeline.corpora.sample import write_sample_corpus
    from pipeline.extract import extract_faces
    from pipeline.faces import FaceConfig
    from pipeline.records import ClipRecord

    write_sample_corpus(tmp_path / "corpus", actors=1, sentences=1, seed=0)
    source = sorted((tmp_path / "corpus" / "VideoFlash").glob("*.flv"))[0]
    sideways, phone = tmp_path / "sideways.mp4", tmp_path / "phone.mp4"
    ffmpeg("-i", str(source), "-vf", "transpose=2", "-c:v", "libx264", "-crf", "18", "-c:a", "aac", str(sideways))
    ffmpeg("-display_rotation:v:0", "-90", "-i", str(sideways), "-c", "copy", str(phone))
    record = ClipRecord(clip_id="phone", video_path=str(phone), label=0, emotion="ANG", speaker="1001")
    result = extract_faces(record, FaceConfig(frames=6, size=48, detect_every=3), max_duration=10)
    assert result.status == "ok", result.reason
    assert result.arrays["crops"].shape == (6, 48, 48, 3)


def test_decoders_run_on_one_thread_and_give_the_frames_a_threaded_decode_gives(grid_dir, monkeypatch):
    """Workers are the parallelism: FFmpeg's own threads (one per core in every worker) would oversubscribe a node."""
    import pipeline.media as media

    video = str(sorted(grid_dir.glob("*.mpg"))[0])
    info = probe(video)
    with open_media(video) as m:
        assert m.video.codec_context.thread_count == 1 and m.audio_stream.codec_context.thread_count == 1
    single = media.decode_frames(video, [0, 30, 60], info.width, info.height)
    monkeypatch.setattr(media, "DECODER_THREADS", 0)  # FFmpeg's default: a thread per core
    assert np.array_equal(single, media.decode_frames(video, [0, 30, 60], info.width, info.height))


@pytest.mark.parametrize("container, codec", [("wav", "pcm_s16le"), ("wav", "adpcm_ms"), ("mp3", "libmp3lame"), ("m4a", "aac"),
                                              ("flac", "flac"), ("ogg", "libopus"), ("flv", "libmp3lame"), ("mp4", "aac")])
def test_any_file_decodes_the_same_audio_with_the_short_probe(tmp_path, monkeypatch, container, codec):
    """media.SHORT_PROBE opens a WAV without reading it whole first; every file must decode to the same samples as
    with FFmpeg's default probe: audio alone, and a video's track (an FLV shows its audio stream late)."""
    import pipeline.media as media

    path = tmp_path / f"voice.{container}"
    video = ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=1.3", "-c:v", "flv1" if container == "flv" else "mpeg4"]
    subprocess.run([ffmpeg_exe(), "-v", "error", *(video if container in ("flv", "mp4") else []), "-f", "lavfi",
                    "-i", "sine=frequency=330:duration=1.3:sample_rate=22050", "-c:a", codec, *(["-ar", "48000"] if codec == "libopus" else []),
                    str(path)], check=True)
    short = decode_audio(str(path), 22050)
    monkeypatch.setattr(media, "SHORT_PROBE", {})
    default = decode_audio(str(path), 22050)
    assert short.size > 22050 and np.array_equal(short, default)
