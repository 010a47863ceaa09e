"""Raters' votes: which emotion the crowd perceived in each clip, per modality, and how often it was the actor's.

CREMA-D's actors were asked for one emotion; its raters often perceived another. The corpus ships every rater's
choice tabulated in `tabulatedVotes.csv`: one row per clip and modality (22,326 rows = 7,442 clips x 3), the
first digit of the row id naming what the raters saw (1 voice only, 2 face only, 3 audio-visual), and a vote count
per emotion in columns A D F H N S (anger, disgust, fear, happy, neutral, sad: CREMA_D_EMOTIONS' order).

Definitions used everywhere in avstore (a clip, one modality, `counts` its votes per class):

* raters = the sum of the counts; agreement = the largest count / raters (CREMA-D's own `agreement` column).
* agreement level: `unanimous` (every rater chose one emotion), `majority` (the top emotion has more than half
  the votes), `plurality` (a single top emotion with half the votes or fewer), `tie` (two or more share the top).
* the hard perceived label is the emotion with the most votes. A tie is broken by a keyed hash, not by class
  order (which would favour anger): the tied classes, in class order, are indexed by
  sha256("<seed>:<clip id>:<modality>") mod their number. The same clip always gets the same label for a seed,
  whatever other clips are around, and every tied class is equally likely over clips. The seed is 0 unless
  asked otherwise (`TIE_SEED`), so runs with different training seeds learn the same targets.
* the soft perceived label is counts / raters, the vote distribution.
* raters' accuracy against the intended emotion, per modality, two ways:
  - `balanced`: for each intended emotion, the votes naming it / all votes on its clips; then the mean over the
    emotions (each emotion counts once, as UAR does for a model);
  - `pooled`: every vote naming the intended emotion / every vote (each vote counts once).
  On CREMA-D's tables (all 22,326 rows) balanced gives 40.7 / 57.7 / 63.4 % (voice / face / audio-visual) and
  pooled 40.0 / 57.4 / 63.1 %; the paper reports 40.9 / 58.2 / 63.6 %: balanced is within 0.5 points of each,
  pooled within 0.9. `majority` (how often the hard perceived label is the intended emotion: the crowd as one
  classifier, 44.5 / 68.5 / 74.5 % there) is the figure to set beside a model's accuracy clip by clip.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.corpora.base import CorpusError
from pipeline.labels import emotion_code
from pipeline.records import CREMA_D_EMOTIONS, VOTE_MODALITIES, ClipRecord

CREMA_D_VOTE_CODES: tuple[str, ...] = ("A", "D", "F", "H", "N", "S")
"""tabulatedVotes.csv's count columns, in CREMA_D_EMOTIONS' order."""
TABLE_MODES: dict[str, str] = {"1": "voice", "2": "face", "3": "av"}
"""First digit of a tabulatedVotes.csv row id -> modality (the repository's queryType)."""
AGREEMENT_LEVELS: tuple[str, ...] = ("unanimous", "majority", "plurality", "tie")
TIE_SEED = 0
MANIFEST_COLUMNS: dict[str, str] = {f"votes_{m}": m for m in VOTE_MODALITIES}
"""Optional manifest columns, e.g. votes_av = "ANG:3 NEU:1" (label:count pairs, spaces or semicolons between)."""


class VoteError(CorpusError):
    """A vote table or vote column is unusable; the message names the place and the fix."""


# ---------------------------------------------------------------------------------------------- tables


def read_tabulated_votes(path: Path) -> dict[str, dict[str, list[int]]]:
    """Clip name -> modality -> vote counts (CREMA_D_EMOTIONS' order), from a CREMA-D `tabulatedVotes.csv`."""
    votes: dict[str, dict[str, list[int]]] = defaultdict(dict)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("", "fileName", *CREMA_D_VOTE_CODES) if c not in (reader.fieldnames or [])]
        if missing:
            raise VoteError(f"'{path}' lacks column(s) {missing}; it must be CREMA-D's tabulatedVotes.csv")
        for row in reader:
            mode = TABLE_MODES.get(row[""][:1])
            if mode is not None:
                votes[row["fileName"]][mode] = [int(row[code]) for code in CREMA_D_VOTE_CODES]
    return dict(votes)


def write_tabulated_votes(path: Path, votes: dict[str, dict[str, Sequence[int]]]) -> None:
    """Write `votes` (clip -> modality -> counts) as CREMA-D's tabulatedVotes.csv: its first ten columns, its row
    ids (mode digit, then the clip's 1-based position among the sorted clip names, five digits)."""
    order = sorted(votes)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(["", *CREMA_D_VOTE_CODES, "fileName", "numResponses", "agreement", "emoVote"])
        for digit, mode in TABLE_MODES.items():
            for number, clip in enumerate(order, start=1):
                counts = [int(c) for c in votes[clip].get(mode, ())]
                if not counts:
                    continue
                top = max(counts)
                majority = ":".join(code for code, c in zip(CREMA_D_VOTE_CODES, counts) if c == top)
                writer.writerow([f"{digit}{number:05d}", *counts, clip, sum(counts), top / max(1, sum(counts)), majority])


def manifest_votes(row: dict[str, str], class_names: Sequence[str], where: str) -> dict[str, list[int]]:
    """The optional vote columns of one manifest row (votes_voice, votes_face, votes_av): modality -> counts."""
    votes = {}
    for column, modality in MANIFEST_COLUMNS.items():
        text = (row.get(column) or "").strip()
        if text:
            votes[modality] = parse_vote_cell(text, class_names, f"{where}, column {column}")
    return votes


def parse_vote_cell(text: str, class_names: Sequence[str], where: str) -> list[int]:
    """'ANG:3 NEU:1' (or 'ANG:3;NEU:1') -> counts in `class_names` order."""
    counts = [0] * len(class_names)
    for pair in text.replace(";", " ").split():
        name, _, number = pair.partition(":")
        name = emotion_code(name) or name.strip()  # the one emotion table: happy:3 is HAP:3
        if name not in class_names or not number.isdigit():
            raise VoteError(f"{where}: '{pair}' is not label:count with a label of this corpus "
                            f"({', '.join(class_names)}); write e.g. '{class_names[0]}:3 {class_names[-1]}:1'")
        counts[list(class_names).index(name)] += int(number)
    return counts


# ---------------------------------------------------------------------------------------------- one clip


def agreement_levels(votes: np.ndarray) -> np.ndarray:
    """AGREEMENT_LEVELS name per row of `votes` (N, K); '' where a row has no votes."""
    votes = np.asarray(votes)
    raters = votes.sum(-1)
    top = votes.max(-1) if votes.size else np.zeros(votes.shape[:-1], votes.dtype)
    tied = (votes == top[..., None]).sum(-1) > 1
    level = np.where(top == raters, "unanimous", np.where(tied, "tie", np.where(2 * top > raters, "majority", "plurality")))
    return np.where(raters > 0, level, "").astype(object)


def hard_labels(votes: np.ndarray, clip_ids: Sequence[str], modality: str, seed: int = TIE_SEED) -> np.ndarray:
    """The majority class per row of `votes` (N, K), ties broken by the keyed hash of the module docstring; -1
    where a row has no votes."""
    votes = np.asarray(votes)
    labels = np.full(len(votes), -1, dtype=np.int64)
    for i, (counts, clip) in enumerate(zip(votes, clip_ids)):
        if counts.sum() <= 0:
            continue
        tied = np.flatnonzero(counts == counts.max())
        if len(tied) == 1:
            labels[i] = tied[0]
        else:
            key = int.from_bytes(hashlib.sha256(f"{seed}:{clip}:{modality}".encode()).digest()[:8], "big")
            labels[i] = tied[key % len(tied)]
    return labels


def distributions(votes: np.ndarray) -> np.ndarray:
    """Votes (N, K) -> the vote distribution per row (float64); a row without votes stays all zero."""
    votes = np.asarray(votes, dtype=np.float64)
    raters = votes.sum(-1, keepdims=True)
    return np.divide(votes, raters, out=np.zeros_like(votes), where=raters > 0)


def raters_accuracy(intended: np.ndarray, votes: np.ndarray, clip_ids: Sequence[str], modality: str) -> dict:
    """How often the raters of one modality chose the intended emotion (module docstring): balanced, pooled and
    majority, over the rows that have votes; plus how many clips and votes that was."""
    intended, votes = np.asarray(intended, dtype=np.int64), np.asarray(votes, dtype=np.int64)
    has = votes.sum(-1) > 0
    intended, votes, ids = intended[has], votes[has], [c for c, h in zip(clip_ids, has) if h]
    if not len(votes):
        return {"clips": 0, "votes": 0, "balanced": None, "pooled": None, "majority": None}
    right = votes[np.arange(len(votes)), intended]
    total = votes.sum(-1)
    per_emotion = [right[intended == k].sum() / total[intended == k].sum() for k in np.unique(intended)]
    majority = hard_labels(votes, ids, modality)
    return {"clips": int(len(votes)), "votes": int(total.sum()), "balanced": float(np.mean(per_emotion)),
            "pooled": float(right.sum() / total.sum()), "majority": float(np.mean(majority == intended))}


# ---------------------------------------------------------------------------------------------- a corpus


def record_votes(records: Iterable[ClipRecord], modality: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(intended labels, votes (N, K), clip ids) of the records that carry votes for `modality`."""
    chosen = [r for r in records if sum(r.votes.get(modality, ())) > 0]
    width = max((len(r.votes[modality]) for r in chosen), default=len(CREMA_D_EMOTIONS))
    votes = np.asarray([r.votes[modality] for r in chosen], dtype=np.int64).reshape(len(chosen), width)
    return np.asarray([r.label for r in chosen], dtype=np.int64), votes, [r.clip_id for r in chosen]


def summarise(records: Sequence[ClipRecord]) -> dict:
    """Per modality: clips with votes, votes, mean raters per clip, clips per agreement level and the raters'
    accuracy against the intended emotion; {} when no record carries votes."""
    info = {}
    for modality in VOTE_MODALITIES:
        intended, votes, ids = record_votes(records, modality)
        if not len(ids):
            continue
        levels = agreement_levels(votes)
        info[modality] = {
            **raters_accuracy(intended, votes, ids, modality),
            "mean_raters": float(votes.sum(-1).mean()),
            "levels": {level: int(np.sum(levels == level)) for level in AGREEMENT_LEVELS},
        }
    return info


def summary_lines(info: dict, corpus_clips: int) -> list[str]:
    """The `summary` command's lines for `summarise`'s result."""
    if not info:
        return []
    lines = ["raters' accuracy against the intended emotion (votes for it / all votes; balanced = mean over emotions):"]
    for modality, m in info.items():
        lines.append(
            f"  {modality:5s} {100 * m['balanced']:.1f} % balanced, {100 * m['pooled']:.1f} % pooled, "
            f"majority vote {100 * m['majority']:.1f} %  ({m['clips']} of {corpus_clips} clips, {m['votes']} votes, "
            f"{m['mean_raters']:.1f} raters per clip; " + ", ".join(f"{k} {v}" for k, v in m["levels"].items()) + ")")
    return lines
