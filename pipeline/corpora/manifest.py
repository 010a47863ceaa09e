"""Any other corpus, from a CSV manifest: one row per clip.

Columns: `video` (path), `label` (an emotion name), `speaker`; optional `audio` (path), `split`
(train/val/test, kept as given), `id`, `sentence`, `intensity`, and raters' votes `votes_voice`, `votes_face`,
`votes_av` (label:count pairs, e.g. "ANG:3 NEU:1"; pipeline/votes.py). Relative paths are relative to the CSV's
folder. Labels are numbered in sorted order of their names, unless they are exactly CREMA-D's six codes,
which keep avstore's one label map.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.corpora import Corpus, CorpusError
from pipeline.records import CREMA_D_EMOTIONS, ClipRecord
from pipeline.votes import manifest_votes

REQUIRED = ("video", "label", "speaker")
SPLITS = ("train", "val", "test")


def load(root: Path, meta: Path | None = None) -> list[ClipRecord]:
    """`root` is the CSV file itself."""
    path = Path(root)
    if not path.is_file():
        raise CorpusError(f"manifest '{path}' does not exist; pass --root pointing at a CSV with columns video,label,speaker[,audio,split]")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise CorpusError(f"manifest '{path}' lacks column(s) {', '.join(missing)}; it needs video,label,speaker (optional: audio,split,id)")
    names = sorted({row["label"] for row in rows})
    class_names = CREMA_D_EMOTIONS if set(names) <= set(CREMA_D_EMOTIONS) else tuple(names)
    records = []
    for number, row in enumerate(rows, start=2):
        split = (row.get("split") or "").strip()
        if split and split not in SPLITS:
            raise CorpusError(f"manifest '{path}' line {number}: split '{split}' is not one of {', '.join(SPLITS)}")
        video = _resolve(path.parent, row["video"])
        audio = _resolve(path.parent, row["audio"]) if (row.get("audio") or "").strip() else None
        records.append(
            ClipRecord(
                clip_id=(row.get("id") or "").strip() or Path(row["video"]).stem,
                video_path=str(video),
                audio_path=str(audio) if audio else None,
                label=class_names.index(row["label"]),
                emotion=row["label"],
                speaker=row["speaker"],
                sentence=row.get("sentence") or "",
                intensity=row.get("intensity") or "",
                split=split,
                votes=manifest_votes(row, class_names, f"manifest '{path}' line {number}"),  # optional votes_* columns
            )
        )
    ids = [r.clip_id for r in records]
    if len(set(ids)) != len(ids):
        raise CorpusError(f"manifest '{path}' has duplicate clip ids; give each row a unique `id` column value")
    return sorted(records, key=lambda r: r.clip_id)


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value.strip())
    return candidate if candidate.is_absolute() else base / candidate


CORPUS = Corpus("manifest", "any corpus from a CSV (video,label,speaker[,audio,split,id])", (), load)
