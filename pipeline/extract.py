"""The per-clip tasks: pure functions from a clip record to arrays and a status. Dask runs them (run.py).

A clip's timeline comes from its video: the clip is cut into T equal spans, frame i is the frame at the
centre of span i, and spectrogram chunk i covers exactly span i of the audio, so the two modalities are
aligned by timestamps rather than by assuming equal lengths (SPEC defect 7). Faces and audio are separate
feature sets, so a changed mel parameter reuses the faces and vice versa; each task is independent.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from pipeline.audio import MelConfig, MelExtractor, chunk_images, max_mel_frames, spectrogram_image
from pipeline.compare import N_FEATURES, LldConfig, compare_llds, max_lld_frames, pool_to_spans
from pipeline.compare import config_hash as compare_config_hash
from pipeline.clock import audio_offset, audio_on_video_clock, frame_times
from pipeline.faces import CASCADE, KEY_SCHEDULE, TRACKING, FaceConfig, letterbox, track_faces
from pipeline.fuse import fuse, fusion_arrays, get_fusion, read_notes, stored_arrays
from pipeline.media import FFMPEG_TIMEOUT_S, DecodeError, Media, MediaInfo, decode_audio, open_media
from pipeline.records import ClipRecord

# Each stage's numbers have their own version, part of that stage's fingerprint alone (its params' "algorithm"):
# FaceConfig.VERSION, MelConfig.VERSION, LldConfig.VERSION, and a fusion's FusionSpec.version (FUSION_BASE_VERSION
# below for what every fusion shares). So fixing one fusion's formula re-fingerprints that fusion only. Each started
# from the one global version every stage shared until then, 3, so stores made before keep their fingerprints:
# 2: audio on the video's clock (stream start times), face coverage / faces seen / face_lost, source signatures.
# 3: decoding in process (PyAV): display rotation honoured, variable frame rate placed by timestamps, the exact
#    frame rate (29.97 was 29.97 as ffmpeg printed it, now 30000/1001). Constant-rate, unrotated clips at whole
#    rates (every sample and GRID clip) give the same bytes as version 2: frames, audio and timestamps were compared.
# A change to decoding or the clip's timeline (pipeline/media.py, clock.py) changes every stage: bump all three.

STATUSES = ("ok", "no_face", "face_lost", "no_audio", "decode_error", "too_short", "too_long", "error")
MEDIA_STATUSES = frozenset(STATUSES) - {"ok", "error"}
"""What a clip's media can be found to be; `error` alone means our code failed on it."""


@dataclass
class TaskResult:
    status: str
    reason: str = ""
    arrays: dict[str, np.ndarray] | None = None
    source: str = ""  # file_signature of the file it was computed from (pipeline/sources.py)


@dataclass(frozen=True)
class Timeline:
    frame_index: np.ndarray  # (T,) int32, the decoded frame per step
    timestamps: np.ndarray  # (T,) float32 seconds, that frame's start time
    spans: np.ndarray  # (T, 2) float32 seconds, [start, end) of each step
    middle_index: int


def clip_timeline(info: MediaInfo, steps: int) -> Timeline:
    """Frame i is the frame on screen at the centre of span i. A constant-rate video (every frame within half
    a frame of n / fps) counts frames; a variable-rate one looks the centres up in the frames' own timestamps."""
    edges = np.linspace(0.0, info.duration, steps + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    spans = np.stack([edges[:-1], edges[1:]], axis=1).astype(np.float32)
    if info.constant_rate:
        frame_index = np.minimum((centres * info.fps).astype(np.int64), info.n_frames - 1).astype(np.int32)
        return Timeline(frame_index, frame_times(frame_index, info.fps), spans, info.n_frames // 2)
    times = np.asarray(info.times, np.float64)
    on_screen = np.clip(np.searchsorted(times, centres, side="right") - 1, 0, info.n_frames - 1).astype(np.int32)
    middle = int(np.clip(np.searchsorted(times, info.duration / 2, side="right") - 1, 0, info.n_frames - 1))
    return Timeline(on_screen, times[on_screen].astype(np.float32), spans, middle)


def probe_timeline(record: ClipRecord, steps: int, max_duration: float, timeout: float = FFMPEG_TIMEOUT_S,
                   media: Media | None = None) -> tuple[Media, Timeline] | TaskResult:
    """The opened video and its timeline, or the reason this clip cannot have one. `media`: the video already
    opened by the caller (one open per clip); otherwise it is opened here and closed when it fails."""
    opened_here = media is None
    if media is None:
        try:
            media = open_media(record.video_path, timeout)
        except DecodeError as err:
            return TaskResult("decode_error", str(err))
    judged = judge(media.info, steps, max_duration)
    if judged is not None and opened_here:
        media.close()
    return judged if judged is not None else (media, clip_timeline(media.info, steps))


def judge(info: MediaInfo, steps: int, max_duration: float) -> TaskResult | None:
    """The probe's honesty checks: None when the video can give `steps` frames."""
    if info.n_frames == 0 or info.fps <= 0:
        return TaskResult("decode_error", "the video stream holds no frames")
    if info.claimed_duration and info.duration < 0.5 * info.claimed_duration:
        return TaskResult(
            "decode_error",
            f"truncated or corrupt: the container says {info.claimed_duration:.2f} s but only {info.n_frames} frames ({info.duration:.2f} s) are readable",
        )
    if info.n_frames < steps:
        return TaskResult("too_short", f"{info.n_frames} frames, fewer than the {steps} steps asked for")
    if info.duration > max_duration:
        return TaskResult("too_long", f"{info.duration:.1f} s, longer than max_duration {max_duration:.0f} s (a take of several clips?)")
    return None


# ---- faces -----------------------------------------------------------------------------------------------
def face_arrays(config: FaceConfig) -> dict[str, tuple[tuple[int, ...], str]]:
    t, s = config.frames, config.size
    return {
        "crops": ((t, s, s, 3), "uint8"),
        "middle": ((s, s, 3), "uint8"),
        "frame_index": ((t,), "int32"),
        "timestamps": ((t,), "float32"),
        "boxes": ((t, 4), "float32"),
        "prob": ((t,), "float32"),
        "found": ((t,), "bool"),
        "middle_box": ((4,), "float32"),
        "video_frames": ((), "int32"),
        "fps": ((), "float32"),
        "coverage": ((), "float32"),
        "faces_seen": ((), "int16"),
        "source": ((), "str"),
        **({"scene": ((t, s, s, 3), "uint8")} if config.scene else {}),  # each step's whole frame, letterboxed
    }


def face_params(config: FaceConfig) -> dict:
    return {"stage": "faces", "algorithm": config.VERSION, "detector": detector_weights_hash(), "cascade": CASCADE, "key_schedule": KEY_SCHEDULE,
            "tracking": TRACKING, **dataclasses.asdict(config)}


def extract_faces(record: ClipRecord, config: FaceConfig, max_duration: float, device: str = "cpu", timeline=None,
                  timeout: float = FFMPEG_TIMEOUT_S) -> TaskResult:
    """`timeline` is probe_timeline's answer when the caller has it already (one open per clip).

    `ok` only when at least `config.min_coverage` of the T crops hold a verified face (`found`: detected, or
    between two linked detections of one shot); otherwise `face_lost`, crops kept for inspection. Steps
    without a verified face have zero crops and NaN boxes."""
    if timeline is None:  # called alone: open the video here, and close it after
        timeline = probe_timeline(record, config.frames, max_duration, timeout)
        if isinstance(timeline, TaskResult):
            return timeline
        with timeline[0]:
            return extract_faces(record, config, max_duration, device, timeline, timeout)
    if isinstance(timeline, TaskResult):
        return timeline
    media, tl = timeline
    info = media.info
    try:
        frames = media.frames([*tl.frame_index.tolist(), tl.middle_index])
    except DecodeError as err:
        return TaskResult("decode_error", str(err))
    track = track_faces(frames[:-1], frames[-1], config, device)
    if track is None:
        return TaskResult("no_face", f"no face with probability >= {config.min_prob} in any of the key frames")
    seen = f"face in {int(track.found.sum())} of {config.frames} crops (coverage {track.coverage:.2f})"
    lost = track.coverage < config.min_coverage
    notes = [f"{seen}, below min_coverage {config.min_coverage:g}" if lost else ("" if track.found.all() else seen),
             f"{track.faces_seen} faces seen, the {config.policy} one followed" if track.faces_seen > 1 else "",
             f"{track.shots} shots" if track.shots > 1 else "", f"face re-acquired {track.reacquired}x" if track.reacquired else ""]
    return TaskResult(
        "face_lost" if lost else "ok",
        "; ".join(n for n in notes if n),
        {
            "crops": track.crops,
            "middle": track.middle,
            "frame_index": tl.frame_index,
            "timestamps": tl.timestamps,
            "boxes": track.boxes,
            "prob": track.prob,
            "found": track.found,
            "middle_box": track.middle_box,
            "video_frames": np.int32(info.n_frames),
            "fps": np.float32(info.fps),
            "coverage": np.float32(track.coverage),
            "faces_seen": np.int16(track.faces_seen),
            **({"scene": np.stack([letterbox(f, config.size) for f in frames[:-1]])} if config.scene else {}),
        },
    )


@functools.lru_cache(maxsize=1)
def detector_weights_hash() -> str:
    """MTCNN's weights are part of what makes the numbers: hash the files shipped in facenet-pytorch.

    The files are located, not imported: a run with nothing left to compute (a no-op re-run, a resume that only
    writes checksums) never needs torch."""
    import hashlib

    from pipeline.mtcnn import weights_dir

    digest = hashlib.sha256()
    for path in sorted(weights_dir().glob("*.pt")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---- audio -----------------------------------------------------------------------------------------------
def audio_arrays(config: MelConfig, steps: int, size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    return {
        "mel": ((config.n_mels, max_mel_frames(config)), "float16"),
        "mel_frames": ((), "int32"),
        "spec": ((size, size), "uint8"),
        "chunks": ((steps, size, size), "uint8"),
        "chunk_valid": ((steps,), "bool"),
        "spans": ((steps, 2), "float32"),
        "duration": ((), "float32"),
        "audio_offset": ((), "float32"),
        "source": ((), "str"),
    }


def audio_params(config: MelConfig, steps: int, size: int) -> dict:
    return {"stage": "audio", "algorithm": config.VERSION, "steps": steps, "size": size, **dataclasses.asdict(config)}


@functools.lru_cache(maxsize=2)
def mel_extractor(config: MelConfig) -> MelExtractor:
    """One filterbank per worker process and configuration."""
    return MelExtractor(config)


def decode_clip_audio(record: ClipRecord, config: MelConfig, timeline, timeout: float = FFMPEG_TIMEOUT_S) -> tuple[np.ndarray, float] | TaskResult:
    """The clip's audio at config.sample_rate, on the video's clock, and the shift applied (seconds); or the
    reason there is none. Decoded once per clip, from the container already open (`timeline` is
    probe_timeline's answer), and shared by the mel and the ComParE LLDs.

    An audio track of the video that starts late is padded with silence, one that starts early is cut
    (pipeline/clock.py). A separate audio file (CREMA-D's WAVs) is taken to start with the picture."""
    if isinstance(timeline, TaskResult):
        return timeline
    media, _ = timeline
    info = media.info
    source = record.audio_path or record.video_path
    if record.audio_path is None and not info.has_audio:
        return TaskResult("no_audio", "the video has no audio stream and no WAV was found")
    try:
        audio = media.audio(config.sample_rate) if record.audio_path is None else decode_audio(source, config.sample_rate, timeout)
    except DecodeError as err:
        return TaskResult("decode_error", str(err))
    offset = audio_offset(info.video_start, info.audio_start) if record.audio_path is None else 0.0
    audio = audio_on_video_clock(audio, config.sample_rate, offset)
    if audio.size == 0 or float(np.abs(audio).max()) < 1e-4:
        return TaskResult("no_audio", f"{source} holds no audible samples")
    return audio, offset


def extract_audio(record: ClipRecord, config: MelConfig, steps: int, size: int, timeline=None, timeout: float = FFMPEG_TIMEOUT_S,
                  decoded: tuple[np.ndarray, float] | TaskResult | None = None) -> TaskResult:
    """`timeline` is probe_timeline's answer when the caller has it already (one open per clip); `decoded`
    is decode_clip_audio's, when the caller decoded the audio already (for the LLDs too)."""
    if timeline is None:  # called alone: open the video here, and close it after
        timeline = probe_timeline(record, steps, config.max_duration, timeout)
        if isinstance(timeline, TaskResult):
            return timeline
        with timeline[0]:
            return extract_audio(record, config, steps, size, timeline, timeout, decoded)
    if isinstance(timeline, TaskResult):
        return timeline
    _, tl = timeline
    decoded = decoded if decoded is not None else decode_clip_audio(record, config, timeline, timeout)
    if isinstance(decoded, TaskResult):
        return decoded
    audio, offset = decoded
    log_mel = mel_extractor(config).log_mel(audio)
    chunks, valid = chunk_images(log_mel, tl.spans, config, size)
    mel = np.full((config.n_mels, max_mel_frames(config)), -config.top_db, np.float16)
    n = min(log_mel.shape[1], mel.shape[1])
    mel[:, :n] = log_mel[:, :n]
    return TaskResult(
        "ok",
        "" if valid.all() else f"audio ends before the video: {int((~valid).sum())} of {steps} chunks are silence",
        {
            "mel": mel,
            "mel_frames": np.int32(n),
            "spec": spectrogram_image(log_mel, size, config.top_db),
            "chunks": chunks,
            "chunk_valid": valid,
            "spans": tl.spans,
            "duration": np.float32(audio.size / config.sample_rate),
            "audio_offset": np.float32(offset),
        },
    )


# ---- ComParE LLDs (seed 002) -------------------------------------------------------------------------------
def lld_arrays(config: LldConfig, mel: MelConfig, steps: int) -> dict[str, tuple[tuple[int, ...], str]]:
    f = max_lld_frames(config, mel.max_duration)
    return {
        "lld": ((f, N_FEATURES), "float32"),  # valid up to lld_frames
        "lld_frames": ((), "int32"),
        "lld_times": ((f, 2), "float32"),  # [start, end) of each frame on the video's clock, as openSMILE gives them
        "pooled": ((steps, N_FEATURES), "float32"),  # mean over the frames of each face step's span (as the mel chunks)
        "pooled_valid": ((steps,), "bool"),
        "spans": ((steps, 2), "float32"),
        "source": ((), "str"),
    }


def lld_params(config: LldConfig, mel: MelConfig, steps: int) -> dict:
    """The decoded audio's rate matters (it is resampled from it), and so does the opensmile graph."""
    import opensmile

    return {"stage": "lld", "algorithm": config.VERSION, "steps": steps, "decoded_rate": mel.sample_rate,
            "max_duration": mel.max_duration, "opensmile": opensmile.__version__, "config_sha256": compare_config_hash(config),
            **dataclasses.asdict(config)}


def extract_lld(decoded: tuple[np.ndarray, float] | TaskResult, timeline, config: LldConfig, mel: MelConfig) -> TaskResult:
    """The LLD sequence of the already decoded audio (decode_clip_audio's answer), and its pooling to the T spans."""
    if isinstance(timeline, TaskResult):
        return timeline
    if isinstance(decoded, TaskResult):
        return decoded
    _, tl = timeline
    audio, _ = decoded
    result = compare_llds(audio, mel.sample_rate, config)
    f = max_lld_frames(config, mel.max_duration)
    n = min(len(result.features), f)
    lld = np.zeros((f, N_FEATURES), np.float32)
    times = np.zeros((f, 2), np.float32)
    lld[:n], times[:n] = result.features[:n], result.times[:n]
    pooled, valid = pool_to_spans(result.features, result.times, tl.spans, config)
    if n == 0:
        return TaskResult("no_audio", "too short for one ComParE frame")
    return TaskResult(
        "ok",
        "" if valid.all() else f"audio ends before the video: {int((~valid).sum())} of {len(valid)} pooled steps are empty",
        {"lld": lld, "lld_frames": np.int32(n), "lld_times": times, "pooled": pooled, "pooled_valid": valid, "spans": tl.spans},
    )


# ---- fusions ---------------------------------------------------------------------------------------------
FUSION_BASE_VERSION = 3
"""The fusions' share of the one global version every stage once had (3); frozen, so that fusion sets keep the
fingerprints of the stores made before. A change to one fusion bumps that fusion's own version (FusionSpec.version);
a change to what every fusion shares (ClipInputs, fuse_clip) bumps this."""


def fusion_params(name: str, faces_fingerprint: str, audio_fingerprint: str, seed: int) -> dict:
    """A fusion's own version joins the fingerprint once it is past 1 (pipeline/fuse.py FusionSpec.version): a fusion
    whose numbers changed is recomputed, and the others keep the fingerprints of the stores made before."""
    params = {"stage": "fusion", "fusion": name, "faces": faces_fingerprint, "audio": audio_fingerprint, "seed": seed,
              "algorithm": FUSION_BASE_VERSION}
    version = get_fusion(name).version
    return params if version == 1 else {**params, "fusion_version": version}


def fuse_clip(name: str, faces: dict[str, np.ndarray], audio: dict[str, np.ndarray], clip_id: str, seed: int) -> dict[str, np.ndarray]:
    """Every array of fusion `name` for one clip: the writer keeps those its feature set holds (a set made before
    issue 24 also holds the concat video, which new sets build on read: pipeline/fuse.py stored_arrays)."""
    return fuse(name, faces=faces["crops"], middle=faces["middle"], spec=audio["spec"], chunks=audio["chunks"], clip_id=clip_id, seed=seed)


__all__ = [
    "TaskResult", "clip_timeline", "extract_faces", "extract_audio", "decode_clip_audio", "extract_lld", "lld_arrays", "lld_params", "face_arrays", "audio_arrays",
    "face_params", "audio_params", "fusion_params", "fuse_clip", "fusion_arrays", "stored_arrays", "read_notes", "STATUSES", "MEDIA_STATUSES",
]
