"""RAVDESS (Livingstone & Russo, 2018): 24 actors, 8 emotions, speech and song, used by MultiMAE-DER.

Licence: CC BY-NC-SA 4.0. Layout: `<root>/Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4`, the seven fields being
modality (01 audio-visual, 02 video-only, 03 audio-only), vocal channel (01 speech, 02 song), emotion,
intensity (01 normal, 02 strong), statement, repetition and actor. Only audio-visual files (modality 01)
are taken; their audio comes from the video's own track.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.corpora.base import CorpusError, register_corpus
from pipeline.records import ClipRecord

EMOTIONS: tuple[str, ...] = ("NEU", "CAL", "HAP", "SAD", "ANG", "FEA", "DIS", "SUR")
"""RAVDESS's own emotion codes 01..08, in that order (neutral, calm, happy, sad, angry, fearful, disgust, surprised)."""

NAME_RE = re.compile(r"^(?P<modality>\d\d)-(?P<channel>\d\d)-(?P<emotion>0[1-8])-(?P<intensity>\d\d)-(?P<statement>\d\d)-(?P<repetition>\d\d)-(?P<actor>\d\d)$")


@register_corpus("ravdess", description="RAVDESS audio-visual files (Actor_XX/01-*.mp4), 8 emotions", class_names=EMOTIONS)
def load(root: Path, meta: Path | None = None) -> list[ClipRecord]:
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"dataset root '{root}' does not exist; pass --root pointing at the folder that holds Actor_01/ … Actor_24/")
    videos = sorted(root.glob("Actor_*/*.mp4"))
    if not videos:
        raise CorpusError(f"'{root}' holds no Actor_XX/*.mp4 files; pass --root pointing at the RAVDESS video download")
    records = []
    for video in videos:
        match = NAME_RE.match(video.stem)
        if match is None or match["modality"] != "01":
            continue
        emotion = EMOTIONS[int(match["emotion"]) - 1]
        records.append(
            ClipRecord(
                clip_id=video.stem,
                video_path=str(video),
                label=EMOTIONS.index(emotion),
                emotion=emotion,
                speaker=match["actor"],
                sentence=match["statement"],
                intensity=match["intensity"],
                extra={"vocal_channel": "speech" if match["channel"] == "01" else "song", "repetition": match["repetition"]},
            )
        )
    if not records:
        raise CorpusError(f"'{root}' holds no audio-visual files (modality 01, named 01-…); download the audio-visual RAVDESS archives")
    return records

