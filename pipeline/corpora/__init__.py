"""Corpus adapters: each turns a folder (or a CSV) into a list of ClipRecords, without decoding anything.

One module per corpus, in the manner of Lhotse's recipes: each registers its loader and class list with
`@register_corpus`, and the registry below is the one list the CLI takes its `--dataset` choices from.
"""

from __future__ import annotations

import importlib
import pkgutil
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
    """The corpus's fixed class list, label i being class_names[i]; empty when the records carry it (`derive_classes`)."""
    load: Callable[..., list[ClipRecord]]
    """load(root: Path, meta: Path | None = None[, classes: str | None]) -> records sorted by clip id"""
    derive_classes: Callable[[list[ClipRecord], str | None], list[str]] | None = None
    """For a corpus without a fixed list: (its records, the declared `--classes` or None) -> the list `load` numbered
    the records by. Only such a corpus takes `--classes`."""

    def classes(self, records: list[ClipRecord], declared: str | None = None) -> tuple[list[str], bool]:
        """(the class list `records` are numbered by, whether it states numbers: a fixed or a declared list, which a
        store must keep, rather than one derived from the labels present, to which a store appends what it lacks;
        pipeline/labels.py's merge_class_lists)."""
        if self.derive_classes is None:
            return list(self.class_names), True
        return self.derive_classes(records, declared), declared is not None


_CORPORA: dict[str, Corpus] = {}
_DISCOVERED = False


def register_corpus(name: str, *, description: str, class_names: tuple[str, ...] = (),
                    derive_classes: Callable[[list[ClipRecord], str | None], list[str]] | None = None):
    """Decorator that registers a corpus's `load` under `name` (the `--dataset` choice), with its class list.

    Give either `class_names` (the corpus numbers its own classes) or `derive_classes` (the records say, as a
    manifest's do). A module in this package registers itself when imported; `list_corpora` imports them all, so
    a new adapter is one new file here (or, outside the package, one import of the module that registers it).
    """
    if not class_names and derive_classes is None:
        raise ValueError(f"corpus {name!r} needs its class list: class_names=(...) or derive_classes=...")

    def wrapper(load: Callable[..., list[ClipRecord]]) -> Callable[..., list[ClipRecord]]:
        if name in _CORPORA:
            raise ValueError(f"a corpus named {name!r} is already registered")
        _CORPORA[name] = Corpus(name, description, tuple(class_names), load, derive_classes)
        return load

    return wrapper


def _corpora() -> dict[str, Corpus]:
    """The registry, after importing every module of this package once (each registers its corpora)."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
    return _CORPORA


def list_corpora() -> list[str]:
    """The `--dataset` choices: every registered corpus, sorted."""
    return sorted(_corpora())


def get_corpus(name: str) -> Corpus:
    corpora = _corpora()
    if name not in corpora:
        raise CorpusError(f"unknown dataset '{name}'; choose one of: {', '.join(sorted(corpora))}")
    return corpora[name]


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
