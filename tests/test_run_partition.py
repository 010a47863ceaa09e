"""A run remembers its exact partition, and evaluate uses it whatever the store says today."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from encoders.metrics import classification_metrics
from encoders.partition import PARTITION_FILE, digest
from encoders.predictions import PREDICTIONS_FILE
from encoders.train import TrainConfig, evaluate_run, train
from pipeline.audio import MelConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, run_extract
from stores.store import FeatureStore
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # one extraction and one training run: about a minute on 2 cores


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny store (4 actors) and one resnet18 vision run trained on it."""
    corpus = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(corpus, actors=4, sentences=1, seed=2)
    location = str(tmp_path_factory.mktemp("store") / "s.zarr")
    config = ExtractConfig(faces=FaceConfig(frames=4, size=32, detect_every=2), mel=MelConfig(n_mels=32), fusions=())
    run_extract(load_corpus("sample", corpus), location, config, dataset="sample",
                class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=0, progress=False)
    out = tmp_path_factory.mktemp("runs") / "r"
    train(location, TrainConfig(encoder="resnet18", modality="vision", fusion="none", epochs=1, batch_size=8), out, progress=False)
    return location, out


def copy_store(location: str, tmp_path) -> str:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(location, copy)
    return str(copy)


def test_a_run_records_the_speakers_and_clips_of_each_partition(run):
    location, out = run
    recorded = json.loads((out / PARTITION_FILE).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partition"] == {"file": PARTITION_FILE, "sha256": digest(recorded)}
    table = FeatureStore.open(location).clip_table()
    for name in ("train", "val", "test"):
        rows = np.flatnonzero(table["split"] == name)
        assert recorded[name]["speakers"] == sorted(set(table["speaker"][rows]))
        assert set(recorded[name]["clips"]) <= set(table["clip_id"][rows]) and recorded[name]["clips"]
        assert len(recorded[name]["clips"]) == metrics["clips"][name]
    assert recorded["fold_rule"] == 2


def test_a_run_writes_its_per_clip_test_predictions(run):
    location, out = run
    predictions = json.loads((out / PREDICTIONS_FILE).read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    table = FeatureStore.open(location).clip_table()
    assert predictions["clip_id"] == json.loads((out / PARTITION_FILE).read_text())["test"]["clips"]
    rows = [list(table["clip_id"]).index(c) for c in predictions["clip_id"]]
    assert predictions["speaker"] == [str(s) for s in table["speaker"][rows]] and predictions["label"] == table["label"][rows].tolist()
    assert predictions["sentence"] == [str(s) for s in table["sentence"][rows]] and predictions["dataset"] == "sample"
    again = classification_metrics(predictions["label"], predictions["predicted"], predictions["class_names"])
    assert again["confusion"] == metrics["test"]["confusion"]  # the same predictions the run's metrics came from


def test_evaluate_uses_the_runs_partition_when_the_store_moved_its_speakers(run, tmp_path):
    location, out = run
    recorded = json.loads((out / PARTITION_FILE).read_text())
    reference = evaluate_run(out)
    moved = copy_store(location, tmp_path)
    group = zarr.open_group(moved, mode="r+")
    split = group["clips/split"][:]
    test, train_ = recorded["test"]["speakers"][0], recorded["train"]["speakers"][0]
    speakers = group["clips/speaker"][:]
    split[speakers == test], split[speakers == train_] = "train", "test"  # the store now leaks the run's test actor
    group["clips/split"][:] = split
    report = evaluate_run(out, store=moved)
    assert report["test"]["n"] == len(recorded["test"]["clips"]) == reference["test"]["n"]
    assert report["test"]["confusion"] == reference["test"]["confusion"]  # the same clips, the same predictions
    assert len(report["warnings"]) == 1 and f"test speaker {test} is now in train" in report["warnings"][0]
    cli = run_cli("evaluate", "--run", str(out), "--store", moved)
    assert cli.returncode == 0 and cli.stderr.startswith("warning: the store now places 2 of this run's speakers")


def test_evaluate_of_a_store_that_lost_test_clips_says_how_many_and_exits_2(run, tmp_path):
    location, out = run
    recorded = json.loads((out / PARTITION_FILE).read_text())
    damaged = copy_store(location, tmp_path)
    group = zarr.open_group(damaged, mode="r+")
    ids = list(group["clips/clip_id"][:])
    faces = next(name for name in group["features"].group_keys() if name.startswith("faces-"))
    done = group[f"features/{faces}/done"][:]
    for clip in recorded["test"]["clips"][:2]:
        done[ids.index(clip)] = 0  # re-extraction pending: these clips are not usable now
    group[f"features/{faces}/done"][:] = done
    result = run_cli("evaluate", "--run", str(out), "--store", damaged)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"lost 2 of the run's {len(recorded['test']['clips'])} test clips" in result.stderr
