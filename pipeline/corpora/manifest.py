"""Any other corpus, from a CSV manifest: one row per clip.

Columns: `video` (path), `label` (an emotion name), `speaker`; optional `audio` (path), `split`
(train/val/test, kept as given), `id`, `sentence`, `intensity`, and raters' votes `votes_voice`, `votes_face`,
`votes_av` (label:count pairs, e.g. "ANG:3 NEU:1"; pipeline/votes.py). Relative paths are relative to the CSV's
folder. A file saved by a spreadsheet reads the same: a byte-order mark, CRLF line ends, spaces around
column names and values, and column names in any case are accepted.

Labels go through pipeline/labels.py's table (`happy`, `Happiness`, ` HAP` are all HAP); the class list is
the manifest's codes in alphabetical order, so CREMA-D's six keep ANG=0 ... SAD=5 and a 4-class
ANG/HAP/NEU/SAD manifest is numbered 0..3. A label outside the table is refused unless the class list is
declared (`classes`, the CLI's `--classes A,B,C`), which also fixes the numbering. Every file is checked
before anything is decoded: missing ones are refused together.
"""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.corpora.base import CorpusError, register_corpus
from pipeline.labels import EMOTIONS, class_name, corpus_class_list, declared_classes
from pipeline.records import ClipRecord
from pipeline.votes import manifest_votes

REQUIRED = ("video", "label", "speaker")
SPLITS = ("train", "val", "test")
SHOWN = 10
"""Missing files or unknown labels named in the one-line error; the count covers them all."""


def load(root: Path, meta: Path | None = None, classes: str | None = None) -> list[ClipRecord]:
    """`root` is the CSV file itself; `classes` an optional declared class list ("ANG,HAP,NEU,SAD")."""
    path = Path(root)
    if not path.is_file():
        raise CorpusError(f"manifest '{path}' does not exist; pass --root pointing at a CSV with columns video,label,speaker[,audio,split]")
    rows = read_rows(path)
    declared = declared_classes(classes) if classes else None
    names = [class_name(row["label"], declared) for row in rows]
    unknown = sorted({row["label"] or "(empty)" for row, name in zip(rows, names) if name is None})
    if unknown:
        raise CorpusError(unknown_labels(path, unknown, declared))
    class_names = corpus_class_list(names, declared)
    check_files(path, rows)
    records = []
    for number, (row, name) in enumerate(zip(rows, names), start=2):
        split = row.get("split", "").lower()
        if split and split not in SPLITS:
            raise CorpusError(f"manifest '{path}' line {number}: split '{split}' is not one of {', '.join(SPLITS)}")
        video = _resolve(path.parent, row["video"])
        audio = _resolve(path.parent, row["audio"]) if row.get("audio") else None
        records.append(
            ClipRecord(
                clip_id=row.get("id") or Path(row["video"]).stem,
                video_path=str(video),
                audio_path=str(audio) if audio else None,
                label=class_names.index(name),
                emotion=name,
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


def read_rows(path: Path) -> list[dict[str, str]]:
    """The CSV's rows, column names lower-cased and every name and value stripped (`utf-8-sig` drops a BOM;
    the csv module reads CRLF). Blank lines are skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [name.strip().lower() for name in next(reader, [])]
        rows = [dict(zip(header, [value.strip() for value in line] + [""] * (len(header) - len(line))))
                for line in reader if any(value.strip() for value in line)]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CorpusError(f"manifest '{path}' lacks column(s) {', '.join(missing)} (it has: {', '.join(header) or 'nothing'}); "
                          "it needs video,label,speaker (optional: audio,split,id)")
    return rows


def class_list(records: list[ClipRecord], classes: str | None = None) -> list[str]:
    """The class list `load` numbered `records` by (the declared one, else their codes in alphabetical order)."""
    return corpus_class_list((r.emotion for r in records), declared_classes(classes) if classes else None)


def check_files(path: Path, rows: list[dict[str, str]]) -> None:
    """Refuse the manifest when any video or audio file it names is missing, listing them: a missing file would
    otherwise become a decode_error deep in the run, and the run would still end "ok"."""
    missing = [row[column] for row in rows for column in ("video", "audio")
               if row.get(column) and not _resolve(path.parent, row[column]).is_file()]
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (f" (first {SHOWN})" if len(missing) > SHOWN else "")
        raise CorpusError(f"manifest '{path}': {len(missing)} file(s) missing: {shown}; fix the paths "
                          f"(relative ones are relative to {path.parent}) or drop those rows")


def unknown_labels(path: Path, unknown: list[str], declared: list[str] | None) -> str:
    shown = ", ".join(unknown[:SHOWN]) + (f" (first {SHOWN})" if len(unknown) > SHOWN else "")
    if declared is not None:
        return (f"manifest '{path}' has {len(unknown)} label(s) not in --classes {','.join(declared)}: {shown}; "
                "add them to --classes or fix the rows")
    return (f"manifest '{path}' has {len(unknown)} label(s) outside the emotion table ({', '.join(EMOTIONS)}, or their "
            f"names such as happy, neutral): {shown}; fix the rows or declare the class list with --classes A,B,C")


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value.strip())
    return candidate if candidate.is_absolute() else base / candidate


register_corpus("manifest", description="any corpus from a CSV (video,label,speaker[,audio,split,id])",
                derive_classes=class_list)(load)  # here, below class_list: its class list is the records' own
