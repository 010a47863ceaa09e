"""One clock for a clip: the video's. Pure functions, no decoding, so any decoder (ffmpeg today, PyAV later)
can use them with the stream start times it reads from the container.

Time 0 is the presentation time of the video's first frame; frame n of a constant-rate video is at n / fps.
A container may start its audio later or earlier than its picture (an MP4 edit list, `-itsoffset`, an encoder's
priming delay shifted by an FLV muxer), and a decoder that writes the audio alone hands back samples from the
audio's own first sample. Placing those samples on the video's clock means padding late audio with silence and
cutting audio that starts early, so that sample k is heard at time k / sample_rate on the video's clock.
"""

from __future__ import annotations

import numpy as np


def audio_offset(video_start: float, audio_start: float | None) -> float:
    """Seconds by which the audio starts after the first video frame (negative: before it). A missing start
    time (an audio file of its own, such as CREMA-D's WAVs) counts as starting with the picture."""
    return 0.0 if audio_start is None else float(audio_start) - float(video_start)


def audio_on_video_clock(audio: np.ndarray, sample_rate: int, offset: float) -> np.ndarray:
    """`audio` (samples from the audio's own first sample) moved onto the video's clock: `offset` seconds of
    silence in front when it starts late, its first -`offset` seconds cut when it starts early."""
    shift = int(round(offset * sample_rate))
    if shift > 0:
        return np.concatenate([np.zeros(shift, audio.dtype), audio])
    return audio[-shift:] if shift < 0 else audio


def frame_times(frame_index: np.ndarray, fps: float) -> np.ndarray:
    """Presentation time of each frame on the video's clock (constant frame rate), float32 seconds."""
    return (np.asarray(frame_index) / fps).astype(np.float32)
