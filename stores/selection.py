"""Which committed clips a trainer may use. One place, so every reader applies the same rule.

A clip is usable when its faces and audio (and the fusion read, if any) are committed `ok`. A clip the corpus
documents as broken (`clips/broken`, e.g. CREMA-D's 1064_TIE_SAD_XX, which decodes) is left out as well unless
asked for: it may decode and still be wrong (too few frames, a take of several clips).
"""

from __future__ import annotations

import numpy as np

from stores.store import FeatureSet


def usable_rows(faces: FeatureSet, audio: FeatureSet, fused: FeatureSet | None, broken: np.ndarray, *, include_broken: bool = False) -> tuple[np.ndarray, int]:
    """(mask over all rows, how many ok rows were left out because the corpus flags them broken)."""
    ok = faces.ok() & audio.ok() & (fused.ok() if fused is not None else True)
    flagged = np.asarray([bool(b) for b in broken], bool)
    if include_broken:
        return ok, 0
    return ok & ~flagged, int((ok & flagged).sum())
