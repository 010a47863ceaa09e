"""Decoding in process with PyAV: one open per clip gives the probe facts, the needed frames and the audio.

Why PyAV: its wheels bundle FFmpeg's libraries, so the container is opened once and read once. The old way
started three ffmpeg processes per clip (a packet listing to probe, a rawvideo pipe, an audio pipe) and
converted every frame it piped. Here the packets are demuxed once (no decoding: that gives the frame count,
each frame's presentation time and each stream's start time, even for files whose header claims no
duration, such as CREMA-D's 1064_TIE_SAD_XX); then the video packets are decoded only up to the last frame
wanted, and only the wanted frames are converted to RGB (and turned upright by the display matrix phones
write); the audio packets are decoded and resampled to mono float32 only when asked for.

Every call runs under a deadline (`timeout` seconds, checked inside the demux and decode loops and passed to
FFmpeg's own open/read timeout): a hung or slow decode becomes a DecodeError whose message starts with
"timeout", never a hung run. The ffmpeg binary is still found here for the tests and the sample corpus,
which encode with it; no decoding path needs it.
"""

from __future__ import annotations

import functools
import shutil
import time
from dataclasses import dataclass, field

import av
from av.video.reformatter import VideoReformatter
import numpy as np


class DecodeError(RuntimeError):
    """The file could not be read as audio-visual media; the message says why."""


FFMPEG_TIMEOUT_S = 120.0
"""Default limit for decoding one clip; a CREMA-D clip takes well under a second."""

DECODER_THREADS = 1
"""FFmpeg's decoders otherwise start a thread per core (PyAV's thread_count 0) in every worker process: on a
16-core node, 14 workers x 16 threads. The workers are the parallelism; one decoding thread each."""


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """System ffmpeg when present, otherwise the static binary inside the imageio-ffmpeg wheel (for encoding
    test media and the sample corpus; decoding uses PyAV's bundled libraries)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class MediaInfo:
    n_frames: int
    fps: float
    width: int  # as displayed, i.e. after the display rotation
    height: int
    has_audio: bool
    claimed_duration: float | None = None  # what the container header says; None when it says nothing
    video_start: float = 0.0  # seconds, the first video frame's presentation time in the container
    audio_start: float | None = None  # seconds, the first audio packet's; None without an audio stream
    times: np.ndarray | None = field(default=None, compare=False, repr=False)  # each frame's time on the video clock, sorted
    rotation: int = 0  # degrees counter-clockwise the display matrix turns the stored pixels (0, 90, 180, 270)

    @property
    def constant_rate(self) -> bool:
        """Every frame within half a frame of n / fps: frame counting and timestamps agree."""
        if self.times is None or self.fps <= 0:
            return True
        return bool(np.all(np.abs(self.times - np.arange(len(self.times)) / self.fps) <= 0.5 / self.fps))

    @property
    def duration(self) -> float:
        if self.fps <= 0 or self.n_frames == 0:
            return 0.0
        if self.constant_rate:
            return self.n_frames / self.fps
        step = float(self.times[-1] - self.times[-2]) if self.n_frames > 1 else 1.0 / self.fps
        return float(self.times[-1]) + step  # the last frame shows as long as the one before it


class Deadline:
    """`seconds` from now; `check()` raises DecodeError("timeout ...") once they are past."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def check(self, doing: str) -> None:
        if time.monotonic() > self.end:
            raise DecodeError(f"timeout: decoding ran longer than {self.seconds:g} s ({doing})")


def _open(path: str, deadline: Deadline, options: dict | None = None):
    try:
        container = av.open(path, timeout=(deadline.seconds, deadline.seconds), options=options or {})
    except av.ExitError:  # FFmpeg's own open timeout interrupted it
        raise DecodeError(f"timeout: opening took longer than {deadline.seconds:g} s") from None
    except av.FFmpegError as err:
        raise DecodeError(f"not readable as media: {err}") from None
    except OSError as err:
        raise DecodeError(f"cannot open: {err}") from None
    deadline.check("opening")
    return container


class Media:
    """One open container: its probe facts (`info`), then `frames(indices)` and `audio(rate)`.

    Use as a context manager (or call `close`): it holds the file open and its packets in memory (a few MB
    for a clip of seconds)."""

    def __init__(self, path: str, timeout: float = FFMPEG_TIMEOUT_S) -> None:
        self.path = path
        self.deadline = Deadline(timeout)
        self.container = _open(path, self.deadline)
        try:
            self._demux()
        except BaseException:
            self.container.close()
            raise

    def _demux(self) -> None:
        if not self.container.streams.video:
            raise DecodeError("no readable video stream")
        self.video = self.container.streams.video[0]
        self.audio_stream = self.container.streams.audio[0] if self.container.streams.audio else None
        streams = [s for s in (self.video, self.audio_stream) if s is not None]
        for stream in streams:
            stream.codec_context.thread_count = DECODER_THREADS
        self.video_packets: list = []
        self.audio_packets: list = []
        self.demux_error = ""
        try:
            for k, packet in enumerate(self.container.demux(streams)):
                if k % 64 == 0:
                    self.deadline.check("reading packets")
                if packet.size == 0:
                    continue  # the end-of-stream marker
                (self.video_packets if packet.stream.index == self.video.index else self.audio_packets).append(packet)
        except av.FFmpegError as err:  # a damaged tail: keep what was read, the checks below judge it
            self.demux_error = str(err)
        tb = float(self.video.time_base)
        pts = np.sort(np.asarray([p.pts for p in self.video_packets if p.pts is not None], np.int64))
        self.video_pts = pts
        video_start = float(pts[0]) * tb if len(pts) else 0.0
        audio_start = None
        if self.audio_stream is not None:
            apts = [p.pts for p in self.audio_packets if p.pts is not None]
            audio_start = min(apts) * float(self.audio_stream.time_base) if apts else video_start
        rate = self.video.average_rate or self.video.base_rate or self.video.guessed_rate
        claimed = self.container.duration / av.time_base if self.container.duration else None
        rotation = self._rotation()
        width, height = self.video.codec_context.width, self.video.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        self.info = MediaInfo(
            n_frames=len(pts), fps=float(rate) if rate else 0.0, width=width, height=height,
            has_audio=self.audio_stream is not None, claimed_duration=claimed, video_start=video_start,
            audio_start=audio_start, times=(pts - pts[0]) * tb if len(pts) else np.zeros(0), rotation=rotation,
        )

    def _rotation(self) -> int:
        """The display matrix's rotation, read from the first frame (where FFmpeg puts the stream's matrix)."""
        codec = self.video.codec_context
        for packet in self.video_packets[:8]:
            try:
                for frame in codec.decode(packet):
                    codec.flush_buffers()
                    return _quarter_turns(frame.rotation) * 90
            except av.FFmpegError:
                continue
        codec.flush_buffers()
        return 0

    def frames(self, indices: list[int]) -> np.ndarray:
        """The frames at `indices` (positions in presentation order; sorted or not, may repeat) as upright RGB
        uint8, shape (len(indices), H, W, 3). Decodes up to the last one wanted; converts only those."""
        wanted = sorted(set(int(i) for i in indices))
        if wanted and wanted[-1] >= len(self.video_pts):
            raise DecodeError(f"video ends early: frame {wanted[-1]} asked for, {len(self.video_pts)} readable")
        by_pts = {int(self.video_pts[i]): i for i in wanted}
        got: dict[int, np.ndarray] = {}
        codec = self.video.codec_context
        codec.flush_buffers()
        shown = 0  # frames output so far, for a decoder that gives no timestamps
        to_rgb = VideoReformatter()  # one converter for the clip: frame.to_ndarray(format=...) set one up per frame (~0.35 ms)

        def keep(frame) -> None:
            nonlocal shown
            index = by_pts.get(frame.pts) if frame.pts is not None else (shown if shown in wanted else None)
            shown += 1
            if index is not None and index not in got:
                got[index] = np.rot90(rgb_pixels(to_rgb.reformat(frame, format="rgb24")), _quarter_turns(frame.rotation))

        try:
            for k, packet in enumerate(self.video_packets):
                if len(got) == len(wanted):
                    break
                if k % 8 == 0:
                    self.deadline.check("decoding video")
                for frame in codec.decode(packet):
                    keep(frame)
            if len(got) < len(wanted):
                for frame in codec.decode(None):
                    keep(frame)
        except av.FFmpegError as err:
            if len(got) < len(wanted):
                raise DecodeError(f"video decode failed: {err}") from None
        if len(got) < len(wanted):
            raise DecodeError(f"video ends early: {len(got)} of {len(wanted)} requested frames decoded")
        return np.stack([got[int(i)] for i in indices]) if len(indices) else np.zeros((0, self.info.height, self.info.width, 3), np.uint8)

    def audio(self, sample_rate: int) -> np.ndarray:
        """The first audio stream as mono float32 at `sample_rate`, from its own first sample (the caller puts
        it on the video's clock with pipeline/clock.py); empty without an audio stream."""
        if self.audio_stream is None:
            return np.zeros(0, np.float32)
        return _decode_audio(self.audio_stream.codec_context, self.audio_packets, sample_rate, self.deadline)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> Media:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rgb_pixels(frame) -> np.ndarray:
    """The (H, W, 3) pixels of an rgb24 frame, viewed where they lie (rows may be padded): `frames` copies them once,
    into its stack, where to_ndarray() copied them first."""
    plane = frame.planes[0]
    rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
    return rows[:, : frame.width * 3].reshape(frame.height, frame.width, 3)


def _quarter_turns(rotation: float | None) -> int:
    """np.rot90's k (counter-clockwise quarter turns) that shows a frame the way its display matrix says."""
    return int(round((rotation or 0) / 90)) % 4


def _decode_audio(codec, packets, sample_rate: int, deadline: Deadline) -> np.ndarray:
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    parts: list[np.ndarray] = []
    try:
        for k, packet in enumerate([*packets, None]):
            if k % 64 == 0:
                deadline.check("decoding audio")
            for frame in codec.decode(packet):
                parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
        parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    except av.FFmpegError as err:
        raise DecodeError(f"audio decode failed: {err}") from None
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


def open_media(path: str, timeout: float = FFMPEG_TIMEOUT_S) -> Media:
    """The clip's container, opened and demuxed once. Raises DecodeError."""
    return Media(path, timeout)


def probe(path: str, timeout: float = FFMPEG_TIMEOUT_S) -> MediaInfo:
    """Frame count, rate, size, stream start times and whether an audio stream exists. Raises DecodeError."""
    with open_media(path, timeout) as media:
        return media.info


def decode_frames(path: str, indices: list[int], width: int | None = None, height: int | None = None,
                  timeout: float = FFMPEG_TIMEOUT_S) -> np.ndarray:
    """Only the frames at `indices` as upright RGB uint8 (len(indices), H, W, 3); `width`/`height` are ignored
    (the decoder knows them) and kept for callers of the old signature."""
    with open_media(path, timeout) as media:
        return media.frames(indices)


SHORT_PROBE = {"probesize": "32"}
"""FFmpeg reads up to `probesize` bytes (5 MB by default) to learn the streams' formats before the first packet.
A WAV states its one stream's format in its header, yet the default read its whole file: opening a CREMA-D WAV
cost ~5 of the ~10 CPU-ms of decoding it. Any other file is opened again with the default: an FLV, for one, shows
its audio stream only once its packets are read."""


def _knows_its_format(stream) -> bool:
    codec = stream.codec_context
    return bool(codec.sample_rate and codec.channels and codec.format is not None)


def decode_audio(path: str, sample_rate: int, timeout: float = FFMPEG_TIMEOUT_S) -> np.ndarray:
    """The first audio stream of any file (a video's track or a WAV of its own) as mono float32 at
    `sample_rate`; empty when the file has no audio."""
    deadline = Deadline(timeout)
    container = _open(path, deadline, SHORT_PROBE)
    if container.format.name != "wav" or not all(_knows_its_format(s) for s in container.streams.audio):
        container.close()  # streams found while reading (FLV), or a format the header leaves open: the default probe
        container = _open(path, deadline)
    try:
        if not container.streams.audio:
            return np.zeros(0, np.float32)
        stream = container.streams.audio[0]
        stream.codec_context.thread_count = DECODER_THREADS
        packets = []
        try:
            for k, packet in enumerate(container.demux(stream)):
                if k % 64 == 0:
                    deadline.check("reading packets")
                if packet.size:
                    packets.append(packet)
        except av.FFmpegError as err:
            if not packets:
                raise DecodeError(f"audio decode failed: {err}") from None
        return _decode_audio(stream.codec_context, packets, sample_rate, deadline)
    finally:
        container.close()
