"""A small synthetic corpus laid out exactly like CREMA-D, whose emotions can really be learned.

The real CREMA-D (7442 clips, 91 actors) is too big for tests and can't be shipped. This module writes a
stand-in with the same folders, file names and file formats, so every stage of the pipeline (naming
parser, ffmpeg decoding, MTCNN face detection, audio features, the Zarr store, training) runs on it
unchanged:

    out/VideoFlash/<Actor>_<Sentence>_<Emotion>_<Level>.flv   Flash video (flv1), 480x360, 30 fps,
                                                              2-3 s, mp3 audio track
    out/AudioWAV/<same>.wav                                   16 kHz mono int16, the same sound
    out/SAMPLE.json                                           the parameters and the broken clips
    out/tabulatedVotes.csv                                    generated raters' votes, in CREMA-D's format

Why it looks the way it does:

* Faces must be found by a real detector, so the face is a real photograph (`skimage.data.astronaut`,
  which ships inside scikit-image), not a drawn cartoon. Each actor gets its own background, face size,
  position, colour tint and possibly a mirror image, so a model can't simply memorise pixels.
* Each modality carries the label on its own, so audio-only, vision-only and fused models can all learn:
  the face has an emotion-specific mouth and eyebrow overlay (large enough to survive a 64x64 face crop,
  mild enough for MTCNN to keep finding the face), and the voice is a harmonic tone whose pitch rises
  with the emotion index and whose loudness follows an emotion-specific contour.
* Everything is a pure function of `seed` and the clip's name, and ffmpeg runs with bit-exact flags on
  one thread, so one seed always gives the same bytes: stores built from it can be compared by hash.
* Raters' votes (CREMA-D's `tabulatedVotes.csv`, so perceived-emotion targets run offline) follow a known rule:
  each clip gets 6-12 raters per modality (voice, face, av); each rater names the intended emotion with
  probability VOTE_ACCURACY[modality] (0.40 / 0.58 / 0.64, CREMA-D's own rates), its look-alike
  (VOTE_CONFUSION: ANG<->DIS, FEA<->SAD, HAP<->NEU) with probability VOTE_CONFUSABLE, and any of the other four
  emotions with equal shares of the rest. So the expected raters' accuracy against the intended emotion is
  VOTE_ACCURACY, and the majority is now and then the look-alike, more often for the voice. The votes come from
  their own random stream: the media bytes are those of a corpus without votes.
* `with_broken=True` adds four clips that each trigger one of the failures the pipeline must survive
  (CREMA-D itself has a few such clips): a file cut short, a missing audio track, no face, too short.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import skimage.data

from pipeline.corpora.base import CorpusError
from pipeline.media import ffmpeg_exe
from pipeline.records import CREMA_D_EMOTIONS, VOTE_MODALITIES
from pipeline.votes import write_tabulated_votes

SENTENCES: tuple[str, ...] = (
    "IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI",
)  # fmt: skip
"""CREMA-D's twelve sentence codes, in the order the corpus takes them."""

FRAME_WIDTH, FRAME_HEIGHT, FPS = 480, 360, 30
WAV_RATE = 16_000
FLV_AUDIO_RATE = 44_100
FIRST_ACTOR = 1001
FLV_QUALITY = 5
"""ffmpeg's -q:v for the flv encoder: sharp enough that the mouth cue survives, ~100 kB per clip."""

ACTOR_LOOK, DURATION, CONTENT, VOTES = 1, 2, 3, 4
"""What a random stream is for: each purpose gets its own, so changing one never shifts another."""

BROKEN_ACTOR, BROKEN_SENTENCE = 0, SENTENCES.index("WSI")
BROKEN_CLIPS: tuple[tuple[str, str], ...] = (
    ("ANG", "decode_error"),
    ("DIS", "no_audio"),
    ("FEA", "no_face"),
    ("HAP", "too_short"),
)
"""(emotion, expected failure) of the broken clips; all are actor 1001 saying WSI."""
TRUNCATED_FRACTION = 0.25
TOO_SHORT_FRAMES = 9

# Where things are in the astronaut photograph (512x512); points are (x, y) as cv2 wants them.
HEAD_ROWS, HEAD_COLS = (10, 250), (145, 310)
"""The head-and-neck crop that gets pasted into every frame."""
HAIR_TOP_ROW, CHIN_ROW = 17, 180
"""What "face height" means when an actor's face size is chosen."""
HEAD_OUTLINE = (
    (230, 17), (265, 22), (285, 40), (297, 65), (300, 90), (295, 110), (279, 125), (272, 135),
    (268, 150), (266, 170), (278, 180), (290, 205), (288, 228), (260, 242), (228, 246), (196, 242),
    (164, 228), (160, 205), (174, 182), (188, 170), (184, 150), (179, 133), (165, 120), (155, 100),
    (155, 75), (168, 50), (188, 30), (205, 20),
)  # fmt: skip
"""Hair, face, neck and collar traced by hand: the part of the photograph without its wall."""
MOUTH_CENTRE = (224, 145)
LEFT_BROW_CENTRE, RIGHT_BROW_CENTRE = (202, 92), (248, 92)


VOTE_ACCURACY: dict[str, float] = {"voice": 0.40, "face": 0.58, "av": 0.64}
VOTE_CONFUSABLE = 0.25
VOTE_CONFUSION: dict[str, str] = {"ANG": "DIS", "DIS": "ANG", "FEA": "SAD", "SAD": "FEA", "HAP": "NEU", "NEU": "HAP"}
VOTE_RATERS = (6, 12)
"""Raters per clip and modality, drawn uniformly between these (inclusive)."""


@dataclass(frozen=True)
class FaceCue:
    """How one emotion changes the face: a mouth ellipse and two eyebrows (sizes in photograph pixels)."""

    mouth_half_axes: tuple[int, int]
    mouth_angle: float
    mouth_rgb: tuple[int, int, int]
    brow_lift: int
    brow_tilt: float
    brow_rgb: tuple[int, int, int]


FACE_CUES: dict[str, FaceCue] = {
    "ANG": FaceCue((21, 7), 0, (130, 20, 30), -4, -15, (45, 30, 25)),  # pressed dark-red lips, lowered brows
    "DIS": FaceCue((19, 8), 12, (115, 130, 60), -2, -8, (70, 60, 40)),  # skewed sallow mouth
    "FEA": FaceCue((14, 13), 0, (55, 25, 35), 6, 10, (90, 70, 50)),  # open round mouth, raised brows
    "HAP": FaceCue((23, 9), 0, (240, 232, 220), 1, 0, (110, 85, 60)),  # wide toothy smile
    "NEU": FaceCue((19, 7), 0, (205, 125, 120), 0, 0, (110, 85, 60)),  # plain pink lips, plain brows
    "SAD": FaceCue((17, 8), 0, (90, 95, 165), 3, 18, (80, 65, 50)),  # small pale-blue mouth, slanted brows
}
CUE_OPACITY = 0.8


@dataclass(frozen=True)
class ClipSpec:
    """One clip to write: who says what with which emotion, for how long, and which defect it gets."""

    clip_id: str
    actor: int
    sentence: int
    emotion: int
    n_frames: int
    defect: str = ""


@dataclass(frozen=True)
class FacePatch:
    """A face ready to paste: colour already multiplied by opacity, plus what shows through from behind."""

    premultiplied: np.ndarray  # (h, w, 3) float32
    see_through: np.ndarray  # (h, w, 1) float32, 1 - opacity


@dataclass(frozen=True)
class ActorLook:
    """Everything that makes one actor look and sound unlike the others (fixed by seed and actor)."""

    background: np.ndarray  # (FRAME_HEIGHT, FRAME_WIDTH, 3) uint8
    faces: tuple[FacePatch, ...]  # one per emotion, in CREMA_D_EMOTIONS order
    face_left: int
    face_top: int
    pitch_offset_hz: float
    loudness: float


def make_sample(out: Path, *, actors: int, sentences: int, seed: int, with_broken: bool) -> None:
    """`cli.py sample`: write the corpus into `out`, which must be new or empty (nothing is overwritten)."""
    if out.exists() and any(out.iterdir()):
        raise CorpusError(f"'{out}' exists and is not empty; choose a new --out folder or delete it")
    ids = write_sample_corpus(out, actors=actors, sentences=sentences, seed=seed, with_broken=with_broken)
    print(f"wrote {len(ids)} clips to {out}")


def write_sample_corpus(
    out: Path, *, actors: int = 8, sentences: int = 2, seed: int = 0, with_broken: bool = False
) -> list[str]:
    """Write the corpus under `out` and return the sorted ids of all clips written, broken ones included.

    Every actor says the first `sentences` CREMA-D sentences with each of the six emotions, so the
    defaults give 8 * 2 * 6 = 96 clips. Existing files of the same names are overwritten; nothing else in
    `out` is touched. The same `seed` always yields byte-identical files.
    """
    if not 1 <= actors <= 9999 - FIRST_ACTOR + 1:
        raise ValueError(f"actors must be between 1 and {9999 - FIRST_ACTOR + 1} (4-digit ids), got {actors}")
    if not 1 <= sentences <= len(SENTENCES):
        raise ValueError(f"sentences must be between 1 and {len(SENTENCES)}, got {sentences}")
    if with_broken and sentences == len(SENTENCES):
        raise ValueError("with_broken needs sentences < 12: the broken clips use sentence WSI")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    out = Path(out)
    (out / "VideoFlash").mkdir(parents=True, exist_ok=True)
    (out / "AudioWAV").mkdir(parents=True, exist_ok=True)
    specs = _clip_specs(actors, sentences, seed, with_broken)
    looks = {a: _actor_look(seed, a) for a in sorted({spec.actor for spec in specs})}
    with tempfile.TemporaryDirectory(dir=out, prefix=".sample-") as scratch:
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda spec: _write_clip(out, Path(scratch), spec, looks[spec.actor], seed), specs))
    _write_manifest(out, actors, sentences, seed, with_broken, specs)
    write_tabulated_votes(out / "tabulatedVotes.csv", {spec.clip_id: sample_votes(spec, seed) for spec in specs})
    return sorted(spec.clip_id for spec in specs)


# ---------------------------------------------------------------------------------------------- plan


def clip_id(actor: int, sentence: int, emotion: int) -> str:
    """CREMA-D's name for a clip; the level is HI for IEO and XX for every other sentence, as in CREMA-D."""
    code = SENTENCES[sentence]
    level = "HI" if code == "IEO" else "XX"
    return f"{FIRST_ACTOR + actor}_{code}_{CREMA_D_EMOTIONS[emotion]}_{level}"


def _clip_specs(actors: int, sentences: int, seed: int, with_broken: bool) -> list[ClipSpec]:
    """All clips, each with a duration of 2-3 s drawn from its own seeded generator."""
    specs = []
    for actor in range(actors):
        for sentence in range(sentences):
            for emotion in range(len(CREMA_D_EMOTIONS)):
                duration_rng = _clip_rng(seed, actor, sentence, emotion, purpose=DURATION)
                n_frames = int(duration_rng.integers(2 * FPS, 3 * FPS + 1))
                specs.append(ClipSpec(clip_id(actor, sentence, emotion), actor, sentence, emotion, n_frames))
    if with_broken:
        for emotion_name, defect in BROKEN_CLIPS:
            emotion = CREMA_D_EMOTIONS.index(emotion_name)
            n_frames = TOO_SHORT_FRAMES if defect == "too_short" else int(2.5 * FPS)
            name = clip_id(BROKEN_ACTOR, BROKEN_SENTENCE, emotion)
            specs.append(ClipSpec(name, BROKEN_ACTOR, BROKEN_SENTENCE, emotion, n_frames, defect))
    return specs


def _clip_rng(
    seed: int, actor: int, sentence: int, emotion: int, *, purpose: int, defect: str = ""
) -> np.random.Generator:
    """A generator owned by one clip, so its content doesn't depend on which clips come before it."""
    defect_code = 1 + [d for _, d in BROKEN_CLIPS].index(defect) if defect else 0
    return np.random.default_rng([seed, purpose, actor, sentence, emotion, defect_code])


def vote_probabilities(emotion: int, modality: str) -> np.ndarray:
    """What one rater of `modality` names for a clip of intended `emotion`: a distribution over the six emotions."""
    name = CREMA_D_EMOTIONS[emotion]
    alike = CREMA_D_EMOTIONS.index(VOTE_CONFUSION[name])
    rest = (1.0 - VOTE_ACCURACY[modality] - VOTE_CONFUSABLE) / (len(CREMA_D_EMOTIONS) - 2)
    p = np.full(len(CREMA_D_EMOTIONS), rest)
    p[emotion], p[alike] = VOTE_ACCURACY[modality], VOTE_CONFUSABLE
    return p


def sample_votes(spec: ClipSpec, seed: int) -> dict[str, list[int]]:
    """One clip's votes per modality, from the clip's own VOTES stream (the rule of the module docstring)."""
    rng = _clip_rng(seed, spec.actor, spec.sentence, spec.emotion, purpose=VOTES, defect=spec.defect)
    votes = {}
    for modality in VOTE_MODALITIES:
        raters = int(rng.integers(VOTE_RATERS[0], VOTE_RATERS[1] + 1))
        votes[modality] = rng.multinomial(raters, vote_probabilities(spec.emotion, modality)).tolist()
    return votes


def _write_manifest(
    out: Path, actors: int, sentences: int, seed: int, with_broken: bool, specs: list[ClipSpec]
) -> None:
    manifest = {
        "generator": "pipeline.corpora.sample.write_sample_corpus",
        "actors": actors,
        "sentences": sentences,
        "sentence_codes": list(SENTENCES[:sentences]),
        "seed": seed,
        "with_broken": with_broken,
        "broken": [{"id": spec.clip_id, "expect": spec.defect} for spec in specs if spec.defect],
    }
    (out / "SAMPLE.json").write_text(json.dumps(manifest, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- writing


def _write_clip(out: Path, scratch: Path, spec: ClipSpec, look: ActorLook, seed: int) -> None:
    """Synthesise one clip and write its FLV (and WAV), then damage it as its defect asks."""
    rng = _clip_rng(seed, spec.actor, spec.sentence, spec.emotion, purpose=CONTENT, defect=spec.defect)
    flv_path = out / "VideoFlash" / f"{spec.clip_id}.flv"
    wav_path = out / "AudioWAV" / f"{spec.clip_id}.wav"
    scratch_wav = scratch / f"{spec.clip_id}.wav"
    _write_wav(scratch_wav, _voice(spec, look, rng))
    frames = _frames(spec, look, rng)
    if spec.defect == "no_audio":
        _encode_flv(flv_path, frames, audio=None)
    else:
        _encode_flv(flv_path, frames, audio=scratch_wav)
    if spec.defect == "decode_error":
        _truncate(flv_path, TRUNCATED_FRACTION)
    if spec.defect in ("decode_error", "no_audio"):
        scratch_wav.unlink()
        wav_path.unlink(missing_ok=True)
    else:
        os.replace(scratch_wav, wav_path)


def _encode_flv(path: Path, frames: Iterator[np.ndarray], audio: Path | None) -> None:
    """One ffmpeg call: raw RGB frames on stdin (+ a WAV) -> flv1 video with an mp3 track, bit-exact."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    command += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{FRAME_WIDTH}x{FRAME_HEIGHT}", "-r", str(FPS)]
    command += ["-i", "-"]
    if audio is not None:
        command += ["-i", str(audio), "-map", "0:v:0", "-map", "1:a:0"]
        command += ["-c:a", "libmp3lame", "-ar", str(FLV_AUDIO_RATE), "-ac", "1", "-b:a", "64k"]
    else:
        command += ["-an"]
    command += ["-c:v", "flv", "-q:v", str(FLV_QUALITY), "-pix_fmt", "yuv420p"]
    command += ["-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact"]
    command += ["-threads", "1", "-map_metadata", "-1", "-f", "flv", str(path)]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None and process.stderr is not None
    try:
        for frame in frames:
            process.stdin.write(frame.tobytes())
        process.stdin.close()
    except BrokenPipeError:
        pass  # ffmpeg quit early; its exit status and message below say why
    message = process.stderr.read().decode(errors="replace").strip()
    if process.wait() != 0:
        raise RuntimeError(f"ffmpeg failed writing {path.name}: {message or 'no message'}")


def _write_wav(path: Path, samples: np.ndarray) -> None:
    """16 kHz mono int16, the format of CREMA-D's AudioWAV folder."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(WAV_RATE)
        wav.writeframes(pcm.tobytes())


def _truncate(path: Path, fraction: float) -> None:
    """Keep only the first `fraction` of the file's bytes, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ---------------------------------------------------------------------------------------------- actors


def _actor_look(seed: int, actor: int) -> ActorLook:
    """Draw one actor's appearance and voice from a generator seeded by (seed, actor)."""
    rng = np.random.default_rng([seed, ACTOR_LOOK, actor])
    face_height = rng.uniform(140, 200)
    scale = face_height / (CHIN_ROW - HAIR_TOP_ROW)
    tint = rng.uniform(0.88, 1.12, size=3)
    mirrored = bool(rng.integers(2))
    faces = tuple(_face_patch(emotion, scale, tint, mirrored) for emotion in range(len(CREMA_D_EMOTIONS)))
    patch_height, patch_width = faces[0].see_through.shape[:2]
    margin = 8  # room for the head motion
    face_left = int(rng.integers(margin, FRAME_WIDTH - patch_width - margin + 1))
    face_top = int(rng.integers(margin, max(margin, FRAME_HEIGHT - patch_height - margin) + 1))
    return ActorLook(
        background=_background(rng),
        faces=faces,
        face_left=face_left,
        face_top=face_top,
        pitch_offset_hz=float(rng.uniform(-8, 8)),
        loudness=float(rng.uniform(0.8, 1.0)),
    )


def _background(rng: np.random.Generator) -> np.ndarray:
    """A studio-like backdrop: a base colour, a soft gradient, blotchy low-frequency texture and grain."""
    base = rng.uniform(50, 200) + rng.normal(0, 25, size=3)  # a grey level, somewhat coloured
    rows = np.linspace(-1, 1, FRAME_HEIGHT, dtype=np.float32)[:, None, None]
    gradient = rows * rng.uniform(-30, 30, size=3)
    shade = rng.normal(0, 14, size=(6, 8, 1)) + rng.normal(0, 4, size=(6, 8, 3))  # mostly grey blotches
    blotches = cv2.resize(shade.astype(np.float32), (FRAME_WIDTH, FRAME_HEIGHT), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 3, size=(FRAME_HEIGHT, FRAME_WIDTH, 3))
    return np.clip(base + gradient + blotches + grain, 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def _photograph() -> np.ndarray:
    return skimage.data.astronaut()


def _face_patch(emotion: int, scale: float, tint: np.ndarray, mirrored: bool) -> FacePatch:
    """The head crop with the emotion drawn on, tinted, mirrored and scaled, with soft edges."""
    (top, bottom), (left, right) = HEAD_ROWS, HEAD_COLS
    head = _photograph()[top:bottom, left:right].astype(np.float32)
    head = _draw_emotion_cue(head, FACE_CUES[CREMA_D_EMOTIONS[emotion]], origin=(left, top))
    head = np.clip(head * tint, 0, 255)
    opacity = _head_opacity()[top:bottom, left:right]
    if mirrored:
        head, opacity = head[:, ::-1], opacity[:, ::-1]
    size = (round(head.shape[1] * scale), round(head.shape[0] * scale))
    head = cv2.resize(np.ascontiguousarray(head), size, interpolation=cv2.INTER_AREA)
    opacity = cv2.resize(np.ascontiguousarray(opacity), size, interpolation=cv2.INTER_AREA)[:, :, None]
    return FacePatch(premultiplied=head * opacity, see_through=1.0 - opacity)


@lru_cache(maxsize=1)
def _head_opacity() -> np.ndarray:
    """Opacity over the photograph: 1 on head and neck, fading to 0 so the photo's own wall disappears."""
    mask = np.zeros(_photograph().shape[:2], np.float32)
    cv2.fillPoly(mask, [np.array(HEAD_OUTLINE, np.int32)], 1.0)
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=1.5)


def _draw_emotion_cue(head: np.ndarray, cue: FaceCue, origin: tuple[int, int]) -> np.ndarray:
    """Blend a mouth ellipse and two eyebrow strokes onto the head crop (float RGB, photograph scale)."""
    paint = head.copy()
    coverage = np.zeros(head.shape[:2], np.float32)

    def point(xy: tuple[int, int], lift: int = 0) -> tuple[int, int]:
        return xy[0] - origin[0], xy[1] - origin[1] - lift

    mouth = point(MOUTH_CENTRE)
    cv2.ellipse(paint, mouth, cue.mouth_half_axes, cue.mouth_angle, 0, 360, cue.mouth_rgb, -1)
    cv2.ellipse(coverage, mouth, cue.mouth_half_axes, cue.mouth_angle, 0, 360, 1.0, -1)
    for brow, tilt in ((LEFT_BROW_CENTRE, cue.brow_tilt), (RIGHT_BROW_CENTRE, -cue.brow_tilt)):
        centre = point(brow, cue.brow_lift)
        cv2.ellipse(paint, centre, (13, 3), -tilt, 0, 360, cue.brow_rgb, -1)
        cv2.ellipse(coverage, centre, (13, 3), -tilt, 0, 360, 1.0, -1)
    coverage = CUE_OPACITY * cv2.GaussianBlur(coverage, (0, 0), sigmaX=1.5)[:, :, None]
    return head * (1 - coverage) + paint * coverage


# ---------------------------------------------------------------------------------------------- video


def _frames(spec: ClipSpec, look: ActorLook, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """The clip's RGB frames: the actor's face drifting a few pixels over the backdrop.

    The no-face clip shows the backdrop with faint moving noise instead, so frames still differ.
    """
    if spec.defect == "no_face":
        yield from _empty_frames(spec.n_frames, look.background, rng)
        return
    face = look.faces[spec.emotion]
    height, width = face.see_through.shape[:2]
    seconds = np.arange(spec.n_frames) / FPS
    amplitude = rng.uniform(2, 5, size=2)
    frequency = rng.uniform(0.3, 0.7, size=2)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    dx = np.round(amplitude[0] * np.sin(2 * np.pi * frequency[0] * seconds + phase[0])).astype(int)
    dy = np.round(amplitude[1] * np.sin(2 * np.pi * frequency[1] * seconds + phase[1])).astype(int)
    for shift_x, shift_y in zip(dx, dy):
        frame = look.background.copy()
        top, left = look.face_top + shift_y, look.face_left + shift_x
        behind = frame[top : top + height, left : left + width]
        behind[:] = (face.premultiplied + behind * face.see_through).astype(np.uint8)
        yield frame


def _empty_frames(n_frames: int, background: np.ndarray, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for _ in range(n_frames):
        noise = rng.normal(0, 6, size=background.shape)
        yield np.clip(background + noise, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- audio


def _voice(spec: ClipSpec, look: ActorLook, rng: np.random.Generator) -> np.ndarray:
    """The clip's sound at 16 kHz: a harmonic 'voice' between short silences, plus a little noise.

    The pitch is 110 + 35*k Hz for emotion k (plus the actor's offset), the loudness follows the
    emotion's contour, and syllable-like pulses at a sentence-dependent rate make it sound spoken.
    """
    n_samples = round(spec.n_frames * WAV_RATE / FPS)
    seconds = np.arange(n_samples) / WAV_RATE
    onset = rng.uniform(0.08, 0.18) * min(1.0, spec.n_frames / (2 * FPS))
    offset = seconds[-1] - rng.uniform(0.06, 0.15) * min(1.0, spec.n_frames / (2 * FPS))
    voiced = (seconds >= onset) & (seconds <= offset)
    progress = np.clip((seconds - onset) / max(offset - onset, 1e-3), 0, 1)

    f0 = 110 + 35 * spec.emotion + look.pitch_offset_hz
    drift = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * seconds + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(f0 * drift) / WAV_RATE
    weights = [1 / h**1.2 for h in range(1, 6)]  # falling like a voice's, so the fundamental dominates
    harmonics = sum(w * np.sin(h * phase) for h, w in enumerate(weights, start=1)) / sum(weights)

    syllable_rate = 3.2 + 0.25 * spec.sentence + rng.uniform(-0.2, 0.2)
    syllables = 0.35 + 0.65 * np.sin(np.pi * syllable_rate * (seconds - onset)) ** 2
    envelope = _energy_contour(spec.emotion, progress, seconds) * syllables * _soft_gate(voiced)
    noise = rng.normal(0, 0.015, n_samples)
    return (0.7 * look.loudness * envelope * harmonics + noise).astype(np.float32)


def _energy_contour(emotion: int, progress: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Loudness over the utterance (0..1) that tells the emotions apart even at equal pitch."""
    name = CREMA_D_EMOTIONS[emotion]
    if name == "ANG":  # rising
        return 0.35 + 0.65 * progress
    if name == "DIS":  # falling
        return 1.0 - 0.65 * progress
    if name == "FEA":  # trembling
        return 0.65 + 0.35 * np.sin(2 * np.pi * 7.0 * seconds)
    if name == "HAP":  # two bursts
        bursts = np.exp(-(((progress - 0.28) / 0.13) ** 2)) + np.exp(-(((progress - 0.72) / 0.13) ** 2))
        return 0.15 + 0.85 * np.minimum(bursts, 1.0)
    if name == "NEU":  # flat
        return np.full_like(progress, 0.55)
    return 0.25 + 0.45 * np.sin(np.pi * progress)  # SAD: one soft swell


def _soft_gate(voiced: np.ndarray) -> np.ndarray:
    """The voiced mask with 30 ms raised-cosine edges, so the tone starts and stops without clicks."""
    ramp = int(0.03 * WAV_RATE)
    window = np.hanning(2 * ramp + 1)
    return np.convolve(voiced.astype(np.float64), window / window.sum(), mode="same")
