"""What a corpus holds, before anything is decoded: clips per emotion, split and speaker, the clips known to be
broken, and the raters' votes where the corpus has them (`cli.py summary`, and the demo's second step)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pipeline.records import ClipRecord
from pipeline.splits import PARTITIONS, corpus_records
from pipeline.votes import summarise as summarise_votes, summary_lines


def summarise(records: list[ClipRecord]) -> dict:
    """The counts `print_summary` shows, as one JSON-able dict."""
    return {
        "clips": len(records),
        "speakers": len({r.speaker for r in records}),
        "per_emotion": dict(sorted(Counter(r.emotion for r in records).items())),
        "per_split": {s: sum(r.split == s for r in records) for s in PARTITIONS},
        "speakers_per_split": {s: len({r.speaker for r in records if r.split == s}) for s in PARTITIONS},
        "broken": {r.clip_id: r.broken for r in records if r.broken},
        "perceived": summarise_votes(records),  # per modality: votes, agreement levels, raters' accuracy (pipeline/votes.py)
    }


def print_summary(records: list[ClipRecord], as_json: bool = False) -> None:
    info = summarise(records)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"{info['clips']} clips, {info['speakers']} speakers")
    print("per emotion: " + "  ".join(f"{k} {v}" for k, v in info["per_emotion"].items()))
    print("per split:   "
          + "  ".join(f"{s} {n} clips / {info['speakers_per_split'][s]} speakers" for s, n in info["per_split"].items())
          + "  (actor-disjoint)")
    for clip_id, reason in info["broken"].items():
        print(f"broken:      {clip_id}: {reason}")
    for line in summary_lines(info["perceived"], info["clips"]):  # raters' votes, when the corpus has them
        print(line)


def summarise_corpus(dataset: str, root: Path, meta: Path | None, split_seed: int, as_json: bool, classes: str | None) -> None:
    """`cli.py summary`: the corpus's records with the split `split_seed` gives them, summarised."""
    print_summary(corpus_records(dataset, root, meta, split_seed, classes=classes), as_json)
