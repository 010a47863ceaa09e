"""Seed 002's ladder network: its losses, its skip paths, the semi-supervised mode, and end to end from a store
with ComParE LLDs (extract --lld) and face embeddings (cli.py embed)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

import cli

from encoders.embed import EmbedConfig, run_embed
from encoders.ladder import LadderConfig, LadderNetwork, supervised_loss
from encoders.ladder_train import labelled_mask
from encoders.significance import corrected_t_test
from encoders.train import TrainConfig, train
from pipeline.audio import MelConfig
from pipeline.compare import LldConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, run_extract
from pipeline.splits import assign_splits
from tests.conftest import run_cli

CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def toy(n=48, t=4, da=10, dv=12, seed=0):
    """Sequences whose class shows in both modalities' means."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 6
    a = torch.randn(n, t, da, generator=g) + y[:, None, None].float() * 0.5
    v = torch.randn(n, t, dv, generator=g) - y[:, None, None].float() * 0.5
    return [a, torch.ones(n, t, dtype=torch.bool), v, torch.ones(n, t, dtype=torch.bool)], y


def model_for(inputs, **config):
    torch.manual_seed(0)
    m = LadderNetwork(audio_dim=inputs[0].shape[-1], video_dim=inputs[2].shape[-1], num_classes=6, config=LadderConfig(modality_layers=(16, 8), cross_layers=(8,), **config))
    from encoders.ladder import pool

    m.set_input_stats(pool(inputs[0], inputs[1]), pool(inputs[2], inputs[3]))
    return m


def test_reconstruction_loss_decreases_with_training():
    inputs, y = toy()
    model = model_for(inputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1)
    losses = []
    for _ in range(30):
        out = model.ladder(*inputs)
        loss = out["unsupervised"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses[::10]


@pytest.mark.parametrize("path", ["av:0", "a->v:0", "a->v:1", "a->v:2", "v->a:0", "v->a:1", "v->a:2"])
def test_every_skip_path_reaches_the_output(path):
    inputs, _ = toy()
    model = model_for(inputs).eval()  # eval: batch norm from running stats, so the two calls differ only by the skip
    torch.manual_seed(5)
    full = model.ladder(*inputs)
    torch.manual_seed(5)
    cut = model.ladder(*inputs, zero_skip=path)
    name = path.split(":")[0]
    bottom = lambda o: o["reconstructions"][name][-1]  # noqa: E731
    assert not torch.allclose(bottom(full), bottom(cut))
    if name != "av":
        other = "v->a" if name == "a->v" else "a->v"
        assert torch.equal(full["reconstructions"][other][-1], cut["reconstructions"][other][-1])  # only that path moved


def test_supervised_loss_is_the_mean_of_three_heads_over_labelled_clips():
    logits = {h: torch.randn(4, 6) for h in ("av", "a", "v")}
    y = torch.tensor([0, -1, 2, -1])
    expected = sum(torch.nn.functional.cross_entropy(logits[h][[0, 2]], y[[0, 2]]) for h in logits) / 3
    assert torch.allclose(supervised_loss(logits, y), expected)
    assert float(supervised_loss(logits, torch.full((4,), -1))) == 0.0


def test_labelled_fraction_keeps_half_of_every_class():
    labels = np.repeat(np.arange(6), 4)
    keep = labelled_mask(labels, 0.5, seed=0)
    assert keep.sum() == 12 and all(keep[labels == c].sum() == 2 for c in range(6))
    assert labelled_mask(labels, 1.0, seed=0).all()


# The end-to-end tests share one small store: 4 actors x 1 sentence (24 clips: 2 actors train, 1 validates, 1 is
# the held-out test actor), 4 frames of 32 px, and facenet embeddings at 80 px (its smallest input; 512-d, so
# the ladder is ~1 M parameters), and the concat fusion the preset's resnet18 baseline reads. Torch runs on one thread here and in the CLI subprocesses: on a loaded 2-core
# machine two OpenMP threads per process made every step of these tiny networks 10-25 times slower.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ONE_THREAD.items():
            patch.setenv(key, value)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(folder, actors=4, sentences=1, seed=1)
    return folder


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory) -> str:
    records = assign_splits(load_corpus("sample", corpus), seed=0)
    location = str(tmp_path_factory.mktemp("store") / "s.zarr")
    config = ExtractConfig(faces=FaceConfig(frames=4, size=32, detect_every=2), mel=MelConfig(n_mels=32), fusions=("concat",), lld=LldConfig())  # concat: the preset's baseline
    run_extract(records, location, config, dataset="sample", class_names=CLASSES, workers=0, progress=False)
    made, n = run_embed(location, EmbedConfig(backbone="facenet", size=80), device="cpu", progress=False)  # in-process: a CLI start costs ~6 s of imports
    assert n == 24 and made.params["random_init"]
    return location


LADDER = ("train", "--encoder", "ladder", "--epochs", "10", "--batch-size", "8", "--device", "cpu", "--no-progress", "--lr", "0.003")


@pytest.mark.slow
def test_ladder_beats_chance_on_a_held_out_actor_and_flags_random_embeddings(store, tmp_path):
    result = run_cli(*LADDER, "--store", store, "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["speakers"]["test"] == 1 and metrics["test"]["accuracy"] > 1 / 6 + 0.15, metrics["test"]["accuracy"]
    assert metrics["store"]["embeddings_random_init"] and metrics["warnings"]
    assert {"lld", "embed"} <= set(metrics["store"]["fingerprints"])


@pytest.mark.slow
def test_half_labelled_uses_the_other_half_unlabelled(store, tmp_path):
    # in-process (a CLI start costs ~6 s of imports); the CLI's --labelled-fraction is checked by the bad-input tests below
    config = TrainConfig(encoder="ladder", modality="av", fusion="none", epochs=2, batch_size=8, lr=0.003, device="cpu", labelled_fraction=0.5)
    train(store, config, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    n = metrics["clips"]["train"]
    assert metrics["labelled"]["train_labelled"] == n // 2 and metrics["labelled"]["train_unlabelled"] == n - n // 2
    for epoch in metrics["history"]:  # every clip went through the network each epoch, half of them without a label
        assert epoch["unlabelled_seen"] == n - n // 2 and epoch["labelled_seen"] == n // 2
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert len(partition["train"]["unlabelled"]) == n - n // 2 and set(partition["train"]["unlabelled"]) <= set(partition["train"]["clips"])


PRESET = ("sweep", "--preset", "ladder-crema-d", "--folds", "3", "--seeds", "0", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress")


@pytest.mark.heavy
def test_ladder_preset_reduced_writes_seed_002s_table_with_p_values(store, tmp_path, capsys):
    out = tmp_path / "preset"
    result = run_cli(*PRESET, "--store", store, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/metrics.json")}
    arms = ("ladder", "ladder-no-cross-skips", "ladder-no-reconstruction", "resnet18-av-concat")
    assert sorted(runs) == sorted(f"{arm}-seed0-fold{k}of3" for arm in arms for k in range(3))  # 4 configurations x 3 folds x 1 seed
    assert all({"macro_precision", "macro_recall", "micro_precision", "micro_recall", "micro_f1"} <= set(r["test"]) for r in runs.values())
    assert [runs[f"{arm}-seed0-fold0of3"]["config"]["ladder_cross_skips"] for arm in arms[:3]] == [True, False, True]
    assert [runs[f"{arm}-seed0-fold0of3"]["config"]["ladder_reconstruction"] for arm in arms[:3]] == [True, True, False]
    assert runs["resnet18-av-concat-seed0-fold0of3"]["fusion"] == "concat"

    table = (out / "report" / "ladder-crema-d.md").read_text()
    assert "| Configuration | Macro P | Macro R | Macro F1 | Accuracy (= micro P, R, F1) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "(n=3)" in line]
    assert len(rows) == 4 and "p =" not in rows[0] and all(row.count("p = ") == 4 for row in rows[1:])
    assert "9 run(s) read face embeddings from a randomly initialised backbone" in table  # the ladder's, not resnet18's
    # the CSV's p-value is the corrected resampled t-test over the same folds, recomputed here from the runs
    by_fold = lambda arm: [runs[f"{arm}-seed0-fold{k}of3"]["test"]["macro_f1"] for k in range(3)]  # noqa: E731
    row = next(r for r in csv.DictReader((out / "report" / "ladder-crema-d.csv").open()) if r["slug"] == "resnet18-av-concat" and r["metric"] == "macro_f1")
    ratio = np.mean([r["clips"]["test"] / r["clips"]["train"] for name, r in runs.items() if name.startswith(("ladder-seed", "resnet18"))])
    expected = corrected_t_test(np.subtract(by_fold("ladder"), by_fold("resnet18-av-concat")), ratio)[2]
    assert float(row["p"]) == pytest.approx(expected, nan_ok=True)
    assert (out / "report" / "ladder-crema-d.png").read_bytes()[:4] == b"\x89PNG"

    # resuming with another configuration would mix 2- and 3-epoch runs in one table: refused before anything trains
    # (in-process: a CLI start costs ~6 s of imports; the resume itself is sweep's, tested in test_train.py)
    stale = TrainConfig(encoder="ladder", modality="av", fusion="none", epochs=3, batch_size=8, seed=0, fold=0, folds=3)
    with pytest.raises(typer.Exit) as refused:
        cli.run_plan(store, [(stale, out / "resnet18-av-concat-seed0-fold0of3"), (stale, out / "ladder-seed0-fold0of3")], progress=False)
    assert refused.value.exit_code == 2 and "epochs=2 (asked 3)" in capsys.readouterr().err
    assert len(list(out.glob("*/metrics.json"))) == 12


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_labelled_fraction_outside_0_1_is_one_line_exit_2(tmp_path, fraction):
    result = run_cli("train", "--encoder", "ladder", "--labelled-fraction", fraction, "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "r"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--labelled-fraction" in result.stderr
    assert not (tmp_path / "r").exists()


def test_ladder_on_a_store_without_llds_or_embeddings_names_the_command(corpus, tmp_path):
    records = assign_splits(load_corpus("sample", corpus), seed=0)[::4]
    location = str(tmp_path / "s.zarr")
    run_extract(records, location, ExtractConfig(faces=FaceConfig(frames=2, size=32, detect_every=2), mel=MelConfig(n_mels=16), fusions=()),
                dataset="sample", class_names=CLASSES, workers=0, progress=False)
    result = run_cli("train", "--encoder", "ladder", "--store", location, "--out", str(tmp_path / "r"), "--no-progress")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--lld" in result.stderr and "extract" in result.stderr
    assert not (tmp_path / "r").exists()
