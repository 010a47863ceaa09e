"""The Python API (avstore.py): a store read as `train` reads it, from a notebook's own training loop.

The promise checked here: the rows, tensors, labels and splits the API hands out are the ones `train` uses
(one selection, encoders/rows.py), a store opens read-only, and the README's example runs as printed.
Also three defects of `load_data` that the shared selection fixed: evaluate's target notes, the finished-store
check and the clip targets read more than once per run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import avstore
import encoders.rows
import encoders.targets
import stores.state
from encoders.loader import Loader, LoaderConfig
from encoders.train import TrainConfig, load_data, prepare, train
from stores.store import FeatureStore
from tests.conftest import REPO, extract_sample_store

RECIPE = dict(encoder="simple3d", modality="audio", fusion="none", target="perceived-voice")
CONFIG = TrainConfig(**RECIPE, labels="soft", epochs=2, batch_size=4, seed=3, device="cpu")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Five actors, one sentence: 30 clips (the sample's votes, a stored 3/1/1 actor split)."""
    return extract_sample_store(tmp_path_factory, "sample.zarr", actors=5, sentences=1, seed=5, frames=4, size=32)


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory) -> dict:
    """One tiny `train` run (2 epochs, perceived soft target) with its per-step trace, counting how often it
    checked the store's state and read the clip targets."""
    out, trace = tmp_path_factory.mktemp("run") / "run", tmp_path_factory.mktemp("trace")
    calls = {"store_state": 0, "clip_targets": 0}

    def counting(name, function):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapped

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AVSTORE_TRAIN_TRACE", str(trace))
        patch.setattr(stores.state, "store_state", counting("store_state", stores.state.store_state))
        counted = counting("clip_targets", encoders.targets.clip_targets)
        patch.setattr(encoders.targets, "clip_targets", counted)
        patch.setattr(encoders.rows, "clip_targets", counted)
        metrics = train(store, CONFIG, out, progress=False)
    return {"out": out, "metrics": metrics, "trace": json.loads((trace / "rank0.json").read_text()), "calls": calls}


def test_a_store_lists_its_feature_sets_clips_statuses_splits_and_folds(store):
    opened = avstore.open_store(store)
    kinds = {s.kind for s in opened.feature_sets()}
    assert {"faces", "audio", "fusion-concat"} <= kinds
    faces = opened.feature_sets("faces")[0]
    assert faces.params["frames"] == 4 and faces.name == f"faces-{faces.fingerprint}"
    clips = opened.clips()
    table = FeatureStore.open(store).clip_table()
    assert [c.clip_id for c in clips] == [str(c) for c in table["clip_id"]]
    assert [c.label for c in clips] == [opened.class_names[k] for k in table["label"]]
    statuses = opened.statuses()
    assert set(statuses) == {s.name for s in opened.feature_sets()}
    assert all(sum(counts.values()) == len(clips) for counts in statuses.values())
    assert opened.splits() == {c.speaker: c.split for c in clips}  # the stored split
    folds = opened.folds(5)
    assert sorted(folds.values()) == [0, 1, 2, 3, 4]  # five actors, one per fold
    round0 = opened.splits(fold=0, folds=5)
    assert [s for s, p in round0.items() if p == "test"] == [s for s, f in folds.items() if f == 0]


def test_a_store_opens_read_only_by_default_and_refuses_writes(store):
    opened = avstore.open_store(store)
    assert not opened.writable
    with pytest.raises(Exception, match="read.only"):
        opened.feature_store.root.attrs["touched"] = 1
    with pytest.raises(Exception, match="read.only"):
        opened.feature_store.root.create_group("scribble")
    assert "touched" not in FeatureStore.open(store).root.attrs
    with pytest.raises(ValueError, match="mode takes 'r'"):
        avstore.open_store(store, mode="w")
    with pytest.raises(ValueError, match=re.escape("split takes train | val | test, not 'tset'")):
        opened.dataset("tset", **RECIPE)
    with pytest.raises(TypeError, match="unknown option.*modalty"):
        opened.loader("train", modalty="audio")


def test_an_unfinished_store_is_read_only_with_allow_partial_as_train_reads_it(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    stores.state.mark_unfinished(copy)  # as an interrupted extract leaves it
    opened = avstore.open_store(copy)
    assert opened.feature_sets() and opened.statuses()  # what it holds can still be looked at
    with pytest.raises(stores.state.PartialStoreError, match="allow-partial"):
        opened.dataset("train", **RECIPE)
    partial = avstore.open_store(copy, allow_partial=True).dataset("train", **RECIPE)
    assert partial.clip_ids == avstore.open_store(store).dataset("train", **RECIPE).clip_ids


def test_the_api_split_rows_are_train_s_partition_json(store, trained):
    recorded = json.loads((trained["out"] / "partition.json").read_text())
    api = avstore.open_store(store).partition(**RECIPE)
    assert {k: recorded[k] for k in api} == api and set(api) == {"train", "val", "test", "fold_rule"}
    fold = TrainConfig(**RECIPE, fold=1, folds=4)
    assert {k: v for k, v in load_data(store, fold).partition.items() if k != "target"} == \
        avstore.open_store(store).partition(**RECIPE, fold=1, folds=4)


def test_the_api_batches_are_what_train_feeds(store, trained):
    """Same rows in the same order per step (train's trace), same tensors and labels as train's loader."""
    opened = avstore.open_store(store)
    with opened.loader("train", **RECIPE, batch_size=CONFIG.batch_size, seed=CONFIG.seed, workers=0) as batches:
        api = [batch for _ in range(CONFIG.epochs) for batch in batches]
    assert [b.rows.tolist() for b in api] == [step["rows"] for step in trained["trace"]["steps"]]
    data = load_data(store, CONFIG)
    loader, generator = Loader(data.splits, LoaderConfig(workers=0), "cpu"), torch.Generator().manual_seed(CONFIG.seed)
    fed = [(prepare(data.recipe, raw), labels) for _ in range(CONFIG.epochs)
           for raw, labels, _ in loader.batches("train", CONFIG.batch_size, generator=generator)]
    assert len(fed) == len(api)
    table = FeatureStore.open(store).clip_table()
    for batch, (inputs, labels) in zip(api, fed):
        assert all(torch.equal(a, b) for a, b in zip(batch.inputs, inputs)) and torch.equal(batch.labels, labels)
        assert batch.speakers == [str(s) for s in table["speaker"][batch.rows]]
        assert batch.clip_ids == [str(c) for c in table["clip_id"][batch.rows]]
    with opened.loader("train", **RECIPE, batch_size=CONFIG.batch_size, seed=CONFIG.seed, workers=0, max_memory_gb=0.0) as streamed:
        assert not streamed.in_memory
        first = next(iter(streamed))
    assert first.rows.tolist() == api[0].rows.tolist() and all(torch.equal(a, b) for a, b in zip(first.inputs, api[0].inputs))


@pytest.mark.parametrize("recipe", [
    dict(input_kind="image", modality="audio", fusion="none"), dict(input_kind="video", modality="vision", fusion="none"),
    dict(input_kind="video", modality="av", fusion="concat"), dict(input_kind="image", modality="av", fusion="stack", fuse_on_device=True),
    dict(input_kind="pair-video", modality="av", fusion="none")])
def test_a_dataset_item_is_the_loader_s_row_for_every_kind_of_recipe(store, recipe):
    opened = avstore.open_store(store)
    dataset = opened.dataset("val", **recipe)
    with opened.loader("val", **recipe, batch_size=len(dataset), workers=0) as batches:  # evaluation order: the split's
        batch = next(iter(batches))
    for i in (0, len(dataset) - 1):
        item = dataset[i]
        assert len(item.inputs) == len(batch.inputs) and all(torch.equal(a, b[i]) for a, b in zip(item.inputs, batch.inputs))
        assert (item.label, item.speaker, item.clip_id) == (int(batch.labels[i]), batch.speakers[i], batch.clip_ids[i])


def _rank_batches(rank: int, world: int, store: str, port: int, out: str) -> None:
    """One torch.distributed (gloo) process: the rows of its API batches, train and test."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        opened, rows = avstore.open_store(store), {}
        for split in ("train", "test"):
            with opened.loader(split, **RECIPE, batch_size=4, seed=CONFIG.seed, workers=0) as batches:
                rows[split] = [b.rows.tolist() for b in batches]
                rows[f"{split}_len"] = len(batches)
        Path(out, f"rank{rank}.json").write_text(json.dumps(rows))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_under_torch_distributed_each_rank_takes_its_share_of_the_same_order(store, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank_batches, args=(2, store, port, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    opened = avstore.open_store(store)
    with opened.loader("train", **RECIPE, batch_size=4, seed=CONFIG.seed, workers=0) as batches:
        order = [r for b in batches for r in b.rows.tolist()]
    half = len(order) // 2
    assert [r for b in ranks[0]["train"] for r in b] == order[:half]  # equal, contiguous shares of one epoch order
    assert [r for b in ranks[1]["train"] for r in b] == order[half : 2 * half]
    assert all(len(r["train"]) == r["train_len"] for r in ranks)
    test = opened.partition(**RECIPE)["test"]["clips"]
    assert sum(len(b) for r in ranks for b in r["test"]) == len(test)  # evaluation: every clip once over the ranks
    assert sorted(x for r in ranks for b in r["test"] for x in b) == sorted(set(x for r in ranks for b in r["test"] for x in b))


class TinyNet(torch.nn.Module):
    """A model of the user's own, not from the encoder registry: one conv over the audio chunks, one linear."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 8, 3, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool3d(2)
        self.head = torch.nn.Linear(8 * 2 ** 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


def test_a_tiny_model_of_the_test_trains_through_the_api_alone(store):
    torch.manual_seed(0)
    opened = avstore.open_store(store)
    model = TinyNet(len(opened.class_names))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    with opened.loader("train", input_kind="video", modality="audio", fusion="none", batch_size=6, seed=0, workers=0) as batches:
        for _ in range(15):
            total = 0.0
            for batch in batches:
                loss = torch.nn.functional.cross_entropy(model(*batch.inputs), batch.labels)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch.labels)
            losses.append(total / len(batches.rows))
    assert losses[-1] < 0.7 * losses[0], losses
    test = opened.dataset("test", input_kind="video", modality="audio", fusion="none")
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=len(test))))  # torch's own collate
    assert batch.inputs[0].shape[:2] == (len(test), 1) and batch.label.dtype == torch.long
    assert set(batch.speaker).isdisjoint({s for s, p in opened.splits().items() if p != "test"})  # unseen actors
    with torch.no_grad():
        assert model(*batch.inputs).shape == (len(test), len(opened.class_names))


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Using a store from Python", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_verbatim_on_a_store(store, tmp_path, monkeypatch, capsys):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 15
    (tmp_path / "data" / "stores").mkdir(parents=True)
    (tmp_path / "data" / "stores" / "crema-d.zarr").symlink_to(store)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert "fusion-concat" in capsys.readouterr().out


# ---- load_data's defects, fixed by the shared selection --------------------------------------------------
def test_train_checks_that_the_store_is_finished_once(trained):
    assert trained["calls"]["store_state"] == 1


def test_train_reads_the_clip_targets_once(trained):
    assert trained["metrics"]["targets"]["trained"]["labels"] == "soft"  # soft labels and scoring read them too
    assert trained["calls"]["clip_targets"] == 1


def test_evaluating_a_recorded_partition_keeps_the_target_notes(store, tmp_path):
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    config = TrainConfig(**RECIPE)
    before = load_data(str(copy), config)
    row = int(before.splits["train"].rows[0])
    FeatureStore.open(copy, mode="r+").root["clips/votes"][row, 0] = 0  # this clip lost its voice votes
    after = load_data(str(copy), config, before.partition, allow_partial=True)  # as evaluate reads a run's clips
    assert row not in after.splits["train"].rows
    assert any("without voice votes" in note for note in after.notes), after.notes
