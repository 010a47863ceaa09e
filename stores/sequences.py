"""Seed 002's inputs from the store: ComParE LLD sequences and face-embedding sequences, on the same T steps.

The LLD set's `pooled` array holds the LLDs averaged over each face step's span (the mel chunks' rule), so
both modalities arrive as (N, T, D) sequences with a per-step validity mask: `pooled_valid` for the audio,
the faces' `found` for the video. Nothing here decodes or imports the pipeline; a store that lacks either
set gets one line naming the command that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stores.store import FeatureSet, FeatureStore, StoreError
from stores.torchdata import read_rows


class MissingSequencesError(StoreError):
    """The store lacks the LLD or the embedding feature set a sequence model reads."""


@dataclass
class Sequences:
    audio: np.ndarray  # (N, T, 130) float32
    audio_mask: np.ndarray  # (N, T) bool
    video: np.ndarray  # (N, T, D) float32
    video_mask: np.ndarray  # (N, T) bool


def sequence_sets(store: FeatureStore, faces: FeatureSet, lld: str | None = None, embed: str | None = None) -> tuple[FeatureSet, FeatureSet]:
    """The LLD set and the embedding set (made from `faces`) to read; a fingerprint prefix picks one of several."""
    llds = [s for s in store.feature_sets("lld") if not lld or s.fingerprint.startswith(lld)]
    if not llds:
        raise MissingSequencesError(f"store '{store.location}' has no ComParE LLD feature set; make it with "
                                    f"`python cli.py extract --store {store.location} ... --lld` (same options as before, plus --lld)")
    embeds = [s for s in store.feature_sets("embed") if s.params.get("faces") == faces.fingerprint and (not embed or s.fingerprint.startswith(embed))]
    if not embeds:
        raise MissingSequencesError(f"store '{store.location}' has no face-embedding feature set for faces {faces.fingerprint}; make it with "
                                    f"`python cli.py embed --store {store.location} --backbone vgg16 [--weights PATH]`")
    for kind, sets in (("lld", llds), ("embed", embeds)):
        if len(sets) > 1:
            raise StoreError(f"store '{store.location}' has {len(sets)} {kind} feature sets ({', '.join(s.fingerprint for s in sets)}); "
                             f"choose one with --{kind} FINGERPRINT")
    return llds[0], embeds[0]


def read_sequences(lld: FeatureSet, embed: FeatureSet, rows: np.ndarray) -> Sequences:
    """Both sequences of `rows`, read once (a split of them fits memory: T x (130 + D) floats per clip)."""
    return Sequences(
        audio=read_rows(lld["pooled"], rows).astype(np.float32),
        audio_mask=read_rows(lld["pooled_valid"], rows).astype(bool),
        video=read_rows(embed["embedding"], rows).astype(np.float32),
        video_mask=read_rows(embed["found"], rows).astype(bool),
    )
