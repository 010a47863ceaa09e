"""Training on what raters perceived (`train --target ... --labels hard|soft`), and every run scored against the
intended and the three perceived targets side by side, by `train`, `evaluate` and `report`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from encoders.targets import TARGETS, ClipTargets, batch_target, js_agreement, score_targets, training_targets
from encoders.train import TrainConfig, load_data
from pipeline.records import CREMA_D_EMOTIONS, ClipRecord
from stores.store import FeatureStore, StoreError
from tests.conftest import extract_sample_store, run_cli

TINY = ["--encoder", "simple3d", "--fusion", "concat", "--epochs", "1", "--batch-size", "6", "--no-progress"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Three actors (train / val / test), one sentence: 18 clips with the sample's generated votes."""
    return extract_sample_store(tmp_path_factory, "sample.zarr", actors=3, sentences=1, seed=2, frames=4, size=32)


def test_perceived_targets_are_the_majority_and_soft_ones_the_vote_distribution(store):
    hard = load_data(store, TrainConfig(encoder="simple3d", fusion="concat", target="perceived-voice"))
    soft = load_data(store, TrainConfig(encoder="simple3d", fusion="concat", target="perceived-voice", labels="soft"))
    votes = FeatureStore.open(store).root["clips/votes"][:, 0]  # voice
    rows = hard.splits["train"].rows
    for counts, label in zip(votes[rows], hard.splits["train"].labels.tolist()):
        assert counts[label] == counts.max()  # the majority (one of the tied classes on a tie)
    expected = votes[rows] / votes[rows].sum(1, keepdims=True)
    assert np.allclose(soft.soft["train"].numpy(), expected, atol=1e-6)
    labels = torch.zeros(2, dtype=torch.long)
    assert torch.equal(batch_target(soft.soft, labels, np.array([1, 0])), soft.soft["train"][[1, 0]])
    assert batch_target({}, labels, np.array([1, 0])) is labels
    assert hard.partition["target"] == {"target": "perceived-voice", "labels": "hard"}


def test_scores_against_every_target_and_the_soft_measures():
    targets = ClipTargets(intended=np.array([0, 1, 2]), clip_ids=np.array(["a", "b", "c"]),
                          votes={"voice": np.array([[4, 0, 0], [0, 1, 3], [0, 0, 0]]), "face": np.zeros((3, 3), int),
                                 "av": np.array([[2, 2, 0], [0, 4, 0], [1, 0, 3]])})
    log_q = np.log(np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]]))
    scores = score_targets(log_q, targets, np.arange(3), ["x", "y", "z"])
    test = scores["test"]
    assert set(test) == set(TARGETS)
    assert test["intended"]["accuracy"] == pytest.approx(2 / 3)
    assert test["perceived-voice"]["n"] == 2 and test["perceived-voice"]["accuracy"] == 1.0  # clip c has no voice votes
    assert test["perceived-face"] == {"n": 0}
    assert test["perceived-voice"]["cross_entropy"] == pytest.approx(np.mean([-np.log(0.8), -(0.25 * np.log(0.1) + 0.75 * np.log(0.8))]))
    assert test["perceived-voice"]["by_agreement"]["unanimous"] == {"n": 1, "accuracy": 1.0, "intended_accuracy": 1.0}
    assert scores["raters"]["voice"]["pooled"] == pytest.approx((4 + 1) / 8)
    assert js_agreement(np.array([[0.2, 0.8]]), np.log(np.array([[0.2, 0.8]])))[0] == pytest.approx(1.0)
    assert js_agreement(np.array([[1.0, 0.0]]), np.log(np.array([[1e-300, 1.0]])))[0] == pytest.approx(0.0, abs=1e-9)


def test_a_perceived_target_needs_votes_in_the_store(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=CREMA_D_EMOTIONS, split_seed=0)
    store.add_clips([ClipRecord(clip_id="a", video_path="v", label=0, emotion="ANG", speaker="1")])
    table = store.clip_table()
    with pytest.raises(StoreError, match="holds no av votes for --target perceived-av; extract with --meta"):
        training_targets(store, table, np.ones(1, bool), "perceived-av")
    assert training_targets(store, table, np.ones(1, bool), "intended")[1].tolist() == [0]


@pytest.mark.slow
def test_soft_and_hard_perceived_runs_report_all_four_targets_side_by_side(store, tmp_path):
    runs = tmp_path / "runs"
    soft = run_cli("train", *TINY, "--store", store, "--target", "perceived-av", "--labels", "soft", "--out", str(runs / "soft"))
    assert soft.returncode == 0, soft.stderr
    hard = run_cli("train", *TINY, "--store", store, "--target", "perceived-av", "--out", str(runs / "hard"))
    assert hard.returncode == 0, hard.stderr
    metrics = {kind: json.loads((runs / kind / "metrics.json").read_text()) for kind in ("soft", "hard")}
    for kind, m in metrics.items():
        assert m["config"]["target"] == "perceived-av" and m["config"]["labels"] == kind
        assert m["targets"]["trained"] == {"target": "perceived-av", "labels": kind, "tie_seed": 0}
        assert all(m["targets"]["test"][t]["n"] == 6 for t in TARGETS)  # the test actor's six clips, all four targets
        assert set(m["targets"]["raters"]) == {"voice", "face", "av"}
        assert json.loads((runs / kind / "partition.json").read_text())["target"] == {"target": "perceived-av", "labels": kind}
    assert metrics["soft"]["history"][0]["train_loss"] != metrics["hard"]["history"][0]["train_loss"]  # the soft loss is another loss
    for target in TARGETS:
        assert f"    {target}" in soft.stdout
    assert "raters against the intended emotion on these clips" in soft.stdout

    evaluated = run_cli("evaluate", "--run", str(runs / "soft"))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((runs / "soft" / "evaluate.json").read_text())["targets"]
    assert again["test"]["perceived-av"]["cross_entropy"] == pytest.approx(metrics["soft"]["targets"]["test"]["perceived-av"]["cross_entropy"])
    assert "perceived-face" in evaluated.stdout

    report = run_cli("report", "--runs", str(runs))
    assert report.returncode == 0, report.stderr
    markdown = (runs / "report" / "comparison.md").read_text()
    assert "labels=hard, target=perceived-av" in markdown and "labels=soft, target=perceived-av" in markdown  # never averaged together
    section = markdown.split("## Perceived emotion")[1]
    assert "perceived-av (soft)" in section and "perceived-av (hard)" in section
    assert all(f"vs {t}" in section for t in TARGETS) and "The raters themselves" in section
    written = (runs / "report" / "targets.csv").read_text()
    assert written.count("perceived-av (soft)") == written.count("perceived-av (hard)") == 4 * 4


def test_bad_target_options_are_refused_before_anything_is_written(store, tmp_path):
    for options, message in ((dict(labels="soft"), "needs a perceived target"), (dict(target="perceived-smell"), "--target takes intended | perceived-voice"),
                             (dict(target="perceived-av", labels="fuzzy"), "--labels takes hard | soft")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(encoder="simple3d", fusion="concat", **options).resolved()
    soft_intended = run_cli("train", *TINY, "--store", store, "--labels", "soft", "--out", str(tmp_path / "x"))
    assert soft_intended.returncode == 2 and "needs a perceived target" in soft_intended.stderr
    assert not (tmp_path / "x").exists()
