"""Audio features: log-mel spectrograms, their images, and chunks aligned with video frames by time.

Everything here is a pure function of numpy arrays plus a frozen `MelConfig` whose defaults are the
comparison study's (seed 000/001). The seed code cut the whole-clip spectrogram into as many equal
pieces as there were video frames, silently assuming audio and video have the same length; here each
chunk is built from the mel frames whose centre times fall in that video frame's own time span, so a
clip whose audio ends early gets invalid (silent) chunks instead of stretched ones.

Conventions:
* STFT frames are centred (librosa's `center=True`, zero padding), so mel frame i is centred at
  i * hop_length / sample_rate seconds and an n-sample clip has 1 + n // hop_length frames.
* dB are relative to the clip's loudest mel bin (0 dB) and floored at -top_db.
* Images map -top_db..0 dB to 0..255 with low frequencies at the bottom row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from pipeline.numeric import pinned

_POWER_FLOOR = 1e-10
"""Mel energies below this count as silence (librosa's `amin`); keeps log10 finite."""


@dataclass(frozen=True)
class MelConfig:
    """Defaults are the comparison study's (seed 000/001)."""

    VERSION: ClassVar[int] = 3
    """Bump by hand when a change to the mel code changes its numbers: part of the audio fingerprint only
    (pipeline/extract.py audio_params). 3: the global version every stage shared until each had its own."""

    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 512  # the study's slides; its code used 128 — a parameter
    power: float = 2.0
    top_db: float = 80.0  # dB relative to the clip maximum, floored at -top_db
    max_duration: float = 10.0  # longer clips are rejected by the pipeline as too_long


class MelExtractor:
    """Builds the mel filterbank once (per worker) and reuses it for every clip.

    The basis is librosa's default (Slaney mel scale and area normalisation, 0 Hz to Nyquist), the
    one `librosa.feature.melspectrogram` would rebuild on every call.
    """

    def __init__(self, config: MelConfig) -> None:
        self.config = config
        self.mel_basis = _build_mel_basis(config)

    @pinned  # the mel product's rounding depends on BLAS threads (pipeline/numeric.py)
    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 at config.sample_rate -> (n_mels, n_frames) float32 dB in [-top_db, 0].

        An all-silent clip gives all -top_db (there is no maximum to be relative to); an empty clip
        (a file without audio) gives zero frames.
        """
        audio = _as_mono_float32(audio)
        if audio.size == 0:
            return np.zeros((self.config.n_mels, 0), dtype=np.float32)
        mel_power = self._mel_power(audio)
        return _power_to_relative_db(mel_power, self.config.power, self.config.top_db)

    def _mel_power(self, audio: np.ndarray) -> np.ndarray:
        """Mel-band energies (n_mels, n_frames) of the centred STFT raised to config.power."""
        magnitude = np.abs(stft(audio, self.config.n_fft, self.config.hop_length)).astype(np.float32) ** self.config.power
        return self.mel_basis @ magnitude


# librosa's STFT and mel filterbank, rewritten in numpy with the same operations in the same order, so the
# numbers are bit-identical (tests/test_audio.py compares them with librosa's). Why not call librosa: its
# first use in a worker imports scipy.signal and numba, 6 of the ~12 s a cold `extract` waited for its
# first clip; these need numpy alone.

def hann_window(n: int) -> np.ndarray:
    """The periodic Hann window, as scipy.signal.get_window("hann", n) computes it (float64)."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    window = np.zeros(n + 1)
    for k, a in enumerate((0.5, 0.5)):
        window += a * np.cos(k * fac)
    return window[:-1]


def stft(audio: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """librosa.stft(audio, n_fft, hop_length, window="hann", center=True, pad_mode="constant"): complex64
    (1 + n_fft // 2, n_frames) of float32 audio."""
    padded = np.pad(audio, n_fft // 2, mode="constant")
    n_frames = 1 + (len(padded) - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_fft, n_frames), strides=(padded.strides[0], hop_length * padded.strides[0]), writeable=False)
    spectrum = np.fft.rfft(hann_window(n_fft)[:, None] * frames, axis=0)
    return spectrum.astype(np.complex64)


# The Slaney mel scale: linear below 1 kHz, logarithmic above (librosa's htk=False).
_MEL_HZ_STEP = 200.0 / 3  # Hz per mel in the linear part
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _MEL_HZ_STEP
_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_slaney_mel(hz: float) -> float:
    if hz >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + np.log(hz / _MIN_LOG_HZ) / _LOG_STEP
    return hz / _MEL_HZ_STEP


def _slaney_mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _MEL_HZ_STEP * mels
    log_t = mels >= _MIN_LOG_MEL
    hz[log_t] = _MIN_LOG_HZ * np.exp(_LOG_STEP * (mels[log_t] - _MIN_LOG_MEL))
    return hz


def mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels): Slaney mel scale, area ("slaney") normalisation, 0 Hz to Nyquist;
    float32 (n_mels, 1 + n_fft // 2). Empty bands (many mels, few FFT bins) stay zero, as in librosa."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _slaney_mel_to_hz(np.linspace(_hz_to_slaney_mel(0.0), _hz_to_slaney_mel(float(sample_rate) / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        weights[i] = np.maximum(0, np.minimum(-ramps[i] / fdiff[i], ramps[i + 2] / fdiff[i + 1]))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


def _build_mel_basis(config: MelConfig) -> np.ndarray:
    """The (n_mels, 1 + n_fft // 2) float32 filterbank; float32 so the per-clip product stays float32."""
    return mel_basis(config.sample_rate, config.n_fft, config.n_mels)


def _as_mono_float32(audio: np.ndarray) -> np.ndarray:
    """Checks the clip is one channel; the decoder already resampled and downmixed it."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n_samples,), got {audio.shape}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _power_to_relative_db(mel_power: np.ndarray, power: float, top_db: float) -> np.ndarray:
    """dB relative to the clip maximum, floored at -top_db; silence maps to the floor, not NaN."""
    peak = float(mel_power.max()) if mel_power.size else 0.0
    if not np.isfinite(peak) or peak <= _POWER_FLOOR:
        return np.full(mel_power.shape, -top_db, dtype=np.float32)
    db_per_decade = 20.0 / power  # 10 for a power spectrogram, 20 for a magnitude one
    ratio = np.maximum(mel_power, _POWER_FLOOR) / peak
    db = db_per_decade * np.log10(ratio)
    return np.clip(db, -top_db, 0.0).astype(np.float32)


def mel_frame_times(n_frames: int, config: MelConfig) -> np.ndarray:
    """Centre time (s) of each mel frame: the STFT is centred, so frame i sits at i * hop / sr."""
    return np.arange(n_frames, dtype=np.float64) * config.hop_length / config.sample_rate


def max_mel_frames(config: MelConfig) -> int:
    """Frames of a max_duration clip, to size a fixed-shape store array before any clip is read."""
    n_samples = int(round(config.max_duration * config.sample_rate))
    return 1 + n_samples // config.hop_length


def audio_end_time(n_frames: int, config: MelConfig) -> float:
    """Where the audio covered by n_frames ends: half a hop after the last frame's centre.

    Each frame stands for the hop-long cell around its centre; the true end is within that cell.
    """
    if n_frames == 0:
        return 0.0
    return (n_frames - 0.5) * config.hop_length / config.sample_rate


def spectrogram_image(log_mel: np.ndarray, size: int, top_db: float = 80.0) -> np.ndarray:
    """(size, size) uint8 image: -top_db..0 dB -> 0..255, low frequencies at the bottom row.

    The study rendered spectrograms the way they are plotted (origin lower), so row 0 is the highest
    band. An empty spectrogram (no audio) gives the silence floor, 0.
    """
    if log_mel.ndim != 2:
        raise ValueError(f"expected a (n_mels, n_frames) log-mel, got {log_mel.shape}")
    if log_mel.shape[1] == 0:
        return np.zeros((size, size), dtype=np.uint8)
    scaled = (np.clip(log_mel, -top_db, 0.0) + top_db) * (255.0 / top_db)
    resized = _resize_axes(np.flipud(scaled).astype(np.float32), size, size)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def _resize_axes(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resizes each axis on its own: area averaging where it shrinks (512 bands -> size rows must not
    alias), linear where it stretches (a 3-frame chunk -> size columns)."""
    height, width = image.shape
    if height != rows:
        image = cv2.resize(image, (width, rows), interpolation=_interpolation(height, rows))
    if width != cols:
        image = cv2.resize(image, (cols, rows), interpolation=_interpolation(width, cols))
    return image


def _interpolation(source: int, target: int) -> int:
    return cv2.INTER_AREA if target < source else cv2.INTER_LINEAR


def chunk_images(
    log_mel: np.ndarray, spans: np.ndarray, config: MelConfig, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Spectrogram chunks aligned with video frames by timestamps.

    `spans` is (T, 2) float seconds [start, end): the time each of T video frames covers. Chunk i is
    the mel frames whose centre falls in span i (the nearest frame when none does, e.g. a span shorter
    than a hop), rendered like `spectrogram_image`. Returns (chunks (T, size, size) uint8, valid (T,)
    bool); valid[i] is False and the chunk all 0 (silence floor) when span i starts after the audio
    ends, so a clip whose audio is shorter than its video is neither stretched nor misaligned.
    """
    spans = _as_spans(spans)
    n_frames = log_mel.shape[1]
    centres = mel_frame_times(n_frames, config)
    audio_end = audio_end_time(n_frames, config)
    chunks = np.zeros((len(spans), size, size), dtype=np.uint8)
    valid = spans[:, 0] < audio_end
    for i in np.flatnonzero(valid):
        columns = _span_columns(centres, spans[i, 0], spans[i, 1])
        chunks[i] = spectrogram_image(log_mel[:, columns], size, config.top_db)
    return chunks, valid


def _as_spans(spans: np.ndarray) -> np.ndarray:
    spans = np.asarray(spans, dtype=np.float64)
    if spans.ndim != 2 or spans.shape[1] != 2:
        raise ValueError(f"spans must be (T, 2) [start, end) seconds, got {spans.shape}")
    return spans


def _span_columns(centres: np.ndarray, start: float, end: float) -> slice:
    """Mel frames centred in [start, end), or the one nearest the span's middle if none is."""
    first = int(np.searchsorted(centres, start, side="left"))
    stop = int(np.searchsorted(centres, end, side="left"))
    if stop > first:
        return slice(first, stop)
    nearest = int(np.argmin(np.abs(centres - 0.5 * (start + end))))
    return slice(nearest, nearest + 1)
