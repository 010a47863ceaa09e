"""Decoding with ffmpeg: find the binary, probe a file, pull exactly the frames and audio we need.

No ffprobe is assumed (the `imageio-ffmpeg` wheel ships ffmpeg alone), so probing parses what
`ffmpeg -i` prints and lists the packets of a stream copy (`framecrc`), which needs no decoding, works even
for files whose container claims no duration (CREMA-D's 1064_TIE_SAD_XX), and gives each stream's start
time with `-copyts` on every ffmpeg version (the header's own `start` field is only printed by recent ones).

Every ffmpeg call runs under a timeout (`timeout` seconds): a hung decode becomes a DecodeError whose
message starts with "timeout", never a hung run.
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


FFMPEG_TIMEOUT_S = 120.0
"""Default limit for one ffmpeg call; a CREMA-D clip takes well under a second."""


def run_ffmpeg(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """ffmpeg with `args`, bytes captured; a DecodeError("timeout ...") when it runs past `timeout` seconds."""
    try:
        return subprocess.run([ffmpeg_exe(), *args], capture_output=True, stdin=subprocess.DEVNULL, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DecodeError(f"timeout: ffmpeg ran longer than {timeout:g} s") from None


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
    video_start: float = 0.0  # seconds, the first video frame's presentation time in the container
    audio_start: float | None = None  # seconds, the first audio packet's; None without an audio stream

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps if self.fps > 0 else 0.0


_VIDEO_RE = re.compile(r"Stream #\S+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+) (?:fps|tbr)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe(path: str, timeout: float = FFMPEG_TIMEOUT_S) -> MediaInfo:
    """Frame count, rate, size, stream start times and whether an audio stream exists. Raises DecodeError.

    One ffmpeg run: a stream copy of the first video and audio streams to `framecrc` lists their packets
    (count and timestamps) without decoding, and the same run prints the container's header, which gives
    the rest.
    """
    done = run_ffmpeg(
        ["-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy", "-copyts", "-f", "framecrc", "-"],
        timeout,
    )
    header = done.stderr.decode(errors="replace")
    video = _VIDEO_RE.search(header)
    if video is None:
        last = header.strip().splitlines()[-1] if header.strip() else "no output"
        raise DecodeError(f"no readable video stream ({last})")
    video_line = header[video.start() : header.find("\n", video.start())]
    fps_match = _FPS_RE.search(video_line)
    fps = float(fps_match.group(1)) if fps_match else 0.0
    has_audio = re.search(r"Stream #\S+.*?: Audio: ", header) is not None
    packets = parse_framecrc(done.stdout.decode(errors="replace"))
    n_frames = len(packets.get(0, ()))
    claimed = _DURATION_RE.search(header)
    claimed_duration = None
    if claimed:
        claimed_duration = int(claimed.group(1)) * 3600 + int(claimed.group(2)) * 60 + float(claimed.group(3))
    video_start = min(packets[0]) if packets.get(0) else 0.0
    audio_start = (min(packets[1]) if packets.get(1) else video_start) if has_audio else None
    return MediaInfo(n_frames, fps, int(video.group(1)), int(video.group(2)), has_audio, claimed_duration, video_start, audio_start)


def parse_framecrc(text: str) -> dict[int, list[float]]:
    """Presentation times in seconds of each output stream's packets, from ffmpeg's `framecrc` listing
    (`#tb N: num/den` lines give each stream's time base; packet lines are `stream, dts, pts, size, ...`)."""
    time_base: dict[int, float] = {}
    times: dict[int, list[float]] = {}
    for line in text.splitlines():
        if line.startswith("#tb "):
            index, fraction = line[4:].split(":", 1)
            num, den = fraction.strip().split("/")
            time_base[int(index)] = int(num) / int(den)
        elif line and not line.startswith("#"):
            fields = [f.strip() for f in line.split(",")]
            stream = int(fields[0])
            if stream in time_base and fields[2].lstrip("-").isdigit():
                times.setdefault(stream, []).append(int(fields[2]) * time_base[stream])
    return times


def decode_frames(path: str, indices: list[int], width: int, height: int, timeout: float = FFMPEG_TIMEOUT_S) -> np.ndarray:
    """Decode only the frames at `indices` (sorted, may repeat) as RGB uint8, shape (len(indices), H, W, 3).

    ffmpeg's select filter keeps the wanted frames so only those are converted and piped; repeated indices
    are decoded once and copied.
    """
    unique = sorted(set(indices))
    expr = "+".join(f"eq(n,{i})" for i in unique)  # ffmpeg-python escapes the commas
    args = (
        ffmpeg.input(path)
        .video.filter("select", expr)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", fps_mode="passthrough")
        .get_args()
    )
    done = run_ffmpeg(args, timeout)
    if done.returncode != 0:
        raise DecodeError(f"video decode failed: {_last_line(done.stderr)}")
    out = done.stdout
    frame_bytes = width * height * 3
    got = len(out) // frame_bytes
    if got < len(unique):
        raise DecodeError(f"video ends early: {got} of {len(unique)} requested frames decoded")
    frames = np.frombuffer(out[: got * frame_bytes], np.uint8).reshape(got, height, width, 3)
    position = {index: k for k, index in enumerate(unique)}
    return frames[[position[i] for i in indices]]


def decode_audio(path: str, sample_rate: int, timeout: float = FFMPEG_TIMEOUT_S) -> np.ndarray:
    """The first audio stream as mono float32 at `sample_rate`; empty when the file has no audio.

    The samples start at the stream's first sample: ffmpeg drops the stream's start offset when it writes
    audio alone, so the caller places them on the video's clock (pipeline/clock.py) with probe's start times.
    """
    args = ffmpeg.input(path).output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=sample_rate, map="0:a:0").get_args()
    done = run_ffmpeg(args, timeout)
    if done.returncode != 0:
        full = done.stderr.decode(errors="replace")
        if "matches no streams" in full or "does not contain any stream" in full:
            return np.zeros(0, np.float32)  # the file simply has no audio track
        raise DecodeError(f"audio decode failed: {_last_line(done.stderr)}")
    return np.frombuffer(done.stdout, np.float32).copy()


def _last_line(stderr: bytes | None) -> str:
    lines = (stderr or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message from ffmpeg"
