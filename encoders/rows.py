"""Which rows of a store a model reads, in which split, with which labels: one function for every reader.

`train`, `evaluate` and the Python API (avstore.py) all call `select_rows`, so a notebook's model sees exactly
the clips a `train` run would: the same feature sets, the same usable clips (faces AND audio, and the fusion
or sequences read, committed `ok`; the corpus's broken clips left out unless asked; clips without the
target's votes left out), the same actor-disjoint split or k-fold round, or a run's recorded partition.
Two copies of these rules would drift, and a model trained in a notebook would then be compared with
`train`'s on other clips without anyone noticing.

`hold_splits` then applies the memory budget of `train` (`memory_budget`): splits that fit are read
into memory once, larger ones are streamed from Zarr.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from encoders import partition as run_partition
from encoders.loader import memory_budget
from encoders.targets import ClipTargets, clip_targets, training_targets
from stores.selection import usable_rows
from stores.sequences import sequence_sets
from stores.splits import PARTITIONS
from stores.store import FeatureSet, FeatureStore, StoreError
from stores.torchdata import InputRecipe, StoreSplit, fusion_set, recipe_for, select_feature_sets


class MissingFusionError(StoreError):
    """The store has no cached fusion for these faces and audio; `fusion` says which."""

    def __init__(self, fusion: str, location: str):
        super().__init__(f"store '{location}' has no '{fusion}' fusion yet; derive it with `python cli.py extract ... --fusion {fusion}`")
        self.fusion = fusion


@dataclass(frozen=True)
class RowOptions:
    """What a reader asks for: an input recipe (the encoder's input kind, modality, fusion), the feature sets
    when a store holds several, the split (stored, another seed, or a k-fold round) and the target."""

    input_kind: str = "video"  # image | video | pair-image | pair-video | sequences (encoders/registry.py INPUT_KINDS)
    modality: str = "av"  # audio | vision | av
    fusion: str = "concat"  # none for unimodal and pair inputs
    square_only: bool = False  # the encoder takes square images only (ViT-B/16, VideoMAE)
    fuse_on_device: bool = False  # concat/stack rebuilt from the faces and audio (stores/torchdata.py)
    faces: str | None = None  # feature-set fingerprints (prefixes), when a store holds several
    audio: str | None = None
    lld: str | None = None
    embed: str | None = None
    split_seed: int | None = None  # None: the split stored with the clips
    fold: int | None = None  # k-fold by actor: this fold is test (encoders/partition.py split_column)
    folds: int = 5
    include_broken: bool = False  # clips the corpus documents as broken (clips/broken) too
    target: str = "intended"  # intended | perceived-voice | perceived-face | perceived-av (encoders/targets.py)


@dataclass
class Selection:
    """The rows a run reads, and everything about them that was read to choose them (read once, used by all)."""

    store: FeatureStore
    recipe: InputRecipe
    sets: dict[str, str]  # part source ("faces", "audio", "fusion-<name>", "lld", "embed") -> feature set name
    faces: FeatureSet
    table: dict[str, np.ndarray]  # the clip table
    targets: ClipTargets  # every target of every row (computed once per run: training, soft labels, scoring)
    split: np.ndarray  # each row's partition under the options (stored, replayed seed, or k-fold round)
    usable: np.ndarray  # rows a model may read (statuses, broken list, target)
    rows: dict[str, np.ndarray]  # split name -> rows, in store order
    labels: np.ndarray  # the target's hard label of every row (-1 where it has none)
    excluded_broken: int = 0  # ok clips left out because the corpus flags them broken
    notes: list[str] = field(default_factory=list)  # for the log: target notes, then what moved since a recorded partition
    random_init: bool = False  # face embeddings of a randomly initialised backbone

    def arrays(self) -> list:
        """The Zarr arrays of the recipe's parts, in order."""
        return [self.store.root[f"features/{self.sets[p.source]}/{p.array}"] for p in self.recipe.parts]

    def row_nbytes(self) -> int:
        """Bytes of one row, all parts together, decoded."""
        return sum(int(np.prod(a.shape[1:])) * a.dtype.itemsize for a in self.arrays())

    def fingerprints(self) -> dict[str, str]:
        return {k: self.store.root[f"features/{v}"].attrs["fingerprint"] for k, v in self.sets.items()}


def select_rows(store: FeatureStore, options: RowOptions, recorded: dict | None = None) -> Selection:
    """The rows of each split for `options`; `recorded` (a run's partition.json) selects exactly that run's clips.

    Raises StoreError (one line, naming the fix) when a feature set, a fusion or the sequences are missing or
    ambiguous, or a split has no usable clip; ValueError for a recipe no encoder takes."""
    location = store.location
    recipe = recipe_for(options.input_kind, options.modality, options.fusion, square_only=options.square_only, fuse_on_device=options.fuse_on_device)
    faces, audio = select_feature_sets(store, options.faces, options.audio)
    sets = {"faces": faces.name, "audio": audio.name}
    sequences = None
    if any(p.source in ("lld", "embed") for p in recipe.parts):  # seed 002: LLD frames and face embeddings
        sequences = sequence_sets(store, faces, options.lld, options.embed)
        sets.update(lld=sequences[0].name, embed=sequences[1].name)
    fused = None
    if any(p.source.startswith("fusion-") for p in recipe.parts):
        fused = fusion_set(store, options.fusion, faces, audio)
        if fused is None:
            raise MissingFusionError(options.fusion, location)
        sets[f"fusion-{options.fusion}"] = fused.name
    table = store.clip_table()
    split = run_partition.split_column(store, table, split_seed=options.split_seed, fold=options.fold, folds=options.folds)
    # Clips whose faces AND audio are ok, for every modality: audio, vision and fused runs compare like with like.
    ok, excluded_broken = usable_rows(faces, audio, fused, table["broken"], include_broken=options.include_broken)
    if sequences is not None:
        ok &= sequences[0].ok() & sequences[1].ok()
    targets = clip_targets(store, table)
    ok, labels, notes = training_targets(store, table, ok, options.target, targets)  # --target: encoders/targets.py
    rows = {name: np.flatnonzero(ok & (split == name)) for name in PARTITIONS}
    if recorded is not None:
        rows, moved = run_partition.recorded_rows(table, ok, recorded, split, location)
        notes = [*notes, *moved]  # both: the target's notes and what moved since the run
    for name, r in rows.items():
        if len(r) == 0:
            raise StoreError(f"the {name} split of '{location}' has no usable clips; extract more clips or use another --split-seed")
    return Selection(store=store, recipe=recipe, sets=sets, faces=faces, table=table, targets=targets, split=split, usable=ok,
                     rows=rows, labels=labels, excluded_broken=excluded_broken, notes=notes,
                     random_init=sequences is not None and bool(sequences[1].params.get("random_init")))


@dataclass(frozen=True)
class Holding:
    """Where a run's splits live: in memory when their decoded bytes fit the budget, else streamed."""

    split_bytes: int  # the held splits' rows, decoded
    memory_limit: float  # bytes a run may hold in memory (memory_budget)
    budget: str = ""  # where memory_limit comes from: --max-memory-gb, half the available RAM, or the CPU cap

    @property
    def in_memory(self) -> bool:
        return self.split_bytes <= self.memory_limit


def hold_splits(selection: Selection, names: tuple[str, ...], max_memory_gb: float | None, device: str
                ) -> tuple[dict[str, StoreSplit], Holding]:
    """StoreSplits of `names`, all in memory or all streamed by `train`'s rule (budget: memory_budget)."""
    holding = Holding(selection.row_nbytes() * sum(len(selection.rows[n]) for n in names), *memory_budget(max_memory_gb, device))
    splits = {n: StoreSplit(selection.store.location, selection.sets, selection.recipe, selection.rows[n],
                            selection.labels[selection.rows[n]], in_memory=holding.in_memory) for n in names}
    return splits, holding
