"""Tests of pipeline.audio with real librosa and cv2 on short synthetic tones (fast)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

from pipeline import audio
from pipeline.audio import (
    MelConfig,
    MelExtractor,
    chunk_images,
    max_mel_frames,
    mel_frame_times,
    spectrogram_image,
)

CONFIG = MelConfig()
SR = CONFIG.sample_rate


@pytest.fixture(scope="module")
def extractor() -> MelExtractor:
    return MelExtractor(CONFIG)


def tone(frequency: float, seconds: float, sample_rate: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def band_of(frequency: float, config: MelConfig = CONFIG) -> int:
    """Index of the mel band whose centre frequency is nearest `frequency`."""
    centres = librosa.mel_frequencies(n_mels=config.n_mels + 2, fmax=config.sample_rate / 2)[1:-1]
    return int(np.argmin(np.abs(centres - frequency)))


def brightest_row(image: np.ndarray) -> int:
    return int(np.argmax(image.astype(np.float64).mean(axis=1)))


@pytest.mark.parametrize("n_mels", [512, 128])
def test_tone_peaks_in_its_mel_band(n_mels: int) -> None:
    config = MelConfig(n_mels=n_mels)
    log_mel = MelExtractor(config).log_mel(tone(440.0, 1.0))
    assert log_mel.shape == (n_mels, 1 + SR // config.hop_length)
    peak_band = int(np.argmax(log_mel.mean(axis=1)))
    assert abs(peak_band - band_of(440.0, config)) <= 1
    assert abs(peak_band - band_of(880.0, config)) > 3


def test_db_relative_to_clip_max_and_floored(extractor: MelExtractor) -> None:
    log_mel = extractor.log_mel(tone(440.0, 1.0) * 0.01)  # quiet: dB are relative, not absolute
    assert log_mel.dtype == np.float32
    assert log_mel.max() == 0.0
    assert log_mel.min() == -CONFIG.top_db
    assert np.all((log_mel >= -CONFIG.top_db) & (log_mel <= 0.0))


def test_silence_gives_floor_without_nan(extractor: MelExtractor) -> None:
    log_mel = extractor.log_mel(np.zeros(SR, dtype=np.float32))
    assert np.all(np.isfinite(log_mel))
    assert np.all(log_mel == -CONFIG.top_db)


def test_no_audio_gives_no_frames_and_blank_image(extractor: MelExtractor) -> None:
    log_mel = extractor.log_mel(np.zeros(0, dtype=np.float32))
    assert log_mel.shape == (CONFIG.n_mels, 0)
    assert np.all(spectrogram_image(log_mel, 32) == 0)


def test_filterbank_built_once_per_extractor(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_mel = audio.mel_basis

    def counting_mel(*args, **kwargs):
        calls.append(args)
        return real_mel(*args, **kwargs)

    monkeypatch.setattr(audio, "mel_basis", counting_mel)
    extractor = MelExtractor(CONFIG)
    basis = extractor.mel_basis
    extractor.log_mel(tone(440.0, 0.5))
    extractor.log_mel(tone(1000.0, 0.5))
    assert len(calls) == 1
    assert extractor.mel_basis is basis
    assert basis.shape == (CONFIG.n_mels, 1 + CONFIG.n_fft // 2)


def test_frame_times_and_max_frames() -> None:
    times = mel_frame_times(3, CONFIG)
    np.testing.assert_allclose(times, [0.0, 512 / SR, 1024 / SR])
    assert max_mel_frames(CONFIG) == 1 + int(10.0 * SR) // 512 == 431


def test_spectrogram_image_low_frequencies_at_bottom() -> None:
    log_mel = np.full((CONFIG.n_mels, 20), -CONFIG.top_db, dtype=np.float32)
    log_mel[:16] = 0.0  # energy only in the lowest bands
    image = spectrogram_image(log_mel, 32)
    assert image.shape == (32, 32) and image.dtype == np.uint8
    assert np.all(image[-1] == 255)
    assert np.all(image[0] == 0)


def test_spectrogram_image_maps_db_range_to_bytes() -> None:
    log_mel = np.full((8, 8), -CONFIG.top_db / 2, dtype=np.float32)
    assert np.all(spectrogram_image(log_mel, 8) == 128)  # -40 dB -> 127.5 -> 128


def switching_tone(low: float, high: float, switch_at: float, seconds: float) -> np.ndarray:
    signal = tone(low, seconds)
    late = np.arange(signal.size) / SR >= switch_at
    signal[late] = tone(high, seconds)[late]
    return signal


def test_chunks_aligned_by_timestamps(extractor: MelExtractor) -> None:
    log_mel = extractor.log_mel(switching_tone(300.0, 3000.0, switch_at=1.0, seconds=2.0))
    spans = np.array([[0.5, 0.6], [1.5, 1.6]])
    size = 64
    chunks, valid = chunk_images(log_mel, spans, CONFIG, size)
    assert chunks.shape == (2, size, size) and chunks.dtype == np.uint8
    assert valid.tolist() == [True, True]
    expected_rows = [size - 1 - band_of(f) * size // CONFIG.n_mels for f in (300.0, 3000.0)]
    observed_rows = [brightest_row(chunk) for chunk in chunks]
    assert abs(observed_rows[0] - expected_rows[0]) <= 1
    assert abs(observed_rows[1] - expected_rows[1]) <= 1
    assert observed_rows[0] > observed_rows[1] + 5  # the low tone sits lower in the image


def test_chunk_uses_the_frames_inside_its_span() -> None:
    """A span holding only the frames of one marked band shows that band and nothing else."""
    n_frames = 40
    log_mel = np.full((CONFIG.n_mels, n_frames), -CONFIG.top_db, dtype=np.float32)
    times = mel_frame_times(n_frames, CONFIG)
    inside = (times >= 0.2) & (times < 0.3)
    log_mel[:64, inside] = 0.0  # low bands loud only inside the span
    chunks, valid = chunk_images(log_mel, np.array([[0.2, 0.3], [0.5, 0.6]]), CONFIG, 32)
    assert valid.all()
    assert np.all(chunks[0][-4:] == 255) and np.all(chunks[0][:-4] == 0)
    assert np.all(chunks[1] == 0)


def test_span_without_frame_centre_uses_nearest_frame() -> None:
    log_mel = np.full((CONFIG.n_mels, 10), -CONFIG.top_db, dtype=np.float32)
    log_mel[:, 2] = 0.0
    hop = CONFIG.hop_length / CONFIG.sample_rate
    narrow = np.array([[2.1 * hop, 2.2 * hop]])  # holds no centre; frame 2 is nearest
    chunks, valid = chunk_images(log_mel, narrow, CONFIG, 16)
    assert valid[0] and np.all(chunks[0] == 255)


def test_audio_shorter_than_video_gives_invalid_silent_chunks(extractor: MelExtractor) -> None:
    log_mel = extractor.log_mel(tone(440.0, 1.0))
    fps = 25.0
    starts = np.arange(50) / fps  # 2 s of video
    spans = np.stack([starts, starts + 1 / fps], axis=1)
    chunks, valid = chunk_images(log_mel, spans, CONFIG, 32)
    assert valid[:25].all()
    assert not valid[26:].any()
    assert np.all(chunks[~valid] == 0)
    assert all(chunk.any() for chunk in chunks[valid])


def test_chunk_images_rejects_bad_spans() -> None:
    with pytest.raises(ValueError, match="spans"):
        chunk_images(np.zeros((8, 4), np.float32), np.zeros(3), CONFIG, 8)


def test_extractor_rejects_stereo() -> None:
    with pytest.raises(ValueError, match="mono"):
        audio.MelExtractor(MelConfig(n_mels=32)).log_mel(np.zeros((2, 100), np.float32))


@pytest.mark.parametrize("sample_rate, n_fft, hop, n_mels", [(22050, 2048, 512, 512), (22050, 2048, 512, 128), (16000, 512, 160, 64), (44100, 1024, 256, 80)])
def test_the_numpy_stft_and_mel_basis_are_bit_identical_to_librosas(sample_rate, n_fft, hop, n_mels) -> None:
    """audio.stft and audio.mel_basis replace librosa's in the worker (its imports cost 6 s of start-up): the
    stored features must not change by a bit."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns of empty bands when there are many mels
        want = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    assert want.dtype == audio.mel_basis(sample_rate, n_fft, n_mels).dtype
    assert np.array_equal(audio.mel_basis(sample_rate, n_fft, n_mels), want)
    rng = np.random.default_rng(0)
    for n in (1, n_fft // 2 - 1, n_fft, n_fft + hop + 3, 3 * sample_rate + 17):
        y = rng.standard_normal(n).astype(np.float32)
        want = librosa.stft(y, n_fft=n_fft, hop_length=hop, window="hann", center=True, pad_mode="constant")
        got = audio.stft(y, n_fft, hop)
        assert got.dtype == want.dtype and got.shape == want.shape, (n, got.shape, want.shape)
        assert np.array_equal(got, want), (n, np.abs(got - want).max())
