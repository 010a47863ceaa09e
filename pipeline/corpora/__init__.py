"""Corpus adapters: each turns a folder (or a CSV) into a list of ClipRecords, without decoding anything.

One module per corpus, in the manner of Lhotse's recipes: each registers its loader and class list with
`@register_corpus`, and the registry below is the one list the CLI takes its `--dataset` choices from.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from pipeline.corpora.base import CORPORA, Corpus, CorpusError, register_corpus
from pipeline.records import ClipRecord

__all__ = ["Corpus", "CorpusError", "class_list", "datasets_help", "get_corpus", "list_corpora", "load_corpus", "print_corpora", "register_corpus"]


_DISCOVERED = False


def _corpora() -> dict[str, Corpus]:
    """The registry, after importing every module of this package once (each registers its corpora)."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    return CORPORA


def list_corpora() -> list[str]:
    """The `--dataset` choices: every registered corpus, sorted."""
    return sorted(_corpora())


def get_corpus(name: str) -> Corpus:
    corpora = _corpora()
    if name not in corpora:
        raise CorpusError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(corpora))}")
    return corpora[name]


def print_corpora() -> None:
    """`cli.py datasets`: each corpus adapter and what it reads."""
    for name in list_corpora():
        print(f"{name:10s} {get_corpus(name).description}")


def datasets_help() -> str:
    """The `--dataset` option's help: the registered corpora."""
    return f"Corpus adapter: {', '.join(list_corpora())}."


def load_corpus(name: str, root: Path, meta: Path | None = None, classes: str | None = None) -> list[ClipRecord]:
    """`classes`: a declared class list ("ANG,HAP,NEU,SAD"), for a corpus whose records say their classes (a
    manifest): the other corpora fix theirs."""
    corpus = get_corpus(name)
    if classes is None:
        return corpus.load(Path(root), meta=meta)
    if corpus.derive_classes is None:
        takers = ", ".join(n for n in list_corpora() if get_corpus(n).derive_classes is not None)
        raise CorpusError(f"--classes is for --dataset {takers}; {name} numbers its classes itself ({','.join(corpus.class_names)}): drop --classes")
    return corpus.load(Path(root), meta=meta, classes=classes)


def class_list(name: str, records: list[ClipRecord], classes: str | None = None) -> tuple[list[str], bool]:
    """The class list `records` of corpus `name` are numbered by, and whether it states numbers (Corpus.classes)."""
    return get_corpus(name).classes(records, classes)
