"""Raters' votes in the store's clip table: what the crowd perceived per clip and modality, readable with plain zarr.

Three arrays beside the other clip columns, row r for clip r, modality m in VOTE_MODALITIES order
(voice, face, av), classes in the store's class order::

    clips/votes      (N, 3, K) int16    votes per class
    clips/raters     (N, 3)    int16    raters (the sum of the votes); 0: no votes for that modality
    clips/agreement  (N, 3)    float32  the largest count / raters (0 without votes)

They are made the first time clips with votes are added (a store of a corpus without votes has none) and keep
the clip table's length from then on. A re-run whose clips carry votes writes them over the stored ones (extract
--meta on a store made without it fills them in); one without votes leaves the stored votes alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import zarr

from pipeline.records import VOTE_MODALITIES

VOTE_ARRAYS = ("votes", "raters", "agreement")
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class ClipVotes:
    """The votes of every clip row of a store (zeros where a clip has none)."""

    votes: np.ndarray  # (N, 3, K) int64
    raters: np.ndarray  # (N, 3) int64
    agreement: np.ndarray  # (N, 3) float64

    def modality(self, name: str) -> np.ndarray:
        """(N, K) votes of one modality."""
        return self.votes[:, VOTE_MODALITIES.index(name)]


def write_votes(clips: zarr.Group, rows: np.ndarray, records: Sequence[Any], num_classes: int) -> bool:
    """Record the votes `records` carry at their `rows`; True if anything was written."""
    wanted = {int(row): r.votes for row, r in zip(rows, records) if r.votes}
    n = clips["clip_id"].shape[0]
    if "votes" not in clips:
        if not wanted:
            return False
        num_classes = max(num_classes, *(len(c) for v in wanted.values() for c in v.values()))  # the votes' own width
        clips.create_array("votes", shape=(n, len(VOTE_MODALITIES), num_classes), dtype="int16",
                           chunks=(CHUNK_ROWS, len(VOTE_MODALITIES), num_classes), fill_value=0)
        clips.create_array("raters", shape=(n, len(VOTE_MODALITIES)), dtype="int16", chunks=(CHUNK_ROWS, len(VOTE_MODALITIES)), fill_value=0)
        clips.create_array("agreement", shape=(n, len(VOTE_MODALITIES)), dtype="float32", chunks=(CHUNK_ROWS, len(VOTE_MODALITIES)), fill_value=0)
    resized = False
    for name in VOTE_ARRAYS:
        if clips[name].shape[0] != n:
            clips[name].resize((n, *clips[name].shape[1:]))
            resized = True
    if not wanted:
        return resized
    votes = clips["votes"][:]
    before = votes.copy()
    for row, by_modality in wanted.items():
        for modality, counts in by_modality.items():
            if len(counts) != votes.shape[2]:
                raise ValueError(f"clip row {row}: {len(counts)} vote counts for {votes.shape[2]} classes")
            votes[row, VOTE_MODALITIES.index(modality)] = counts
    if np.array_equal(votes, before):
        return resized
    raters = votes.sum(-1)
    clips["votes"][:] = votes
    clips["raters"][:] = raters
    clips["agreement"][:] = np.divide(votes.max(-1), raters, out=np.zeros(raters.shape), where=raters > 0).astype(np.float32)
    return True


def read_votes(root: zarr.Group) -> ClipVotes | None:
    """The store's votes, or None for a store without any."""
    clips = root["clips"]
    if "votes" not in clips:
        return None
    return ClipVotes(votes=clips["votes"][:].astype(np.int64), raters=clips["raters"][:].astype(np.int64),
                     agreement=clips["agreement"][:].astype(np.float64))
