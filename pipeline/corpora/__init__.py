"""Corpus adapters: each turns a folder (or a CSV) into a list of ClipRecords, without decoding anything.

One module per corpus, in the manner of Lhotse's recipes. The registry below is the one list the CLI takes
its `--dataset` choices from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline.records import ClipRecord


class CorpusError(ValueError):
    """The corpus root or manifest is unusable; the message names the problem and the fix."""


@dataclass(frozen=True)
class Corpus:
    name: str
    description: str
    class_names: tuple[str, ...]
    load: Callable[..., list[ClipRecord]]
    """load(root: Path, meta: Path | None = None) -> records sorted by clip id"""


def _registry() -> dict[str, Corpus]:
    from pipeline.corpora import cremad, manifest, ravdess

    corpora = [cremad.CORPUS, ravdess.CORPUS, manifest.CORPUS, cremad.SAMPLE_CORPUS]
    return {c.name: c for c in corpora}


def list_corpora() -> list[str]:
    return sorted(_registry())


def get_corpus(name: str) -> Corpus:
    corpora = _registry()
    if name not in corpora:
        raise CorpusError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(corpora))}")
    return corpora[name]


def load_corpus(name: str, root: Path, meta: Path | None = None, classes: str | None = None) -> list[ClipRecord]:
    """`classes`: a declared class list ("ANG,HAP,NEU,SAD"), for a manifest only: the other corpora fix theirs."""
    corpus = get_corpus(name)
    if classes is None:
        return corpus.load(Path(root), meta=meta)
    if corpus.class_names:
        raise CorpusError(f"--classes is for --dataset manifest; {name} numbers its classes itself ({','.join(corpus.class_names)}): drop --classes")
    return corpus.load(Path(root), meta=meta, classes=classes)


def class_list(name: str, records: list[ClipRecord], classes: str | None = None) -> tuple[list[str], bool]:
    """The class list `records` are numbered by, and whether it states numbers (a corpus's fixed list or a
    declared one: a store must keep them) rather than being derived from the labels present (a store appends
    what it lacks; pipeline/labels.py's merge_class_lists)."""
    corpus = get_corpus(name)
    if corpus.class_names:
        return list(corpus.class_names), True
    from pipeline.corpora import manifest

    return manifest.class_list(records, classes), classes is not None
