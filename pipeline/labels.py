"""Emotion names and class lists: the one table that turns what a corpus writes into avstore's codes.

Why a table: manifests are written by hand or by spreadsheets, so the same emotion arrives as `HAP`, ` hap`,
`happy` or `Happiness`. Each is mapped to one three-letter code, case-insensitively and with spaces stripped;
a label the table does not know is refused unless the corpus declares its own class list (`--classes`),
because guessing would silently make a different label map.

Class lists are numbered by position. A store's numbers never change once written: a class the corpus
brings later is appended at the end (`merge_class_lists`), never sorted in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

EMOTIONS: dict[str, tuple[str, ...]] = {
    "ANG": ("anger", "angry"),
    "DIS": ("disgust", "disgusted"),
    "FEA": ("fear", "fearful"),
    "HAP": ("happy", "happiness"),
    "NEU": ("neutral",),
    "SAD": ("sadness",),
    "CAL": ("calm",),  # RAVDESS-like corpora
    "SUR": ("surprise", "surprised"),  # RAVDESS-like corpora
}
"""Code -> other spellings accepted for it. The code itself is accepted too; all matching ignores case."""

_SPELLINGS: dict[str, str] = {spelling: code for code, others in EMOTIONS.items() for spelling in (code.casefold(), *others)}


class LabelError(ValueError):
    """A label or class list cannot be used as given; the message names it and the fix."""


def emotion_code(name: str) -> str | None:
    """The table's code for `name` (any case, surrounding spaces ignored), or None when it is not in the table."""
    return _SPELLINGS.get(name.strip().casefold())


def declared_classes(text: str) -> list[str]:
    """A class list as a user writes it (`ANG,HAP,neutral,bored`): table names become codes, others stay as
    written (stripped). Empty or repeated names are refused."""
    names = [emotion_code(part) or part.strip() for part in text.split(",")]
    if not all(names):
        raise LabelError(f"--classes '{text}' has an empty name; give names separated by commas, e.g. ANG,HAP,NEU,SAD")
    folded = [n.casefold() for n in names]
    repeated = sorted({n for n, f in zip(names, folded) if folded.count(f) > 1})
    if repeated:
        raise LabelError(f"--classes '{text}' names {', '.join(repeated)} more than once; give each class once")
    return names


def class_name(label: str, declared: Sequence[str] | None) -> str | None:
    """The class `label` belongs to: with a declared list, the declared name it matches (as a table spelling of
    it or ignoring case); without, the table's code. None when it matches nothing."""
    code = emotion_code(label)
    if declared is None:
        return code
    by_fold = {name.casefold(): name for name in declared}
    return by_fold.get((code or label.strip()).casefold())


def corpus_class_list(labels: Iterable[str], declared: Sequence[str] | None) -> list[str]:
    """A manifest's class list: the declared one as given, else its codes in alphabetical order (CREMA-D's six
    therefore keep ANG=0 ... SAD=5, and a 4-class ANG/HAP/NEU/SAD manifest numbers them 0..3)."""
    return list(declared) if declared is not None else sorted(set(labels))


def merge_class_lists(stored: Sequence[str], corpus: Sequence[str], *, declared: bool, store: str) -> list[str]:
    """The store's class list after adding a corpus's: stored names keep their numbers, new ones go at the end.

    A declared (or fixed) list states numbers, so it must agree with the store's on every position both have,
    else it is refused: renumbering would silently relabel every stored clip."""
    stored, corpus = list(stored), list(corpus)
    if not declared:
        return stored + [name for name in corpus if name not in stored]
    common = min(len(stored), len(corpus))
    if stored[:common] != corpus[:common]:
        numbered = ", ".join(f"{name}={k}" for k, name in enumerate(stored))
        raise LabelError(
            f"store '{store}' numbers its classes {numbered}, but this corpus's class list is {','.join(corpus)}; "
            f"class numbers never change in a store: pass --classes {','.join(stored + [c for c in corpus if c not in stored])}, "
            "or extract into a new --store")
    return stored + corpus[common:]
