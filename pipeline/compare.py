"""ComParE low-level descriptor sequences (seed 002): 65 LLDs + their deltas (130-d), 32 ms windows every 16 ms.

Goncalves & Busso feed their audio branch the 65 LLDs of the ComParE set plus first-order deltas, framed with
32 ms windows every 16 ms. openSMILE (the `opensmile` wheel, which ships the extractor and its configs, so
nothing is downloaded) frames ComParE_2016 at 10 ms with two window lengths: 20 ms for the energy and spectral
LLDs and 60 ms for pitch, jitter/shimmer and zero-crossing rate. `compare_config_text` derives a config from the
shipped `ComParE_2016_core.lld.conf.inc` with only the framing changed: the 20 ms window becomes `window` (32 ms),
every step becomes `step` (16 ms), and the 60 ms pitch window is kept, because a 32 ms window cannot hold two
periods of the set's 52 Hz lowest pitch (deviation, stated). Both framings start together (`frameCenterSpecial =
left`), so frame k covers [k * step, k * step + window) for the spectral LLDs; its reported end is the pitch
window's. Smoothing (3 frames) and delta regression (2 frames each side) stay as shipped, so in seconds they
span 1.6x what they span at 10 ms.

The audio comes from the clip's already decoded waveform (the mel's, on the video's clock), resampled to
`sample_rate` by a polyphase filter (scipy): no second decode. Everything is a pure function of that array.

`pool_to_spans` averages the LLD frames into the T frame spans of the faces, by the rule the mel chunks use
(pipeline/audio.py): the frames whose centre lies in a span, else the one nearest its middle; spans that start
after the audio ends are invalid (zeros).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass
from typing import ClassVar
from fractions import Fraction

import numpy as np

from pipeline.audio import _span_columns
from pipeline.numeric import pinned

N_FEATURES = 130  # 65 LLDs + 65 deltas


@dataclass(frozen=True)
class LldConfig:
    """Defaults are seed 002's: ComParE_2016 LLDs + deltas, 32 ms windows, 16 ms step."""

    VERSION: ClassVar[int] = 3
    """Bump by hand when a change to the LLD code changes its numbers: part of the lld fingerprint only
    (pipeline/extract.py lld_params). 3: the global version every stage shared until each had its own."""

    feature_set: str = "ComParE_2016"
    window: float = 0.032  # the spectral/energy window (seconds); the pitch window stays openSMILE's 60 ms
    step: float = 0.016
    sample_rate: int = 16000  # CREMA-D's own rate; the decoded audio is resampled to it


@dataclass(frozen=True)
class LldResult:
    features: np.ndarray  # (F, 130) float32
    times: np.ndarray  # (F, 2) float32 [start, end) seconds on the video's clock, as openSMILE reports them
    names: tuple[str, ...]


def max_lld_frames(config: LldConfig, max_duration: float) -> int:
    """Frames of a max_duration clip, to size the store's fixed-shape array before any clip is read."""
    return int(math.ceil(max_duration / config.step)) + 1


def compare_config_text(config: LldConfig) -> str:
    """The derived openSMILE config: the shipped ComParE_2016 LLD graph with the framing of `config`, and one
    sink level `lld_all` = LLDs then deltas (openSMILE's own `lld` and `lld_de` levels, concatenated)."""
    if config.feature_set != "ComParE_2016":
        raise ValueError(f"only ComParE_2016 is supported, not '{config.feature_set}'")
    root = _config_root()
    with open(os.path.join(root, "compare", "ComParE_2016_core.lld.conf.inc"), encoding="utf-8") as f:
        lld = f.read()
    for old, new in (("frameSize = 0.020", f"frameSize = {config.window:.6f}"), ("frameStep = 0.010", f"frameStep = {config.step:.6f}")):
        if old not in lld:
            raise RuntimeError(f"opensmile's ComParE_2016 LLD config no longer holds '{old}'; update pipeline/compare.py")
        lld = lld.replace(old, new)
    lld = lld.replace("../shared/", os.path.join(root, "shared") + os.sep)
    return "\n".join([
        "[componentInstances:cComponentManager]",
        "instance[dataMemory].type=cDataMemory",
        r"\{\cm[source{?}:include external source]}",
        lld,
        "[componentInstances:cComponentManager]",
        "instance[is13_lldconcat].type=cVectorConcat",
        "instance[is13_llddeconcat].type=cVectorConcat",
        "instance[avstore_lld_all].type=cVectorConcat",
        "[is13_lldconcat:cVectorConcat]",
        "reader.dmLevel = is13_lld_nzsmo;is13_lldA_smo;is13_lldB_smo",
        "writer.dmLevel = lld",
        "includeSingleElementFields = 1",
        "[is13_llddeconcat:cVectorConcat]",
        "reader.dmLevel = is13_lld_nzsmo_de;is13_lldA_smo_de;is13_lldB_smo_de",
        "writer.dmLevel = lld_de",
        "includeSingleElementFields = 1",
        "[avstore_lld_all:cVectorConcat]",
        "reader.dmLevel = lld;lld_de",
        "writer.dmLevel = lld_all",
        "includeSingleElementFields = 1",
        r"\{\cm[sink{?}:include external sink]}",
        "",
    ])


def config_hash(config: LldConfig) -> str:
    """sha256 of the derived config, without the install path: part of the fingerprint (the shipped graph could
    change between opensmile releases)."""
    text = compare_config_text(config).replace(os.path.join(_config_root(), "shared") + os.sep, "../shared/")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _config_root() -> str:
    import opensmile

    return os.path.join(os.path.dirname(opensmile.__file__), "core", "config")


@functools.lru_cache(maxsize=2)
def _smile(config: LldConfig):
    """One openSMILE front end per worker process and configuration (parsing the config takes ~1 s)."""
    import opensmile

    folder = tempfile.mkdtemp(prefix="avstore-compare-")
    path = os.path.join(folder, "ComParE_2016_avstore.conf")
    with open(path, "w", encoding="utf-8") as f:
        f.write(compare_config_text(config))
    smile = opensmile.Smile(feature_set=path, feature_level="lld_all")
    if len(smile.feature_names) != N_FEATURES:
        raise RuntimeError(f"the derived ComParE config gives {len(smile.feature_names)} features, not {N_FEATURES}")
    return smile


def resample(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (scipy's Kaiser-windowed FIR): a pure function, float32 out."""
    if source_rate == target_rate:
        return np.ascontiguousarray(audio, dtype=np.float32)
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, source_rate)
    return resample_poly(np.asarray(audio, np.float64), ratio.numerator, ratio.denominator).astype(np.float32)


@pinned  # one thread: the same bytes whatever the worker's settings (pipeline/numeric.py)
def compare_llds(audio: np.ndarray, source_rate: int, config: LldConfig = LldConfig()) -> LldResult:
    """Mono float audio at `source_rate` (on the video's clock) -> the (F, 130) LLD + delta sequence and its times.

    Samples are clipped to [-1, 1] first: openSMILE reads 16-bit PCM and a sample past full scale would wrap."""
    signal = np.clip(resample(audio, source_rate, config.sample_rate), -1.0, 32767 / 32768)
    smile = _smile(config)
    if signal.size < int(0.060 * config.sample_rate):  # shorter than one pitch window: openSMILE gives no frame
        return LldResult(np.zeros((0, N_FEATURES), np.float32), np.zeros((0, 2), np.float32), tuple(smile.feature_names))
    frame = smile.process_signal(signal, config.sample_rate)
    starts = frame.index.get_level_values("start").total_seconds().to_numpy()
    ends = frame.index.get_level_values("end").total_seconds().to_numpy()
    features = np.nan_to_num(frame.to_numpy(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return LldResult(features, np.stack([starts, ends], axis=1).astype(np.float32), tuple(smile.feature_names))


def frame_centres(times: np.ndarray, config: LldConfig) -> np.ndarray:
    """Centre of each frame's spectral window: start + window / 2."""
    return np.asarray(times, np.float64)[:, 0] + config.window / 2


def pool_to_spans(features: np.ndarray, times: np.ndarray, spans: np.ndarray, config: LldConfig) -> tuple[np.ndarray, np.ndarray]:
    """(T, 130) float32 mean of the LLD frames in each of the T frame spans, and (T,) valid.

    The same assignment as the mel chunks: frames centred in [start, end), or the nearest one when none is
    (a span shorter than a step). A span that starts after the last frame's window ends is invalid (zeros)."""
    spans = np.asarray(spans, np.float64)
    pooled = np.zeros((len(spans), features.shape[1]), np.float32)
    if len(features) == 0:
        return pooled, np.zeros(len(spans), bool)
    centres = frame_centres(times, config)
    audio_end = float(times[-1, 0]) + config.window
    valid = spans[:, 0] < audio_end
    for i in np.flatnonzero(valid):
        columns = _span_columns(centres, spans[i, 0], spans[i, 1])
        pooled[i] = features[columns].mean(axis=0, dtype=np.float64).astype(np.float32)
    return pooled, valid
