"""Clip records: the pure metadata a corpus adapter yields, before anything is decoded.

One label map serves every corpus that shares CREMA-D's six emotions (the seed code used two different
maps; see SPEC defect 9). Corpora with more emotions (RAVDESS) carry their own ordered label list.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CREMA_D_EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
"""Alphabetical, so ANG=0 DIS=1 FEA=2 HAP=3 NEU=4 SAD=5 everywhere in avstore."""

VOTE_MODALITIES: tuple[str, ...] = ("voice", "face", "av")
"""What raters saw when they voted (CREMA-D's queryType 1, 2, 3): the voice alone, the face alone, both."""


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a corpus: where its media are and what it is labelled.

    `broken` holds a reason when the corpus documents the clip as defective (CREMA-D lists four); the
    pipeline still tries such a clip and records what happened, but never crashes on it.
    """

    clip_id: str
    video_path: str
    label: int
    emotion: str
    speaker: str
    audio_path: str | None = None
    sentence: str = ""
    intensity: str = ""
    split: str = ""
    broken: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    votes: dict[str, list[int]] = field(default_factory=dict)
    """Raters' perceived emotion: modality (VOTE_MODALITIES) -> vote count per class, in the corpus's class order."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClipRecord":
        return cls(**d)

    def with_split(self, split: str) -> "ClipRecord":
        return dataclasses.replace(self, split=split)
