"""avstore as a library: open a shared feature store and feed its clips to your own model.

Why a Python API and not only the CLI: labs share one store so that everyone can train their own models on
it, in their own notebooks and training loops. Reading it with raw zarr means knowing the group layout and
re-implementing which clips are usable, how the actor-disjoint splits and folds are made and which label a
clip has; any difference from `train` makes a notebook's numbers incomparable with the lab's runs. So this
module hands out the very rows, tensors and labels `train` uses: the selection is encoders/rows.py's
`select_rows` (which `train` calls too), the tensors are stores/torchdata.py's, and the loader is `train`'s
fast batch path (encoders/loader.py). Nothing here writes: a store opens read-only unless asked.

    import avstore
    store = avstore.open_store("data/stores/crema-d.zarr")       # or an fsspec URL: s3://bucket/crema-d.zarr
    store.feature_sets(); store.clips(); store.statuses(); store.splits(); store.folds(5)
    dataset = store.dataset("train", input_kind="image", modality="audio", fusion="none")
    batches = store.loader("train", input_kind="video", modality="av", fusion="concat", batch_size=16, seed=0)

Recipes (what a model reads) are named as `train` names them: the input kind of an encoder (`image`, `video`,
`pair-image`, `pair-video`, `sequences`; or `encoder="resnet18"` for that encoder's), a modality (`audio`,
`vision`, `av`) and a fusion (`none`, `concat`, `concat224`, `stack`, `sum`, `ffls`, `fslf`, `ofos`, `rfas`).
Splits and folds take `train`'s options too: `split_seed`, `fold`/`folds`, `include_broken`, `target`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from encoders import partition as run_partition
from encoders.loader import Loader, LoaderConfig, default_workers
from encoders.rows import RowOptions, Selection, hold_splits, select_rows
from stores.splits import PARTITIONS, generations, replay_folds
from stores.state import check_finished
from stores.store import FeatureStore
from stores.torchdata import StoreSplit, to_model_inputs

__all__ = ["open_store", "Store", "FeatureSetInfo", "Clip", "Example", "Batch", "ClipDataset", "Batches"]


def open_store(location: str | Path, mode: str = "r", *, allow_partial: bool = False) -> "Store":
    """Open the store at `location` (a local path or an fsspec URL such as s3://bucket/store.zarr).

    Read-only by default (`mode="r"`): a shared store is read by many and written by one extract, so a reader
    that could write would risk everyone's data; "r+" opens it writable, for tools that derive features.
    Its clips are read only once the store is finished (no extract running or interrupted), as `train` reads
    them; `allow_partial=True` reads the clips committed so far (like `train --allow-partial`).
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode takes 'r' (read-only, the default) or 'r+' (writable), not '{mode}'")
    return Store(FeatureStore.open(location, mode=mode), allow_partial=allow_partial)


class FeatureSetInfo(NamedTuple):
    """One feature set of a store: its kind (faces, audio, fusion-<name>, lld, embed), group name, fingerprint and
    the parameters it was computed with (the fingerprint is their hash: same parameters, same features)."""

    kind: str
    name: str
    fingerprint: str
    params: dict


class Clip(NamedTuple):
    """One row of the clip table, with the label's class name (the store numbers the classes)."""

    row: int
    clip_id: str
    speaker: str
    label: str
    split: str
    broken: bool


class Example(NamedTuple):
    """One clip as a model reads it: its inputs (float tensors in the encoder's layout), label, speaker, clip id.
    torch's default collate turns a list of these into one batched Example."""

    inputs: list[torch.Tensor]
    label: int
    speaker: str
    clip_id: str


class Batch(NamedTuple):
    """A batch from `Store.loader`: inputs and labels on the loader's device, speakers and clip ids, store rows."""

    inputs: list[torch.Tensor]
    labels: torch.Tensor
    speakers: list[str]
    clip_ids: list[str]
    rows: np.ndarray


class Store:
    """A feature store opened by `open_store`: what it holds, and its clips as Datasets and loaders.

    Wraps stores/store.FeatureStore (`feature_store`), which stays the one reader of the layout."""

    def __init__(self, feature_store: FeatureStore, *, allow_partial: bool = False) -> None:
        self.feature_store = feature_store
        self.allow_partial = allow_partial
        self._checked = False

    @property
    def location(self) -> str:
        return self.feature_store.location

    @property
    def writable(self) -> bool:
        return self.feature_store.writable

    @property
    def class_names(self) -> list[str]:
        """Class names, in label order: label k is class_names[k]."""
        return self.feature_store.class_names

    def __repr__(self) -> str:
        return f"avstore.Store('{self.location}', {len(self.feature_store)} clips, {'writable' if self.writable else 'read-only'})"

    # ---- what the store holds ---------------------------------------------------------------------------
    def feature_sets(self, kind: str | None = None) -> list[FeatureSetInfo]:
        """Every feature set (or those of `kind`): a store may hold several, e.g. faces at two sizes."""
        return [FeatureSetInfo(s.kind, s.name, s.fingerprint, dict(s.params)) for s in self.feature_store.feature_sets(kind)]

    def clips(self) -> list[Clip]:
        """The clip table, one Clip per row (`pandas.DataFrame(store.clips())` makes it a data frame)."""
        table, names = self.feature_store.clip_table(), self.class_names
        return [Clip(row, str(c), str(s), names[int(label)], str(p), bool(b))
                for row, (c, s, label, p, b) in enumerate(zip(table["clip_id"], table["speaker"], table["label"], table["split"], table["broken"]))]

    def statuses(self) -> dict[str, dict[str, int]]:
        """Feature set name -> {status: clips}: how each clip fared (ok, no_face, ...; `pending`: not committed)."""
        counts = {}
        for s in self.feature_store.feature_sets():
            done, status = s.done(), s.status()
            counted = collections.Counter(str(x) for x in status[done])
            counts[s.name] = {**dict(sorted(counted.items())), **({"pending": int((~done).sum())} if (~done).any() else {})}
        return counts

    def splits(self, *, split_seed: int | None = None, fold: int | None = None, folds: int = 5) -> dict[str, str]:
        """Speaker -> train / val / test: the stored split, the stable rule replayed with `split_seed`, or k-fold
        round `fold` of `folds` (test = that fold), exactly as `train --split-seed/--fold/--folds` makes them."""
        table = self.feature_store.clip_table()
        split = run_partition.split_column(self.feature_store, table, split_seed=split_seed, fold=fold, folds=folds)
        return {str(s): str(p) for s, p in zip(table["speaker"], split)}

    def folds(self, folds: int = 5, *, seed: int = 0) -> dict[str, int]:
        """Speaker -> fold 0..folds-1 of k-fold by actor (the folds `train --fold` tests on, `--split-seed` = seed)."""
        speakers = [str(s) for s in self.feature_store.clip_table()["speaker"]]
        return replay_folds(generations(speakers, self.feature_store.speaker_batches), k=folds, seed=seed)

    # ---- what a model reads -----------------------------------------------------------------------------
    def select(self, *, encoder: str | None = None, **options: Any) -> Selection:
        """The rows a run with these options reads (encoders/rows.py `select_rows`, as `train` calls it).

        `options` are RowOptions fields (input_kind, modality, fusion, split_seed, fold, folds, include_broken,
        target, faces, audio, ...); `encoder` takes its input kind from the encoder registry instead."""
        if not self._checked:  # once per opened store: a listing and two small files
            check_finished(self.location, allow_partial=self.allow_partial)
            self._checked = True
        known = {f.name for f in fields(RowOptions)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))} and encoder")
        if encoder is not None:
            from encoders.registry import get_spec

            spec = get_spec(encoder)
            options = {"input_kind": spec.input_kind, "square_only": spec.square_input, **options}
        return select_rows(self.feature_store, RowOptions(**options))

    def _split_selection(self, split: str, options: dict) -> Selection:
        if split not in PARTITIONS:
            raise ValueError(f"split takes {' | '.join(PARTITIONS)}, not '{split}'")
        return self.select(**options)

    def partition(self, **options: Any) -> dict:
        """{split: {"speakers", "clips"}, "fold_rule"}: the usable clips of each split, as a `train` run with these
        options records them in its partition.json."""
        selection = self.select(**options)
        return run_partition.record(selection.table, selection.rows)

    def dataset(self, split: str = "train", *, in_memory: bool | None = None, max_memory_gb: float | None = None,
                device: str = "cpu", **options: Any) -> "ClipDataset":
        """A torch Dataset of `split` ("train", "val", "test") for a recipe and split options (`select`).

        Held in memory when it fits `train`'s budget (`max_memory_gb`, else the default for `device`), else
        read from the store per item; `in_memory` forces either."""
        selection = self._split_selection(split, options)
        if in_memory is not None:
            max_memory_gb = float("inf") if in_memory else 0.0
        splits, _ = hold_splits(selection, (split,), max_memory_gb, device)
        return ClipDataset(splits[split], selection, self.class_names)

    def loader(self, split: str = "train", *, batch_size: int = 16, seed: int = 0, shuffle: bool | None = None,
               max_memory_gb: float | None = None, device: str = "cpu", workers: int | None = None, **options: Any) -> "Batches":
        """Batches of `split` through `train`'s own loader: block-shuffled by `seed` as `train --seed` shuffles
        (the k-th pass over "train" is `train`'s epoch k), in memory or streamed by `train`'s budget rule,
        sharded by rank under torch.distributed (equal shares when shuffled, every clip once otherwise).

        `shuffle` defaults to True for "train" only; `workers`: streaming processes (default: from the CPU count)."""
        selection = self._split_selection(split, options)
        splits, _ = hold_splits(selection, (split,), max_memory_gb, device)
        shuffle = split == "train" if shuffle is None else shuffle
        rank, world = ((torch.distributed.get_rank(), torch.distributed.get_world_size())
                       if torch.distributed.is_available() and torch.distributed.is_initialized() else (0, 1))
        return Batches(splits, split, selection, batch_size=batch_size, seed=seed if shuffle else None, device=device,
                       workers=default_workers() if workers is None else workers, rank=rank, world=world)


class ClipDataset(torch.utils.data.Dataset):
    """One split as Examples (inputs, label, speaker, clip id), for any torch DataLoader or sampler.

    Items are the stored uint8 rows turned into float model inputs one at a time (stores/torchdata.py);
    `Store.loader` is the faster path for whole batches."""

    def __init__(self, split: StoreSplit, selection: Selection, class_names: list[str]) -> None:
        self.split, self.recipe, self.class_names = split, selection.recipe, class_names
        self.rows = split.rows
        self.clip_ids = [str(c) for c in selection.table["clip_id"][self.rows]]
        self.speakers = [str(s) for s in selection.table["speaker"][self.rows]]

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Example:
        raw = self.split.read(np.asarray([i]))
        inputs = [x[0] for x in to_model_inputs(self.recipe, raw)]
        return Example(inputs, int(self.split.labels[i]), self.speakers[i], self.clip_ids[i])


class Batches:
    """An iterable of Batch: each `for` loop is one pass over the split (one epoch), as `train` runs them.

    Built on encoders/loader.Loader, so a batch's uint8 rows are copied once (in memory) or decoded by
    persistent worker processes (streamed), and turned into float on `device`. Call `close()` (or use `with`)
    to stop the workers early."""

    def __init__(self, splits: dict[str, StoreSplit], split: str, selection: Selection, *, batch_size: int, seed: int | None,
                 device: str, workers: int, rank: int, world: int) -> None:
        self.split, self.recipe, self.batch_size, self.rank, self.world = split, selection.recipe, batch_size, rank, world
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.rows = splits[split].rows
        self.clip_ids = np.asarray([str(c) for c in selection.table["clip_id"]], dtype=object)
        self.speakers = np.asarray([str(s) for s in selection.table["speaker"]], dtype=object)
        self.in_memory = splits[split].memory is not None
        self._loader = Loader(splits, LoaderConfig(workers=workers), device)

    def __len__(self) -> int:
        """Batches per pass on this rank."""
        n = len(self.rows)
        mine = n // self.world if self.generator is not None else len(np.array_split(np.arange(n), self.world)[self.rank])
        return -(-mine // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        batches = self._loader.batches(self.split, self.batch_size, generator=self.generator, rank=self.rank, world=self.world)
        for raw, labels, positions in batches:
            rows = self.rows[positions]
            yield Batch(to_model_inputs(self.recipe, raw), labels, self.speakers[rows].tolist(), self.clip_ids[rows].tolist(), rows)

    def close(self) -> None:
        self._loader.close()

    def __enter__(self) -> "Batches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
