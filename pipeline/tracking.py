"""Which face each step's crop follows: shot changes, tracklets, and the policy that picks among faces.

Why: acted studio clips hold one face that barely moves, and following the first key frame's largest face by box
overlap is enough. Material from the wild (TV, film, stage, a street) has camera cuts, speakers who walk, and
several faces. There a box carried across a cut, or held where a walking face was last seen, crops background.
So detections are linked into *tracklets* (one face seen at consecutive detections of one shot, boxes
overlapping), never across a shot change, and the followed face is a chain of tracklets: when one ends (the face
left, the shot changed) the policy picks the next one at the first detection after it.

Policies (`--face-policy`, FACE_POLICIES):

- `largest`: the largest face at the first detection with a face, and again at each re-acquisition.
- `central`: the face closest to the frame's centre, likewise.
- `steady`: the identity most consistent in position and size across the clip: the tracklet seen at the most
  detections (ties: the one that moves and changes size least), and at each re-acquisition, before or after
  it, the face most like it in position and size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

MIN_LINK_IOU = 0.3
"""A detection continues a tracklet only if its box overlaps the tracklet's last box this much (IoU); key frames
are a fraction of a second apart, so one face moves far less, and a passer-by is not linked."""

CUT_DISTANCE = 0.5
"""Two consecutive step frames lie in different shots when their colour histograms differ by more than this
(total variation distance, 0 to 1). Measured at T=16: consecutive steps of the GRID and sample clips at most 0.05,
a face crossing the frame 0.07, the larger of two faces sliding out 0.38; the cut from a wide shot to a close-up of
the same face 0.62, a cut-away to a wall 0.93 (tests/test_faces.py's variants). A cut it misses still breaks the
tracklet when the face's box jumps; a false cut only costs detections."""

HISTOGRAM_BINS = 8  # per RGB channel
HISTOGRAM_WIDTH = 64  # frames are subsampled to about this width first: a cut changes the whole picture


def colour_histogram(frame: np.ndarray) -> np.ndarray:
    """(bins^3,) normalised RGB histogram of a subsampled frame."""
    step = max(1, frame.shape[1] // HISTOGRAM_WIDTH)
    small = frame[::step, ::step].reshape(-1, 3) // (256 // HISTOGRAM_BINS)
    index = (small[:, 0].astype(np.int64) * HISTOGRAM_BINS + small[:, 1]) * HISTOGRAM_BINS + small[:, 2]
    counts = np.bincount(index, minlength=HISTOGRAM_BINS**3).astype(np.float64)
    return counts / max(1.0, counts.sum())


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(0.5 * np.abs(a - b).sum())


def shot_of_steps(steps: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(T,) shot index of each step frame (a new shot where consecutive histograms differ by > CUT_DISTANCE), and
    the histograms (for placing the middle frame)."""
    histograms = [colour_histogram(f) for f in steps]
    cuts = [histogram_distance(a, b) > CUT_DISTANCE for a, b in zip(histograms[:-1], histograms[1:])]
    return np.concatenate([[0], np.cumsum(cuts)]).astype(np.int64), histograms


def shot_at(position: float, shots: np.ndarray, histograms: list[np.ndarray], frame: np.ndarray | None = None) -> int:
    """The shot a frame at `position` on the steps' axis belongs to: that of the steps on either side when they
    agree, else the one whose step frame it resembles more."""
    lo, hi = int(np.floor(position)), int(np.ceil(position))
    if shots[lo] == shots[hi] or frame is None:
        return int(shots[lo])
    h = colour_histogram(frame)
    return int(shots[lo] if histogram_distance(h, histograms[lo]) <= histogram_distance(h, histograms[hi]) else shots[hi])


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of one box `a` with each row of `b`."""
    x1, y1 = np.maximum(a[0], b[:, 0]), np.maximum(a[1], b[:, 1])
    x2, y2 = np.minimum(a[2], b[:, 2]), np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda r: (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-6)


@dataclass
class Tracklet:
    """One face seen at consecutive detections of one shot (a detection that missed it may lie between)."""

    shot: int
    positions: list[float] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)

    def add(self, position: float, box: np.ndarray, prob: float) -> None:
        self.positions.append(position)
        self.boxes.append(box)
        self.probs.append(prob)

    def wobble(self) -> float:
        """Mean change of centre (in box sides) and of log size between consecutive sightings: 0 for a still face."""
        if len(self.boxes) < 2:
            return 0.0
        b = np.asarray(self.boxes, np.float64)
        side = np.maximum(b[:, 2:] - b[:, :2], 1e-6).max(axis=1)
        centre = (b[:, :2] + b[:, 2:]) / 2
        moved = np.linalg.norm(np.diff(centre, axis=0), axis=1) / side[:-1]
        return float(np.mean(moved + np.abs(np.diff(np.log(side)))))

    def median_box(self) -> np.ndarray:
        return np.median(np.asarray(self.boxes), axis=0)


def build_tracklets(found: dict[float, tuple[np.ndarray, np.ndarray]], shot_of: dict[float, int], min_prob: float) -> list[Tracklet]:
    """Link the confident detections at the positions of `found` into tracklets: in time order, each tracklet of
    the same shot takes the detection that overlaps its last box most (at least MIN_LINK_IOU; pairs in order of
    overlap, so two faces never swap); a detection taken by none starts a tracklet."""
    tracklets: list[Tracklet] = []
    for position in sorted(found):
        boxes, probs = found[position]
        confident = probs >= min_prob
        boxes, probs = boxes[confident], probs[confident]
        shot = shot_of[position]
        alive = [t for t in tracklets if t.shot == shot]
        pairs = sorted(((float(o), j, i) for j, t in enumerate(alive) for i, o in enumerate(iou(t.boxes[-1], boxes)) if o >= MIN_LINK_IOU),
                       reverse=True) if len(boxes) else []
        taken_t, taken_d = set(), set()
        for _, j, i in pairs:
            if j not in taken_t and i not in taken_d:
                alive[j].add(position, boxes[i], float(probs[i]))
                taken_t.add(j)
                taken_d.add(i)
        for i in range(len(boxes)):
            if i not in taken_d:
                tracklets.append(Tracklet(shot))
                tracklets[-1].add(position, boxes[i], float(probs[i]))
    return tracklets


Picker = Callable[[np.ndarray, "np.ndarray | None", tuple[int, int]], int]
"""(candidate boxes (n, 4), the followed identity's box or None, frame (width, height)) -> the index picked."""


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def pick_largest(boxes: np.ndarray, reference: np.ndarray | None, frame: tuple[int, int]) -> int:
    return int(np.argmax(_area(boxes)))


def pick_central(boxes: np.ndarray, reference: np.ndarray | None, frame: tuple[int, int]) -> int:
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    return int(np.argmin(np.linalg.norm(centre - np.asarray(frame, np.float64) / 2, axis=1)))


def pick_steady(boxes: np.ndarray, reference: np.ndarray | None, frame: tuple[int, int]) -> int:
    """The face most like `reference` in position (distance of centres, in the reference's sides) and size (log
    ratio); the largest without one."""
    if reference is None:
        return pick_largest(boxes, reference, frame)
    side = np.maximum(boxes[:, 2:] - boxes[:, :2], 1e-6).max(axis=1)
    ref_side = max(float((reference[2:] - reference[:2]).max()), 1e-6)
    moved = np.linalg.norm((boxes[:, :2] + boxes[:, 2:]) / 2 - (reference[:2] + reference[2:]) / 2, axis=1) / ref_side
    return int(np.argmin(moved + np.abs(np.log(side / ref_side))))


FACE_POLICIES: dict[str, Picker] = {"largest": pick_largest, "central": pick_central, "steady": pick_steady}


@dataclass
class Path:
    """The followed face at each detected position: which tracklet (-1: none), its box (NaN) and probability (0)."""

    positions: list[float]
    tracklet: np.ndarray  # (K,) int
    boxes: np.ndarray  # (K, 4) float32
    probs: np.ndarray  # (K,) float32
    reacquired: int = 0  # how many times the followed face was picked again after a tracklet ended

    @property
    def seen(self) -> np.ndarray:
        return self.tracklet >= 0

    def linked(self) -> np.ndarray:
        """(K - 1,) whether consecutive positions both hold the followed face and it is the same tracklet."""
        t = self.tracklet
        return (t[:-1] >= 0) & (t[:-1] == t[1:])


def follow(found: dict[float, tuple[np.ndarray, np.ndarray]], shot_of: dict[float, int], min_prob: float, policy: str,
           frame: tuple[int, int]) -> Path:
    """The chain of tracklets the policy follows through the detections in `found` (position -> boxes, probs).

    An anchor tracklet first (`steady`: the most sighted and least wobbling; otherwise the policy's pick at the
    first detection with a face); then, after it and before it, at the first detection beyond the chosen ones,
    the policy's pick among the tracklets seen there, followed to its end, and so on."""
    positions = sorted(found)
    pick = FACE_POLICIES[policy]
    tracklets = build_tracklets(found, shot_of, min_prob)
    chosen = np.full(len(positions), -1, np.int64)
    if not tracklets:
        return Path(positions, chosen, np.full((len(positions), 4), np.nan, np.float32), np.zeros(len(positions), np.float32))
    at = {p: k for k, p in enumerate(positions)}
    if policy == "steady":
        anchor = min(range(len(tracklets)), key=lambda j: (-len(tracklets[j].positions), tracklets[j].wobble(), tracklets[j].positions[0]))
        reference = tracklets[anchor].median_box()
    else:
        first = min(t.positions[0] for t in tracklets)
        there = [j for j, t in enumerate(tracklets) if t.positions[0] == first]
        anchor = there[pick(np.stack([tracklets[j].boxes[0] for j in there]), None, frame)]
        reference = None
    span = [tracklets[anchor].positions[0], tracklets[anchor].positions[-1]]
    for p in tracklets[anchor].positions:
        chosen[at[p]] = anchor
    reacquired = 0
    for forward in (True, False):
        while True:
            edge = span[1] if forward else span[0]
            beyond = [(j, [p for p in t.positions if (p > edge if forward else p < edge)]) for j, t in enumerate(tracklets)]
            beyond = [(j, ps) for j, ps in beyond if ps]
            if not beyond:
                break
            nearest = min(ps[0] for _, ps in beyond) if forward else max(ps[-1] for _, ps in beyond)
            there = [(j, ps) for j, ps in beyond if nearest in ps]
            boxes = np.stack([tracklets[j].boxes[tracklets[j].positions.index(nearest)] for j, _ in there])
            j, ps = there[pick(boxes, reference, frame)]
            for p in ps:
                chosen[at[p]] = j
            span = [span[0], ps[-1]] if forward else [ps[0], span[1]]
            reacquired += 1
    boxes = np.full((len(positions), 4), np.nan, np.float32)
    probs = np.zeros(len(positions), np.float32)
    for k, j in enumerate(chosen):
        if j >= 0:
            i = tracklets[j].positions.index(positions[k])
            boxes[k], probs[k] = tracklets[j].boxes[i], tracklets[j].probs[i]
    return Path(positions, chosen, boxes, probs, reacquired)


def uncertain_gaps(path: Path, found: dict[float, tuple[np.ndarray, np.ndarray]], shot_of: dict[float, int], min_prob: float,
                   n_steps: int) -> list[int]:
    """Steps not yet detected that lie between two consecutive detections of one shot where the followed face's
    path is not plain: it is missing at one of them, another tracklet follows, or its boxes overlap less than
    0.5 (it moved; a straight line between them may miss it). Gaps where neither detection holds any face are
    left alone: nobody is there to follow."""
    wanted = []
    for k in range(len(path.positions) - 1):
        a, b = path.positions[k], path.positions[k + 1]
        between = [s for s in range(int(np.floor(a)) + 1, int(np.ceil(b))) if s not in found and 0 <= s < n_steps]
        if not between or shot_of[a] != shot_of[b]:
            continue
        if path.linked()[k] and iou(path.boxes[k], path.boxes[k + 1][None])[0] >= 0.5:
            continue
        if not ((found[a][1] >= min_prob).any() or (found[b][1] >= min_prob).any()):
            continue
        wanted += between
    return sorted(set(wanted))
