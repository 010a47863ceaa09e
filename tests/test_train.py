"""Training straight from the store: honest splits, logits, every modality reaching the model, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.registry import get_spec, list_models
from encoders.train import TrainConfig, load_data, train
from stores.store import FeatureStore
from pipeline.fuse import FUSIONS
from stores.torchdata import ablate, recipe_for, to_model_inputs, valid_fusions
from tests.conftest import extract_sample_store, open_up, run_cli, run_cli_unprivileged

FAST = dict(epochs=12, batch_size=8)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A learnable sample corpus (6 actors: 4 train, 1 val, 1 test) extracted with every fusion."""
    return extract_sample_store(tmp_path_factory, "sample.zarr", actors=6, sentences=2, seed=1, frames=8, size=48, detect_every=3,
                                fusions=tuple(FUSIONS))


@pytest.mark.slow
@pytest.mark.parametrize("modality, fusion", [  # audio and vision alone run with make test-all; av reads both
    pytest.param("audio", "none", marks=pytest.mark.heavy), pytest.param("vision", "none", marks=pytest.mark.heavy), ("av", "concat")])
def test_training_beats_chance_clearly_on_held_out_actors(store, tmp_path, modality, fusion):
    metrics = train(store, TrainConfig(encoder="resnet18", modality=modality, fusion=fusion, **FAST), tmp_path / "run", progress=False)
    assert metrics["test"]["accuracy"] >= 0.5, metrics["test"]  # chance is 1/6
    assert metrics["test"]["n"] == 12 and metrics["speakers"] == {"train": 4, "val": 1, "test": 1}


@pytest.mark.slow
def test_run_directory_holds_everything_and_the_checkpoint_loads_safely(store, tmp_path):
    out = tmp_path / "run"
    metrics = train(store, TrainConfig(encoder="simple3d", modality="av", fusion="fslf", epochs=3, batch_size=8), out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["confusion_test.png", "learning_curve.png", "metrics.json", "model.pt", "partition.json", "predictions.json", "train.log"]
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    for split in ("train", "val", "test"):
        for key in ("accuracy", "uar", "macro_f1", "micro_f1", "per_class", "confusion"):
            assert key in written[split]
    assert len(written["history"]) == 3 and 1 <= written["best_epoch"] <= 3
    best = max(written["history"], key=lambda r: (r["val_uar"], r["val_accuracy"]))
    assert best["epoch"] == written["best_epoch"]  # chosen on validation, never on test
    assert written["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-9)  # the final scores are the best epoch's, kept on disk
    assert written["store"]["fingerprints"]["faces"] and written["seconds_per_epoch"] > 0 and written["samples_per_second"] > 0
    assert written["config"]["seed"] == 0 and written["versions"]["torch"]
    checkpoint = torch.load(out / "model.pt", weights_only=True)
    assert set(checkpoint) == {"state_dict", "config", "class_names", "image_size", "frames"}
    for png in ("confusion_test.png", "learning_curve.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_same_seed_same_numbers(store, tmp_path):
    config = TrainConfig(encoder="simple3d", modality="audio", fusion="none", epochs=2, batch_size=8, seed=3)
    a = train(store, config, tmp_path / "a", progress=False)
    b = train(store, config, tmp_path / "b", progress=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert a["test"]["confusion"] == b["test"]["confusion"]


@pytest.mark.slow
def test_streaming_from_the_store_trains_too(store, tmp_path):
    metrics = train(store, TrainConfig(encoder="resnet18", modality="vision", fusion="none", epochs=1, batch_size=16, max_memory_gb=0.0), tmp_path / "s", progress=False)
    assert metrics["inputs"]["in_memory"] is False and metrics["test"]["n"] == 12


@pytest.mark.slow
def test_max_steps_stops_after_exactly_that_many_optimiser_steps_and_still_evaluates_and_writes_the_run(store, tmp_path):
    """A fixed number of steps (bench/scale.py times training with it): 8 steps of batch 8 over 48 training clips
    are one whole epoch of 6 and 2 steps of the second, cut short mid-pass on the streamed path; every split is
    still evaluated in full and the run written."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    out, trace = tmp_path / "run", tmp_path / "trace"
    result = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "train", "--encoder", "simple3d", "--modality", "audio", "--store", store, "--epochs", "5",
         "--max-steps", "8", "--batch-size", "8", "--max-memory-gb", "0", "--loader-workers", "1", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "AVSTORE_TRAIN_TRACE": str(trace)})
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["clips"]["train"] == 48 and metrics["inputs"]["in_memory"] is False
    assert [s["epoch"] for s in json.loads((trace / "rank0.json").read_text())["steps"]] == [1] * 6 + [2] * 2  # what the loop did
    assert metrics["steps"] == 8 and metrics["config"]["max_steps"] == 8
    assert [(r["epoch"], r["steps"], r["samples"]) for r in metrics["history"]] == [(1, 6, 48), (2, 2, 16)]
    assert metrics["samples_per_second"] == pytest.approx(64 / sum(r["seconds"] for r in metrics["history"]))
    assert (metrics["train"]["n"], metrics["val"]["n"], metrics["test"]["n"]) == (48, 12, 12)  # evaluated on whole splits
    assert "stopped after 8 optimiser steps (--max-steps)" in (out / "train.log").read_text()


def kinds_with_inputs():
    for name in list_models():
        kind = get_spec(name).input_kind
        if kind == "sequences":  # the ladder's LLD and embedding inputs: tests/test_ladder.py
            continue
        for modality in ("audio", "vision", "av"):
            for fusion in valid_fusions(kind, modality):
                yield kind, modality, fusion


@pytest.mark.parametrize("kind, modality, fusion", sorted(set(kinds_with_inputs())))
def test_every_input_the_store_serves_has_the_encoder_layout_and_both_halves_matter(store, kind, modality, fusion):
    encoder = next(n for n in list_models() if get_spec(n).input_kind == kind)
    data = load_data(store, TrainConfig(encoder=encoder, modality=modality, fusion=fusion))
    split = data.splits["train"]
    raw = [m[:4] for m in split.memory]
    inputs = to_model_inputs(data.recipe, raw)
    assert all(x.dtype == torch.float32 and x.abs().max() <= 4 for x in inputs)
    channels = {"audio": 1, "vision": 3}.get(modality) or (FUSIONS[fusion].channels if fusion in FUSIONS else 3)
    if kind == "image":
        assert inputs[0].shape[1] == channels and inputs[0].dim() == 4
    elif kind == "video":
        assert inputs[0].shape[1] == channels and inputs[0].dim() == 5
    if modality == "av" and (fusion == "none" or FUSIONS[fusion].ablate is not None):  # the others mix both modalities into each value
        for half in ("audio", "vision"):
            changed = ablate(data.recipe, inputs, raw, half)
            assert any(not torch.equal(a, b) for a, b in zip(changed, inputs)), (half, fusion)
            assert all(torch.equal(a, b) or torch.count_nonzero(a) < torch.count_nonzero(b) for a, b in zip(changed, inputs))


def test_recipes_refuse_pairs_that_cannot_go_together():
    with pytest.raises(ValueError, match="takes --fusion none, not 'concat'"):
        recipe_for("image", "audio", "concat")
    video_only = next(name for name, spec in FUSIONS.items() if "image" not in spec.kinds)
    with pytest.raises(ValueError, match=f"{' | '.join(valid_fusions('image', 'av'))}, not '{video_only}'".replace("|", "\\|")):
        recipe_for("image", "av", video_only)
    assert set(valid_fusions("image", "av")) | set(valid_fusions("video", "av")) == set(FUSIONS)  # each fusion feeds some encoder
    assert not [name for name in valid_fusions("image", "av", square_only=True) if not FUSIONS[name].square]


@pytest.mark.heavy  # the slowest end-to-end paths run in `make test-all`
def test_cli_train_evaluate_ablate_and_bad_input(store, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--encoder", "resnet18", "--fusion", "concat", "--store", store, "--epochs", "12", "--batch-size", "8", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "test accuracy (WAR)" in result.stdout and (out / "metrics.json").is_file()
    full = run_cli("evaluate", "--run", str(out))
    assert full.returncode == 0
    original = json.loads((out / "evaluate.json").read_text())["test"]["accuracy"]
    assert original == json.loads((out / "metrics.json").read_text())["test"]["accuracy"]
    for half in ("audio", "vision"):
        assert run_cli("evaluate", "--run", str(out), "--ablate", half).returncode == 0
    ablated = {h: json.loads((out / f"evaluate-ablate-{h}.json").read_text())["test"]["accuracy"] for h in ("audio", "vision")}
    assert min(ablated.values()) < original  # the model uses what was zeroed
    again = run_cli("train", "--encoder", "resnet18", "--store", store, "--out", str(out))
    assert again.returncode == 2 and "exists" in again.stderr
    unknown = run_cli("train", "--encoder", "resnet99", "--store", store, "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "resnet18" in unknown.stderr and unknown.stderr.strip().count("\n") == 0
    mismatch = run_cli("train", "--encoder", "vgg16", "--fusion", "fslf", "--store", store, "--out", str(tmp_path / "x"))
    assert mismatch.returncode == 2 and "concat | concat224 | stack | sum" in mismatch.stderr
    not_a_store = run_cli("train", "--encoder", "resnet18", "--store", str(tmp_path / "nothing.zarr"), "--out", str(tmp_path / "x"))
    assert not_a_store.returncode == 2 and "no avstore store" in not_a_store.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_fusion_missing_from_the_store_is_derived_and_cached_but_never_in_a_read_only_store(store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    fs = FeatureStore.open(copy)
    for name in [s.name for s in fs.feature_sets("fusion-stack")]:
        shutil.rmtree(copy / "features" / name)
    from stores.integrity import write_checksums
    from stores.location import locate

    write_checksums(locate(str(copy)))  # a finished store that never had the stack fusion, not one with files gone
    workdir = tmp_path / "work"
    workdir.mkdir()
    open_up(workdir)
    workdir.chmod(0o777)
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # chmod a-w, readable by all
    refused = run_cli_unprivileged("train", "--encoder", "resnet18", "--fusion", "stack", "--store", str(copy), "--epochs", "1", "--out", "ro-run", cwd=workdir)
    assert refused.returncode == 2, refused.stderr
    assert "no 'stack' fusion" in refused.stderr and "read-only" in refused.stderr
    assert not (workdir / "ro-run").exists() and not FeatureStore.open(copy).feature_sets("fusion-stack")
    as_owner = run_cli("train", "--encoder", "resnet18", "--fusion", "stack", "--store", str(copy), "--epochs", "1", "--out", str(tmp_path / "owner-run"))
    assert as_owner.returncode == 2 and "read-only" in as_owner.stderr  # no write bit at all: refused even for root
    assert not FeatureStore.open(copy).feature_sets("fusion-stack")
    for path in [copy, *copy.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    result = run_cli("train", "--encoder", "resnet18", "--fusion", "stack", "--store", str(copy), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "deriving fusion 'stack'" in result.stderr
    assert len(FeatureStore.open(copy).feature_sets("fusion-stack")) == 1


@pytest.mark.heavy
def test_sweep_runs_the_matrix_and_ends_with_the_report(store, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep", "--store", store, "--encoders", "simple3d,resnet18", "--modalities", "audio,vision,av", "--seeds", "0,1",
                     "--epochs", "2", "--batch-size", "8", "--out", str(out), "--no-progress", timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(out.glob("*/metrics.json"))) == 12
    table = (out / "report" / "comparison.md").read_text()
    assert "resnet18" in table and "simple3d" in table and "n=2" in table
    assert (out / "report" / "comparison_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "report" / "comparison.csv").read_text().count("\n") > 6


HEAVY_ON_CPU = {"vgg16", "videomae", "vit-b16"}
"""Encoders whose one CPU step takes many seconds; their cases run with `make test-all` (marker `heavy`)."""


def encoder_recipes():
    """Every (encoder, modality, fusion) the store serves; the ladder reads sequences, not these inputs, and has
    its own tests (tests/test_ladder.py)."""
    for name in list_models():
        kind = get_spec(name).input_kind
        if kind == "sequences":
            continue
        for modality in ("audio", "vision", "av"):
            for fusion in valid_fusions(kind, modality, square_only=get_spec(name).square_input):
                yield pytest.param(name, modality, fusion, marks=pytest.mark.heavy) if name in HEAVY_ON_CPU else (name, modality, fusion)


@pytest.mark.slow
@pytest.mark.parametrize("encoder, modality, fusion", list(encoder_recipes()))
def test_every_encoder_trains_one_step_on_every_input_the_store_serves_it(store, encoder, modality, fusion):
    from encoders.device import plan_for
    from encoders.train import build_model, prepare

    torch.manual_seed(0)
    config = TrainConfig(encoder=encoder, modality=modality, fusion=fusion)
    data = load_data(store, config)
    model = build_model(config, data)
    raw = [m[:2] for m in data.splits["train"].memory]
    logits = model(*prepare(data.recipe, raw, plan_for(model, "cpu")))
    assert logits.shape == (2, 6)
    torch.nn.functional.cross_entropy(logits, data.splits["train"].labels[:2]).backward()
    first_layer = next(p for p in model.parameters() if p.requires_grad)
    assert first_layer.grad is not None  # the loss reaches the input stem


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu_gives_the_same_run_layout(store, tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO

    single = train(store, TrainConfig(encoder="simple3d", modality="audio", fusion="none", epochs=2, batch_size=8), tmp_path / "one", progress=False)
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", str(REPO / "cli.py"), "train", "--encoder", "simple3d", "--modality", "audio",
         "--store", store, "--epochs", "2", "--batch-size", "8", "--out", str(out), "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("test accuracy (WAR)") == 1  # rank 0 alone reports
    ddp = json.loads((out / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert set(ddp) == set(json.loads(json.dumps(single)))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert ddp["test"]["n"] == single["test"]["n"]


@pytest.mark.slow
def test_k_fold_by_actor_tests_each_fold_once_and_never_leaks_speakers(store):
    folds = 3
    seen_test = []
    for fold in range(folds):
        data = load_data(store, TrainConfig(encoder="resnet18", modality="vision", fusion="none", fold=fold, folds=folds))
        table = FeatureStore.open(store).clip_table()
        by_split = {name: set(table["speaker"][split.rows].tolist()) for name, split in data.splits.items()}
        assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
        assert len(by_split["test"]) == 2 and len(by_split["val"]) == 1  # 6 actors in 3 folds; 15/85 of the other 4 validate (at least 1)
        seen_test.append(by_split["test"])
    assert set().union(*seen_test) == set(FeatureStore.open(store).clip_table()["speaker"].tolist())
    with pytest.raises(ValueError, match="outside 0..2"):
        load_data(store, TrainConfig(encoder="resnet18", modality="vision", fusion="none", fold=3, folds=3))


@pytest.mark.heavy
def test_sweep_runs_every_fold_and_seed_and_resumes_without_redoing(store, tmp_path):
    out = tmp_path / "sweep"
    args = ("sweep", "--store", store, "--encoders", "resnet18", "--modalities", "audio", "--folds", "3", "--seeds", "0,1",
            "--split-seed", "5", "--lr", "0.002", "--epochs", "1", "--batch-size", "8", "--out", str(out), "--no-progress")
    first = run_cli(*args, timeout=1200)
    assert first.returncode == 0, first.stderr[-2000:]
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("*/metrics.json"))]
    assert sorted((r["fold"], r["seed"]) for r in runs) == [(f"{f}/3", s) for f in range(3) for s in (0, 1)]
    assert {r["config"]["lr"] for r in runs} == {0.002} and {r["config"]["split_seed"] for r in runs} == {5}
    assert "n=3 folds)" in (out / "report" / "comparison.md").read_text()  # the fold is the replicate: 3 folds of 2 seeds, one cell
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0 and again.stdout.count("done already") == 6, again.stdout


@pytest.mark.slow
def test_a_store_being_written_or_left_unfinished_is_refused_unless_allow_partial_which_records_the_counts(store, tmp_path):
    """Issue 25: `train` on a store while its extract ran, or after it was interrupted, exited 0 having trained on
    the clips committed so far (160 of 288, 7/2/2 of 12 speakers), and nothing said so."""
    import shutil

    from stores.lock import WriterLock

    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    args = ["--encoder", "resnet18", "--modality", "audio", "--store", str(copy), "--epochs", "1", "--batch-size", "8", "--no-progress"]
    with WriterLock(copy):  # an extract is writing it
        busy = run_cli("train", *args, "--out", str(tmp_path / "busy"))
    assert busy.returncode == 2 and busy.stderr.strip().count("\n") == 0, busy.stderr[-2000:]
    assert "is being written by pid" in busy.stderr and "--allow-partial" in busy.stderr and not (tmp_path / "busy").exists()
    from stores.state import PartialStoreError, mark_unfinished

    # what an interrupted extract leaves: one speaker's rows not committed, and the writer's marker
    writable = FeatureStore.open(copy, mode="r+")
    table = writable.clip_table()
    speaker = sorted(set(table["speaker"][table["split"] == "train"].tolist()))[0]
    rows = np.flatnonzero(table["speaker"] == speaker)
    writable.uncommit_rows(writable.feature_sets("faces")[0], rows)
    mark_unfinished(copy)
    with pytest.raises(PartialStoreError, match="interrupted"):  # the Python readers refuse it too
        load_data(str(copy), TrainConfig(encoder="resnet18", modality="audio", fusion="none"))
    sweep = run_cli("sweep", "--store", str(copy), "--encoders", "resnet18", "--modalities", "audio", "--seeds", "0", "--epochs", "1",
                    "--out", str(tmp_path / "sweep"), "--no-progress")
    assert sweep.returncode == 2 and "interrupted" in sweep.stderr and sweep.stderr.strip().count("\n") == 0, sweep.stderr[-2000:]
    assert not (tmp_path / "sweep").exists()
    allowed = run_cli("train", *args, "--out", str(tmp_path / "run"), "--allow-partial")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    partial = metrics["partial_store"]
    assert partial["clips_in_store"] == len(table["clip_id"]) and partial["clips_committed"] == len(table["clip_id"]) - len(rows)
    assert partial["clips_used"] == sum(metrics["clips"].values()) <= partial["clips_committed"]
    assert (partial["speakers_used"], partial["speakers_in_store"]) == (5, 6)
    assert f"trained on {partial['clips_used']} of {partial['clips_in_store']} clips" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.heavy  # the slowest end-to-end paths run in `make test-all`
def test_a_failed_train_leaves_its_out_free_for_the_retry(store, tmp_path):
    """Issue 25: a crashed run left --out behind, and the retry with the same --out was refused."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    out = tmp_path / "run"
    args = ["train", "--encoder", "resnet18", "--modality", "audio", "--store", store, "--epochs", "1", "--batch-size", "8",
            "--loader-workers", "0", "--out", str(out), "--no-progress"]
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(tmp_path.glob("*/train.log")) and not any(tmp_path.glob(".*/train.log")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # the run dies once it has started writing its run directory
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    retry = run_cli(*args)
    assert retry.returncode == 0, retry.stderr[-2000:]
    assert (out / "metrics.json").is_file() and [p.name for p in tmp_path.iterdir()] == ["run"]
    left = tmp_path / "left-by-an-old-avstore"
    left.mkdir()
    (left / "train.log").write_text("")
    refused = run_cli(*[a if a != str(out) else str(left) for a in args])
    assert refused.returncode == 2 and "holds no metrics.json" in refused.stderr and "rm -r" in refused.stderr
