"""Face crops: MTCNN on a few downscaled key frames, one face followed through the clip, square crops.

Why this shape: MTCNN is the cost that dominates preprocessing (about 25 full frames per second on a
2-thread CPU process), and faces in acted clips barely move. So the detector sees first only
`first_keys` (3) evenly spaced frames, the middle frame standing in for the step beside it (KEY_SCHEDULE),
downscaled to `detect_width`, in one batch, looking only
for faces of at least `min_face_fraction` of the frame (its pyramid starts there); only when those leave
doubt (a miss, a detection below `sure_prob`, two faces, boxes that disagree) does it also see every
`detect_every`-th frame, and where the face's track breaks (a cut, a face that moved or left) every step around
the break (pipeline/tracking.py). The box of every other frame is interpolated between key frames. The seed code fed BGR frames to
MTCNN and neither clamped nor padded its boxes (SPEC defect 6): frames here are RGB from ffmpeg, and every
crop is a square around the face with a margin, clamped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import cv2
import numpy as np

from pipeline.mtcnn import detect_faces, load_nets
from pipeline.numeric import pinned, single_threaded
from pipeline.tracking import FACE_POLICIES, MIN_LINK_IOU, Path, follow, iou, shot_at, shot_of_steps, uncertain_gaps

__all__ = ["FaceConfig", "FaceTrack", "MIN_LINK_IOU", "iou", "track_faces", "detect", "crop", "letterbox", "confirmed_steps"]


@dataclass(frozen=True)
class FaceConfig:
    """Defaults follow the comparison study: T=16 frames (3D recipe), 224x224 crops."""

    VERSION: ClassVar[int] = 3
    """Bump by hand when a change to the face code changes its numbers: part of the faces fingerprint only
    (pipeline/extract.py face_params). 3: the global version every stage shared until each had its own."""

    frames: int = 16
    size: int = 224
    margin: float = 0.2  # added on each side, as a fraction of the face box's longer side
    detect_every: int = 4  # key frames: every 4th of the T frames, plus the last and the middle frame
    detect_width: int = 320  # frames are downscaled to this width for detection
    min_face: int = 40  # smallest face MTCNN looks for, in pixels of the original frame
    min_face_fraction: float = 0.15  # ... and at least this fraction of the frame's shorter side (0: min_face alone)
    first_keys: int = 3  # detect on this many evenly spaced steps first; all detect_every keys only when in doubt (0: always)
    sure_prob: float = 0.98  # a first-pass detection below this probability is a doubt
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN's three stages (facenet-pytorch defaults)
    min_prob: float = 0.90  # a detection below this probability counts as no face
    min_coverage: float = 0.8  # below this fraction of the T crops holding a verified face, a clip is `face_lost`
    policy: str = "largest"  # which face to follow, and to pick again when it is lost: pipeline/tracking.py FACE_POLICIES
    scene: bool = False  # also store each step's whole frame, letterboxed to size x size (`scene`): the context of the face


CASCADE = "pipeline/mtcnn.py: integral-image area resampling, channels-last nets"
"""Which implementation of MTCNN's cascade made the boxes; part of the faces fingerprint. Its boxes equal
facenet-pytorch's `MTCNN.detect` to within float rounding, and it takes ~75 instead of ~120 ms per 4 frames
(pipeline/mtcnn.py says why). Stores made before it (facenet-pytorch's own `detect`, "nets channels-last, frames
NCHW") are re-detected on the next run: a box's last decimals could move a crop by a pixel."""


def key_frames(n_steps: int, detect_every: int) -> list[int]:
    """Indices among the T steps where the detector runs: 0, k, 2k, ... and the last step."""
    keys = list(range(0, n_steps, max(1, detect_every)))
    if keys[-1] != n_steps - 1:
        keys.append(n_steps - 1)
    return keys


def detect(frames: np.ndarray, config: FaceConfig, device: str = "cpu") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes (x1, y1, x2, y2 in original pixels) and probabilities per frame, from one batched MTCNN call."""
    height, width = frames.shape[1:3]
    scale = min(1.0, config.detect_width / width)
    small = np.stack([cv2.resize(f, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) for f in frames]) if scale < 1 else frames
    min_face = max(config.min_face, config.min_face_fraction * min(height, width))  # the expected face size sets the pyramid
    nets = load_nets(device)
    with single_threaded():  # entered after load_nets imported torch, so torch's threads are pinned too
        found = detect_faces(small, nets, max(12, round(min_face * scale)), config.thresholds)
    return [boxes.astype(np.float32) / scale for boxes, _ in found], [probs.astype(np.float32) for _, probs in found]


def interpolate_boxes(key_steps: list[float], key_boxes: np.ndarray, n_steps: int, at: list[float] | None = None) -> np.ndarray:
    """Linear interpolation of each box coordinate at the T steps (or at positions `at`) between the keys that
    saw the face; held constant beyond the ends."""
    seen = ~np.isnan(key_boxes[:, 0])
    steps = np.asarray(key_steps, np.float64)[seen]
    where = np.arange(n_steps) if at is None else np.asarray(at, np.float64)
    return np.stack([np.interp(where, steps, key_boxes[seen, c]) for c in range(4)], axis=1).astype(np.float32)


def square_crop_box(box: np.ndarray, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A square around the face's centre, side = longer box side x (1 + 2 margin), shifted to lie inside
    the frame (and shrunk only if the frame is smaller than the square)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = min(max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin), width, height)
    x1 = int(round(np.clip(cx - side / 2, 0, width - side)))
    y1 = int(round(np.clip(cy - side / 2, 0, height - side)))
    side = int(round(side))
    return x1, y1, min(x1 + side, width), min(y1 + side, height)


def letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    """The whole frame scaled to fit size x size, centred between black bars: the scene around the face, its
    aspect kept (a model sees the shot as it was framed, not stretched)."""
    height, width = frame.shape[:2]
    scale = size / max(height, width)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - h) // 2, (size - w) // 2
    out[top : top + h, left : left + w] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    return out


def crop(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    x1, y1, x2, y2 = square_crop_box(box, margin, frame.shape[1], frame.shape[0])
    return cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=cv2.INTER_AREA)


@dataclass
class FaceTrack:
    crops: np.ndarray  # (T, size, size, 3) uint8; zeros where `found` is False
    middle: np.ndarray  # (size, size, 3) uint8, the 2D recipe's middle-frame face (see track_faces)
    boxes: np.ndarray  # (T, 4) float32, the box each crop was cut around (before margin); NaN where `found` is False
    prob: np.ndarray  # (T,) float32, detection probability at the step or at the nearest detection; 0 where not found
    found: np.ndarray  # (T,) bool, the step's crop holds a verified face: detected there, or between two linked detections
    middle_box: np.ndarray  # (4,) float32
    faces_seen: int = 1  # the most confident faces in any one key frame (the followed one and others)
    keys: tuple[float, ...] = ()  # where MTCNN ran, on the steps' axis (the middle frame at (T - 1) / 2)
    reacquired: int = 0  # how often the followed face was picked again after it was lost (a cut, a face that left)
    shots: int = 1  # shots found among the step frames (pipeline/tracking.py CUT_DISTANCE)

    @property
    def coverage(self) -> float:
        """Fraction of the T crops holding a verified face (`found`)."""
        return float(self.found.mean())


@pinned  # MTCNN's convolutions round differently with more torch threads (pipeline/numeric.py)
def track_faces(steps: np.ndarray, middle: np.ndarray, config: FaceConfig, device: str = "cpu") -> FaceTrack | None:
    """Crops for the T step frames (T, H, W, 3) and the middle frame; None when no face is found at all.

    The middle frame is a key frame in its own place among the steps (KEY_SCHEDULE): detection there gives the
    middle crop its box and stands in for an inner step next to it, so the first pass detects on 3 frames, not 4.
    The first and last steps are always detected: the face's path is only confirmed between two sightings.

    TRACKING: the step frames are cut into shots first (colour histograms, free beside decoding). A studio clip
    (one shot, one face that stays put) is done after the first pass. Otherwise every `detect_every`-th step and
    the first and last step of every shot are detected too, and then every step between two detections where the
    followed face's path is not plain (pipeline/tracking.py uncertain_gaps). The followed face is re-acquired by
    `config.policy` whenever its tracklet ends. A step's crop is cut around a detection at that step, or a box
    interpolated between two detections of the same tracklet on either side of it (never across a cut); every
    other step is not `found` and its crop is zeros. The middle crop is the middle frame's when the face is
    verified there, else the crop of the nearest step that holds it."""
    if config.policy not in FACE_POLICIES:
        raise ValueError(f"unknown face policy '{config.policy}'; choose one of {', '.join(FACE_POLICIES)}")
    n_steps = len(steps)
    middle_at = middle_position(n_steps)
    shots, histograms = shot_of_steps(steps)
    shot_of = {float(k): int(shots[k]) for k in range(n_steps)} | {middle_at: shot_at(middle_at, shots, histograms, middle)}
    if config.first_keys:
        first = [k for k in first_keys(n_steps, config.first_keys) if k in (0, n_steps - 1) or abs(k - middle_at) >= 1]
    else:
        first = key_frames(n_steps, config.detect_every)
    boxes, probs = detect(np.concatenate([steps[first], middle[None]]), config, device)
    found = dict(zip([*first, middle_at], zip(boxes, probs)))  # position on the steps' axis -> (boxes, probs)
    path = follow_keys(found, shot_of, config, steps.shape[2], steps.shape[1])
    cut = shots[-1] > 0
    if cut or (config.first_keys and in_doubt(path.boxes, path.probs, [found[p][1] for p in path.positions], config)):  # all key frames
        shot_ends = [k for k in range(n_steps) if k in (0, n_steps - 1) or shots[k] != shots[k - 1] or shots[k] != shots[k + 1]]
        rest = sorted({*key_frames(n_steps, config.detect_every), *shot_ends} - set(found))
        if rest:
            found |= dict(zip(rest, zip(*detect(steps[rest], config, device))))
            path = follow_keys(found, shot_of, config, steps.shape[2], steps.shape[1])
        rest = uncertain_gaps(path, found, shot_of, config.min_prob, n_steps)  # the track broke: detect the steps between
        if rest:
            found |= dict(zip(rest, zip(*detect(steps[rest], config, device))))
            path = follow_keys(found, shot_of, config, steps.shape[2], steps.shape[1])
    positions, key_boxes, key_probs, seen = path.positions, path.boxes, path.probs, path.seen
    if not seen.any():
        return None
    verified = confirmed_steps(positions, seen, n_steps, path.linked())
    all_boxes = interpolate_boxes(positions, key_boxes, n_steps)  # between two linked detections: their line
    all_boxes[~verified] = np.nan
    nearest = np.abs(np.arange(n_steps)[:, None] - np.asarray(positions)[None, :]).argmin(axis=1)
    crops = np.zeros((n_steps, config.size, config.size, 3), np.uint8)
    for k in np.flatnonzero(verified):
        crops[k] = crop(steps[k], all_boxes[k], config.margin, config.size)
    at_middle = positions.index(middle_at)
    if seen[at_middle] or between_linked(positions, path.linked(), middle_at):
        middle_box = key_boxes[at_middle] if seen[at_middle] else interpolate_boxes(positions, key_boxes, n_steps, [middle_at])[0]
        middle_crop = crop(middle, middle_box, config.margin, config.size)
    else:  # the face is not verified in the middle frame: the nearest step that holds it
        step = int(np.flatnonzero(verified)[np.argmin(np.abs(np.flatnonzero(verified) - middle_at))]) if verified.any() else None
        middle_box = all_boxes[step] if step is not None else np.full(4, np.nan, np.float32)
        middle_crop = crops[step] if step is not None else np.zeros((config.size, config.size, 3), np.uint8)
    return FaceTrack(
        crops=crops,
        middle=middle_crop,
        boxes=all_boxes,
        prob=np.where(verified, key_probs[nearest], 0).astype(np.float32),
        found=verified,
        middle_box=middle_box.astype(np.float32),
        faces_seen=max(int((p >= config.min_prob).sum()) for _, p in found.values()),
        keys=tuple(positions),
        reacquired=path.reacquired,
        shots=int(shots[-1]) + 1,
    )


def between_linked(positions: list[float], linked: np.ndarray, at: float) -> bool:
    """Whether `at` lies between two consecutive detected positions that hold the same tracklet of the face."""
    k = int(np.searchsorted(positions, at)) - 1
    return 0 <= k < len(linked) and bool(linked[k])


TRACKING = "shots, tracklets, re-acquired by policy; crops only where a face is verified"
"""Part of the faces fingerprint: before it, one face was followed by box overlap alone from the first key frame,
steps where it was lost kept its last box (cropping background), and a cut was not seen. Studio clips (one shot,
one face) give the same crops as before; the fingerprint changes so that stores made before are not reused."""


KEY_SCHEDULE = "middle frame a key in its place"
"""Part of the faces fingerprint: until this schedule the middle frame was detected as a fourth frame whose box
served the middle crop alone (and was linked after the last step). Moving it among the keys saves a quarter of
detection (~30 ms per clip) and changes the boxes of the steps next to it by a fraction of a step's motion."""


def middle_position(n_steps: int) -> float:
    """Where the middle frame lies on the steps' axis: the clip's centre, (T - 1) / 2, as step k's frame is the one
    on screen at the centre of span k and the middle frame the one at half the duration (extract.clip_timeline)."""
    return (n_steps - 1) / 2


def follow_keys(found: dict[float, tuple[np.ndarray, np.ndarray]], shot_of: dict[float, int], config: FaceConfig,
                width: int, height: int) -> Path:
    """The followed face at each detected position, in time order (pipeline/tracking.py follow)."""
    return follow(found, shot_of, config.min_prob, config.policy, (width, height))


def first_keys(n_steps: int, count: int) -> list[int]:
    """`count` evenly spaced steps, the first and the last among them: where detection starts."""
    return sorted({int(k) for k in np.linspace(0, n_steps - 1, max(2, count)).round()})


def in_doubt(key_boxes: np.ndarray, key_probs: np.ndarray, probs: list[np.ndarray], config: FaceConfig) -> bool:
    """Whether the first key frames leave the face's path uncertain: the followed face missed or unsure in
    one of them, more than one confident face (which one to follow), or consecutive boxes that disagree
    (IoU below 0.5: the face moved, and a straight line between far-apart key frames would miss it)."""
    if np.isnan(key_boxes[:, 0]).any() or (key_probs < config.sure_prob).any():
        return True
    if any(int((p >= config.min_prob).sum()) > 1 for p in probs):
        return True
    return any(iou(a, b[None])[0] < 0.5 for a, b in zip(key_boxes[:-1], key_boxes[1:]))


def confirmed_steps(keys: list[float], seen: np.ndarray, n_steps: int, linked: np.ndarray | None = None) -> np.ndarray:
    """(T,) bool: the key steps where the followed face was detected, and the steps between two consecutive
    keys that both saw it (confirmed by tracking) and, where `linked` ((K - 1,) bool) is given, saw the same
    tracklet of it. Steps before the first or after the last sighting, next to a key that missed it, or between
    two tracklets, are not counted as a face. A key may lie between two steps (the middle frame)."""
    found = np.zeros(n_steps, bool)
    grid = np.arange(n_steps)
    linked = np.ones(max(0, len(keys) - 1), bool) if linked is None else linked
    for (a, seen_a), (b, seen_b), same in zip(zip(keys, seen), zip(keys[1:], seen[1:]), linked):
        if seen_a and seen_b and same:
            found[(grid >= a) & (grid <= b)] = True
    found[[int(k) for k, s in zip(keys, seen) if s and float(k).is_integer()]] = True
    return found
