"""What a corpus adapter is, and the decorator that registers one: the base the adapters and the registry share.

Its own module so that an adapter (and pipeline/votes.py, which raises CorpusError) imports this, never the
package that discovers the adapters.
"""

from __future__ import annotations

from dataclasses import dataclass
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


CORPORA: dict[str, Corpus] = {}
"""Every registered corpus by name; pipeline.corpora imports its adapters before it reads this."""


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
        if name in CORPORA:
            raise ValueError(f"a corpus named {name!r} is already registered")
        CORPORA[name] = Corpus(name, description, tuple(class_names), load, derive_classes)
        return load

    return wrapper
