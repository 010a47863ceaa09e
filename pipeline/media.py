"""Decoding with ffmpeg: find the binary, probe a file, pull exactly the frames and audio we need.

No ffprobe is assumed (the `imageio-ffmpeg` wheel ships ffmpeg alone), so probing parses what
`ffmpeg -i` prints and counts video packets with a stream copy, which needs no decoding and works even
for files whose container claims no duration (CREMA-D's 1064_TIE_SAD_XX).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from dataclasses import dataclass

import ffmpeg
import numpy as np


class DecodeError(RuntimeError):
    """The file could not be read as audio-visual media; the message says why."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """System ffmpeg when present, otherwise the static binary inside the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    n_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool
    claimed_duration: float | None = None  # what the container header says; None when it says N/A

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


_VIDEO_RE = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+) (?:fps|tbr)")
_FRAME_RE = re.compile(r"frame=\s*(\d+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe(path: str) -> MediaInfo:
    """Frame count, rate, size and whether an audio stream exists. Raises DecodeError.

    One ffmpeg run: a stream copy of the video to nowhere counts its packets without decoding, and the
    same run prints the container's header, which gives the rest.
    """
    header = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
        capture_output=True,
        text=True,
    ).stderr
    video = _VIDEO_RE.search(header)
    if video is None:
        last = header.strip().splitlines()[-1] if header.strip() else "no output"
        raise DecodeError(f"no readable video stream ({last})")
    video_line = header[video.start() : header.find("\n", video.start())]
    fps_match = _FPS_RE.search(video_line)
    fps = float(fps_match.group(1)) if fps_match else 0.0
    has_audio = re.search(r"Stream #\S+.*?: Audio: ", header) is not None
    frames = _FRAME_RE.findall(header)
    n_frames = int(frames[-1]) if frames else 0
    claimed = _DURATION_RE.search(header)
    claimed_duration = None
    if claimed:
        claimed_duration = int(claimed.group(1)) * 3600 + int(claimed.group(2)) * 60 + float(claimed.group(3))
    return MediaInfo(n_frames, fps, int(video.group(1)), int(video.group(2)), has_audio, claimed_duration)


def decode_frames(path: str, indices: list[int], width: int, height: int) -> np.ndarray:
    """Decode only the frames at `indices` (sorted, may repeat) as RGB uint8, shape (len(indices), H, W, 3).

    ffmpeg's select filter keeps the wanted frames so only those are converted and piped; repeated indices
    are decoded once and copied.
    """
    unique = sorted(set(indices))
    expr = "+".join(f"eq(n,{i})" for i in unique)  # ffmpeg-python escapes the commas
    try:
        out, _ = (
            ffmpeg.input(path)
            .video.filter("select", expr)
            .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
            .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as err:
        raise DecodeError(f"video decode failed: {_last_line(err.stderr)}") from None
    frame_bytes = width * height * 3
    got = len(out) // frame_bytes
    if got < len(unique):
        raise DecodeError(f"video ends early: {got} of {len(unique)} requested frames decoded")
    frames = np.frombuffer(out[: got * frame_bytes], np.uint8).reshape(got, height, width, 3)
    position = {index: k for k, index in enumerate(unique)}
    return frames[[position[i] for i in indices]]


def decode_audio(path: str, sample_rate: int) -> np.ndarray:
    """The first audio stream as mono float32 at `sample_rate`; empty when the file has no audio."""
    try:
        out, _ = (
            ffmpeg.input(path)
            .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0")
            .run(cmd=ffmpeg_exe(), capture_stdout=True, capture_stderr=True)
        )
    except ffmpeg.Error as err:
        full = (err.stderr or b"").decode(errors="replace")
        if "matches no streams" in full or "does not contain any stream" in full:
            return np.zeros(0, np.float32)  # the file simply has no audio track
        raise DecodeError(f"audio decode failed: {_last_line(err.stderr)}") from None
    return np.frombuffer(out, np.float32).copy()


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message from ffmpeg"
