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


def load_corpus(name: str, root: Path, meta: Path | None = None) -> list[ClipRecord]:
    return get_corpus(name).load(Path(root), meta=meta)
