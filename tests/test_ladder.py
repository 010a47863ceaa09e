"""Seed 002's ladder network: its losses, its skip paths, the semi-supervised mode, and end to end from a store
with ComParE LLDs (extract --lld) and face embeddings (cli.py embed)."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from encoders.embed import EmbedConfig, run_embed
from encoders.ladder import COMBINATORS, LadderConfig, LadderNetwork, supervised_loss
from encoders.registry import get_model
from encoders.significance import corrected_t_test
from encoders.study import StudyError, run_plan
from encoders.train import TrainConfig, evaluate_run, labelled_mask, train
from pipeline.audio import MelConfig
from pipeline.compare import LldConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, run_extract
from pipeline.splits import assign_splits
from tests.conftest import run_cli

CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def toy(n=48, f=40, t=6, da=10, dv=12, seed=0):
    """LLD-like frames valid up to a random length (zero padding after it, as stored) and embedding sequences with
    a few faces missing, whose class shows in both modalities."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 6
    lld_mask = torch.arange(f) < torch.randint(f // 2, f + 1, (n,), generator=g)[:, None]
    lld = (torch.randn(n, f, da, generator=g) + y[:, None, None].float() * 0.5) * lld_mask[..., None]
    video = torch.randn(n, t, dv, generator=g) - y[:, None, None].float() * 0.5
    found = torch.rand(n, t, generator=g) > 0.15
    return [lld, lld_mask, video, found], y


def model_for(inputs, **config):
    torch.manual_seed(0)
    m = LadderNetwork(audio_dim=inputs[0].shape[-1], video_dim=inputs[2].shape[-1], num_classes=6,
                      config=LadderConfig(modality_layers=(16, 8), cross_layers=(8,), sequence_width=16, **config))
    m.fit_input_stats([inputs])
    return m


def test_layer_0_reads_the_frames_not_their_span_means():
    inputs, _ = toy(n=6)
    lld, _, video, found = inputs
    everything = torch.ones(lld.shape[:2], dtype=torch.bool)
    model = model_for([lld, everything, video, found]).eval()
    spans = lld.unflatten(1, (10, 4))  # the store's pooled array: the mean of each span of frames
    mean = spans.mean(2, keepdim=True)
    reordered, wider = spans.flip(2).flatten(1, 2), (mean + 2 * (spans - mean)).flatten(1, 2)
    for other in (reordered, wider):
        assert torch.allclose(other.unflatten(1, (10, 4)).mean(2), mean[:, :, 0], atol=1e-5)  # the same span means
        assert not torch.allclose(model(other, everything, video, found), model(lld, everything, video, found), atol=1e-4)


def test_frames_past_lld_frames_and_steps_without_a_face_are_ignored():
    inputs, _ = toy(n=6)
    lld, lld_mask, video, found = inputs
    model = model_for(inputs).eval()
    noise = torch.randn_like(lld) * 10
    junk_lld = torch.where(lld_mask[..., None], lld, noise)
    junk_video = torch.where(found[..., None], video, torch.randn_like(video) * 10)
    assert (~lld_mask).any() and (~found).any()
    assert torch.allclose(model(junk_lld, lld_mask, junk_video, found), model(*inputs), atol=1e-5)
    assert not torch.allclose(model(lld + noise * lld_mask[..., None], lld_mask, video, found), model(*inputs), atol=1e-4)


def test_the_vanilla_combinator_is_per_unit():
    """Rasmus et al.'s g: ten (width,) vectors, and unit i of the estimate reads only unit i of the skip and of u."""
    torch.manual_seed(0)
    for kind, per_unit in (("vanilla", True), ("dense", False)):
        combine = COMBINATORS[kind](16, 16)
        with torch.no_grad():
            for p in combine.parameters():
                p.normal_()
        s, u = torch.randn(1, 16), torch.randn(1, 16)
        off_diagonal = lambda j: float((j - torch.diag(torch.diagonal(j))).abs().max())  # noqa: E731
        assert (off_diagonal(torch.autograd.functional.jacobian(lambda x: combine(x, u), s)[0, :, 0]) == 0.0) == per_unit, kind
        assert off_diagonal(torch.autograd.functional.jacobian(lambda x: combine(s, x), u)[0, :, 0]) == 0.0  # u meets each unit alone in both
    assert [tuple(p.shape) for p in COMBINATORS["vanilla"](16, 16).parameters()] == [(10, 16)]


def denoising_error(kind: str, top_down: str, noise: float = 0.3, width: int = 16) -> float:
    """Test MSE of one decoder layer trained to rebuild clean z (unit variance, every unit the same signal up to
    sign) from its noisy skip z + noise and a top-down signal u that is zero or the clean z itself."""
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(width, generator=g) < 0.5, -1.0, 1.0)

    def batch(n):
        z = torch.randn(n, 1, generator=g) * signs
        return z + noise * torch.randn(n, width, generator=g), (z if top_down == "clean" else torch.zeros_like(z)), z

    torch.manual_seed(0)
    combine = COMBINATORS[kind](width, width)
    optimizer = torch.optim.Adam(combine.parameters(), lr=0.02)
    for _ in range(400):
        s, u, z = batch(256)
        loss = torch.nn.functional.mse_loss(combine(s, u), z)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        s, u, z = batch(20000)
        return float(torch.nn.functional.mse_loss(combine(s, u), z))


def test_a_vanilla_decoder_layer_cannot_denoise_through_its_skip_alone():
    """With nothing from above, unit i's estimate is an affine function of its own noisy value, whose error is at
    least σ²/(1+σ²) (the per-unit linear estimate's); a dense combinator beats that by pooling the units of the
    skip, the shortcut Rasmus et al.'s g closes. Given the clean value from above, g rebuilds it."""
    bound = 0.3**2 / (1 + 0.3**2)
    assert denoising_error("vanilla", "zero") > 0.9 * bound
    assert denoising_error("dense", "zero") < 0.5 * bound
    assert denoising_error("vanilla", "clean") < 0.2 * bound


@pytest.mark.parametrize("cross", [True, False])
def test_each_modality_decoder_reads_the_other_encoders_skips(cross):
    inputs, _ = toy(n=16)
    model = model_for(inputs, cross_skips=cross)
    fed = {}
    for name, decoder in (("v", model.decode_v), ("a", model.decode_a)):
        for k, combine in enumerate(decoder.combine):
            combine.register_forward_hook(lambda module, args, out, key=(name, k): fed.__setitem__(key, args[0]))
    out = model.ladder(*inputs)
    za, zv = out["noisy"]["za"][::-1], out["noisy"]["zv"][::-1]  # top first, as the decoders go
    assert len(za) == len(model.decode_v.combine) == 3  # two ladder layers and layer 0
    for k in range(len(za)):
        assert torch.equal(fed[("v", k)], za[k] if cross else zv[k]) and torch.equal(fed[("a", k)], zv[k] if cross else za[k])


@pytest.mark.parametrize("reconstruction", [True, False])
def test_no_reconstruction_leaves_the_decoders_without_gradient(reconstruction):
    inputs, y = toy(n=16)
    model = model_for(inputs, reconstruction=reconstruction).train()
    out = model(*inputs, labels=y)
    out["loss"].backward()
    decoder_grad = sum(float(p.grad.abs().sum()) for d in (model.decode_av, model.decode_a, model.decode_v) for p in d.parameters())
    assert (decoder_grad > 0) == reconstruction
    assert float(out["terms"]["reconstruction"]) > 0 and float(model.head_av.weight.grad.abs().sum()) > 0


def test_ladder_options_live_on_the_encoder_not_in_train_config():
    assert not [f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith("ladder")]
    model = get_model("ladder", in_channels=12, options={"combinator": "dense", "lambdas": [1, 0.5]})
    assert isinstance(model.decode_v.combine[0], COMBINATORS["dense"]) and model.config.lambdas == (1, 0.5)
    assert isinstance(get_model("ladder", in_channels=12).decode_v.combine[0], COMBINATORS["vanilla"])
    with pytest.raises(ValueError, match="takes no encoder options"):
        TrainConfig(encoder="resnet18", encoder_options={"noise": 0.5}).resolved()
    with pytest.raises(ValueError, match="has no option nois; its options are"):
        TrainConfig(encoder="ladder", fusion="none", encoder_options={"nois": 0.5}).resolved()
    with pytest.raises(ValueError, match="combinator 'gated' is unknown"):
        TrainConfig(encoder="ladder", fusion="none", encoder_options={"combinator": "gated"}).resolved()


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
# the held-out test actor, in the stored split and in each of 4 actor folds), 4 frames of 32 px, facenet embeddings
# at 80 px (its smallest input; 512-d, so the ladder is ~0.6 M parameters), and the concat fusion the preset's
# resnet18 baseline reads. Torch runs on one thread here and in the CLI subprocesses: on a loaded 2-core machine
# two OpenMP threads per process made every step of these tiny networks 10-25 times slower.
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


LADDER = ("train", "--encoder", "ladder", "--epochs", "30", "--batch-size", "8", "--device", "cpu", "--no-progress", "--lr", "0.003")
FOLDS = 4  # one actor per fold: every clip is tested once, by a model trained on two other actors


@pytest.mark.slow
def test_ladder_learns_held_out_actors_and_evaluates_with_a_modality_ablated(store, tmp_path):
    """All 24 clips are tested over the 4 actor folds. A random predictor gets 14 or more of 24 right with
    probability 4.6e-6 (binomial, p = 1/6); one actor's 6 clips above 1/6 + 0.15 (2 right) was chance's 26 %.
    The ladder got 20 (seed 0) and 19 (seed 1) when this was written."""
    result = run_cli(*LADDER, "--folds", str(FOLDS), "--fold", "0", "--store", store, "--out", str(tmp_path / "fold0"))
    assert result.returncode == 0, result.stderr
    runs = [json.loads((tmp_path / "fold0" / "metrics.json").read_text())]
    for fold in range(1, FOLDS):  # in-process: a CLI start costs ~6 s of imports
        config = TrainConfig(encoder="ladder", modality="av", fusion="none", epochs=30, batch_size=8, lr=0.003, device="cpu", fold=fold, folds=FOLDS)
        runs.append(train(store, config, tmp_path / f"fold{fold}", progress=False))
    tested = [c for k in range(FOLDS) for c in json.loads((tmp_path / f"fold{k}" / "partition.json").read_text())["test"]["clips"]]
    assert len(tested) == len(set(tested)) == 24
    correct = sum(round(run["test"]["accuracy"] * run["test"]["n"]) for run in runs)
    assert correct >= 14, [run["test"]["accuracy"] for run in runs]
    assert runs[0]["store"]["embeddings_random_init"] and runs[0]["warnings"] and {"lld", "embed"} <= set(runs[0]["store"]["fingerprints"])

    # the ladder is evaluated like every encoder: --ablate marks one modality absent
    ablated = run_cli("evaluate", "--run", str(tmp_path / "fold0"), "--ablate", "audio")
    assert ablated.returncode == 0, ablated.stderr
    report = json.loads((tmp_path / "fold0" / "evaluate-ablate-audio.json").read_text())
    assert report["ablate"] == "audio" and report["test"]["n"] == runs[0]["test"]["n"] and report["test"]["loss"] != runs[0]["test"]["loss"]
    same = evaluate_run(tmp_path / "fold1")
    assert same["test"]["accuracy"] == runs[1]["test"]["accuracy"] and same["test"]["loss"] == pytest.approx(runs[1]["test"]["loss"])
    assert evaluate_run(tmp_path / "fold1", ablation="vision")["test"]["loss"] != runs[1]["test"]["loss"]


@pytest.mark.slow
def test_half_labelled_uses_the_other_half_unlabelled(store, tmp_path):
    # in-process (a CLI start costs ~6 s of imports); the CLI's --labelled-fraction is checked by the bad-input tests below
    # streamed from the store (max_memory_gb=0), in this process: the LLD, frame-count, embedding and found arrays on that path too
    config = TrainConfig(encoder="ladder", modality="av", fusion="none", epochs=2, batch_size=8, lr=0.003, device="cpu", labelled_fraction=0.5,
                         max_memory_gb=0.0, loader_workers=0)
    train(store, config, tmp_path / "run", progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["inputs"]["in_memory"] is False
    n = metrics["clips"]["train"]
    assert metrics["labelled"]["train_labelled"] == n // 2 and metrics["labelled"]["train_unlabelled"] == n - n // 2
    for epoch in metrics["history"]:  # every clip went through the network each epoch, half of them without a label
        assert epoch["unlabelled_seen"] == n - n // 2 and epoch["labelled_seen"] == n // 2 and epoch["reconstruction_loss"] > 0
    partition = json.loads((tmp_path / "run" / "partition.json").read_text())
    assert len(partition["train"]["unlabelled"]) == n - n // 2 and set(partition["train"]["unlabelled"]) <= set(partition["train"]["clips"])


PRESET = ("sweep", "--preset", "ladder-crema-d", "--folds", "3", "--seeds", "0", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress")


@pytest.mark.heavy
def test_ladder_preset_reduced_writes_seed_002s_table_with_p_values(store, tmp_path):
    out = tmp_path / "preset"
    result = run_cli(*PRESET, "--store", store, "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    runs = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/metrics.json")}
    arms = ("ladder", "ladder-no-cross-skips", "ladder-no-reconstruction", "resnet18-av-concat")
    assert sorted(runs) == sorted(f"{arm}-seed0-fold{k}of3" for arm in arms for k in range(3))  # 4 configurations x 3 folds x 1 seed
    assert all({"macro_precision", "macro_recall", "micro_precision", "micro_recall", "micro_f1"} <= set(r["test"]) for r in runs.values())
    assert [runs[f"{arm}-seed0-fold0of3"]["config"]["encoder_options"] for arm in arms[:3]] == [{}, {"cross_skips": False}, {"reconstruction": False}]
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
    with pytest.raises(StudyError, match=re.escape("epochs=2 (asked 3)")):
        run_plan(store, [(stale, out / "resnet18-av-concat-seed0-fold0of3"), (stale, out / "ladder-seed0-fold0of3")], progress=False)
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


def test_the_python_api_serves_the_sequences_the_ladder_reads(store):
    """avstore.py's Dataset for the "sequences" recipe: the LLD frames and face embeddings, with their masks, as
    `train` gives them to the ladder."""
    import avstore
    from encoders.train import load_data
    from stores.torchdata import to_model_inputs

    dataset = avstore.open_store(store).dataset("train", encoder="ladder", modality="av", fusion="none")
    data = load_data(store, TrainConfig(encoder="ladder", modality="av", fusion="none"))
    assert dataset.rows.tolist() == data.splits["train"].rows.tolist()
    fed = to_model_inputs(data.recipe, [m[-1:] for m in data.splits["train"].memory])
    item = dataset[len(dataset) - 1]
    assert [x.dtype for x in item.inputs] == [torch.float32, torch.bool, torch.float32, torch.bool]
    assert all(torch.equal(a, b[0]) for a, b in zip(item.inputs, fed)) and item.label == int(data.splits["train"].labels[-1])
