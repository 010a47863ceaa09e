"""Adding a fusion, an encoder or a corpus is a one-file job: this file adds one of each, and nothing else changes.

Each is registered here only (a fixture, removed afterwards so other test files see the registries as shipped), and
then reached through the library's ordinary paths: the fusion through `fuse`, the store and the trainer's recipe,
ablation and on-device build; the encoder through `get_model` and `train`, with its own learning rate; the corpus
through `load_corpus`, `class_list` and the `--dataset` help. The slow test runs all three together: a
`SPEAKER/EMOTION/clip.mp4` folder is extracted with the new fusion and the new encoder trains on it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from encoders import registry
from encoders.registry import get_model, get_spec, list_models, register_encoder
from pipeline import corpora
from pipeline.corpora import CorpusError, class_list, datasets_help, get_corpus, list_corpora, load_corpus, register_corpus
from pipeline.fuse import (
    FUSIONS, ClipInputs, FusionSpec, device_fusions, fuse, fusion_arrays, fusion_choices_help, list_fusions, register_fusion,
)
from pipeline.records import ClipRecord
from stores.torchdata import ablate, fuse_on_device, recipe_for, to_model_inputs, valid_fusions

# ---- a fusion: the face above the spectrogram (2S x S) ------------------------------------------------------------


def _vstack_arrays(frames: int, size: int) -> dict:
    return {"image": ((2 * size, size, 3), "uint8"), "video": ((frames, 2 * size, size, 3), "uint8")}


def _vstack(clip: ClipInputs) -> dict[str, np.ndarray]:
    rgb = lambda gray: np.repeat(gray[..., None], 3, axis=-1)  # noqa: E731
    return {"image": np.concatenate([clip.middle, rgb(clip.spec)], axis=-3),
            "video": np.concatenate([clip.faces, rgb(clip.chunks)], axis=-3)}


def _vstack_ablate(x, extra: list, which: str) -> None:
    half = x.shape[-2] // 2  # model layout (N, C, [T,] 2S, S): rows
    (x[..., half:, :] if which == "audio" else x[..., :half, :]).zero_()


def _vstack_on_device(faces, spectrogram):
    return torch.cat([faces, spectrogram[..., None].expand(*spectrogram.shape, 3)], dim=-3)


VSTACK = FusionSpec("vstack-test", "face above spectrogram, S x S each", _vstack_arrays, _vstack, square=False,
                    ablate=_vstack_ablate, on_device=_vstack_on_device)


# ---- an encoder: a small torch CNN with its own learning rate ----------------------------------------------------

TOY_LR = 0.02


def build_toy(*, num_classes: int, in_channels: int, image_size, frames: int, pretrained: bool) -> nn.Module:
    if pretrained:
        raise ValueError("toy-test has no pretrained weights")
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


# ---- a corpus: SPEAKER/EMOTION/clip.mp4 ---------------------------------------------------------------------------

FOLDER_CLASSES = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")


def load_folders(root: Path, meta: Path | None = None) -> list[ClipRecord]:
    videos = sorted(Path(root).glob("*/*/*.mp4"))
    if not videos:
        raise CorpusError(f"'{root}' holds no SPEAKER/EMOTION/*.mp4 files; pass --root pointing at that folder")
    records = [ClipRecord(clip_id=f"{v.parent.parent.name}_{v.parent.name}_{v.stem}", video_path=str(v),
                          label=FOLDER_CLASSES.index(v.parent.name), emotion=v.parent.name, speaker=v.parent.parent.name)
               for v in videos if v.parent.name in FOLDER_CLASSES]
    return sorted(records, key=lambda r: r.clip_id)


# ---- registered for the tests of this file only -------------------------------------------------------------------


@pytest.fixture(scope="module")
def extended():
    register_fusion(VSTACK)
    register_encoder("toy-test", input_kind="image", description="two-layer CNN (test)", lr=TOY_LR)(build_toy)
    register_corpus("folders-test", description="SPEAKER/EMOTION/clip.mp4", class_names=FOLDER_CLASSES)(load_folders)
    try:
        yield
    finally:  # the registries as shipped for every other test file (their dicts: no public unregister)
        FUSIONS.pop(VSTACK.name)
        registry._REGISTRY.pop("toy-test")
        corpora.CORPORA.pop("folders-test")


def synthetic_clip(frames: int = 4, size: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return dict(faces=rng.integers(1, 256, (frames, size, size, 3), dtype=np.uint8), middle=rng.integers(1, 256, (size, size, 3), dtype=np.uint8),
                spec=rng.integers(1, 256, (size, size), dtype=np.uint8), chunks=rng.integers(1, 256, (frames, size, size), dtype=np.uint8), clip_id="c")


def test_a_registered_fusion_is_listed_fused_read_ablated_and_built_on_the_device(extended):
    name = VSTACK.name
    assert name in list_fusions() and name in device_fusions() and name in fusion_choices_help()
    assert name in valid_fusions("image", "av") and name in valid_fusions("video", "av")
    assert name not in valid_fusions("image", "av", square_only=True)  # 2S x S: not for ViT-B/16
    clip = synthetic_clip()
    fused = fuse(name, **clip)
    assert {k: (v.shape, str(v.dtype)) for k, v in fused.items()} == {k: v for k, v in fusion_arrays(name, 4, 8).items()}
    for kind, key, faces, spectrogram in (("image", "image", "middle", "spec"), ("video", "video", "faces", "chunks")):
        stored = torch.from_numpy(fused[key])[None]
        built = fuse_on_device(name, torch.from_numpy(clip[faces])[None], torch.from_numpy(clip[spectrogram])[None])
        assert torch.equal(built, stored)  # the device builder makes the stored bytes
        recipe = recipe_for(kind, "av", name)
        assert [p.source for p in recipe.parts] == [f"fusion-{name}"] and recipe.channels == 3
        inputs = to_model_inputs(recipe, [stored])
        assert inputs[0].shape[1] == 3 and inputs[0].shape[-2:] == (16, 8)
        assert recipe_for(kind, "av", name, fuse_on_device=True).fuse_on_device
        for which, rows, kept in (("audio", slice(8, 16), slice(0, 8)), ("vision", slice(0, 8), slice(8, 16))):
            zeroed = ablate(recipe, inputs, [stored], which)[0]
            assert torch.count_nonzero(zeroed[..., rows, :]) == 0 and torch.equal(zeroed[..., kept, :], inputs[0][..., kept, :])
    from pipeline.extract import fusion_params

    assert "fusion_version" not in fusion_params(name, "f", "a", 0)  # version 1: nothing to add to its fingerprint


def test_a_registered_encoder_builds_trains_one_step_and_brings_its_learning_rate(extended):
    from encoders.train import TrainConfig

    assert "toy-test" in list_models() and get_spec("toy-test").lr == TOY_LR
    assert VSTACK.name in valid_fusions(get_spec("toy-test").input_kind, "av")
    config = TrainConfig(encoder="toy-test", modality="av", fusion=VSTACK.name).resolved()
    assert config.lr == TOY_LR and config.weight_decay == 0.0  # from its spec; a run's own --lr still wins
    assert TrainConfig(encoder="toy-test", fusion=VSTACK.name, lr=0.5).resolved().lr == 0.5
    model = get_model("toy-test", num_classes=6, in_channels=3, image_size=(16, 8))
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 3, 16, 8)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    optimiser.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_fusion_built_on_read_needs_a_device_builder_and_is_not_stored():
    """issue 24: an array the store leaves out must be one every reader can rebuild."""
    import dataclasses

    from pipeline.fuse import get_fusion, stored_arrays

    orphan = dataclasses.replace(get_fusion("concat224"), name="orphan-test", built_on_read=("video",))
    with pytest.raises(ValueError, match="needs an on_device builder"):
        register_fusion(orphan)
    assert "orphan-test" not in list_fusions()
    assert set(stored_arrays("concat", 4, 8)) == {"image"} and set(fusion_arrays("concat", 4, 8)) == {"image", "video"}


def test_a_registered_corpus_loads_its_folders_with_its_class_list(extended, tmp_path):
    for speaker, emotion, clip in (("s1", "ANG", "a"), ("s1", "SAD", "b"), ("s2", "HAP", "a"), ("s2", "bored", "x")):
        (tmp_path / speaker / emotion).mkdir(parents=True, exist_ok=True)
        (tmp_path / speaker / emotion / f"{clip}.mp4").write_bytes(b"")
    assert "folders-test" in list_corpora() and "folders-test" in datasets_help()
    records = load_corpus("folders-test", tmp_path)
    assert [(r.speaker, r.emotion, FOLDER_CLASSES[r.label]) for r in records] == [("s1", "ANG", "ANG"), ("s1", "SAD", "SAD"), ("s2", "HAP", "HAP")]
    assert class_list("folders-test", records) == (list(FOLDER_CLASSES), True)  # its own list: a store keeps the numbers
    assert get_corpus("folders-test").class_names == FOLDER_CLASSES
    with pytest.raises(CorpusError, match="numbers its classes itself"):
        load_corpus("folders-test", tmp_path, classes="ANG,SAD")
    with pytest.raises(ValueError, match="already registered"):
        register_corpus("folders-test", description="again", class_names=FOLDER_CLASSES)(load_folders)


@pytest.mark.slow
def test_the_three_together_extract_train_and_ablate_end_to_end(extended, tmp_path):
    """A generated corpus re-laid out as SPEAKER/EMOTION/clip.mp4, extracted with the new fusion by the ordinary
    pipeline, and the new encoder trained on it and evaluated with each modality zeroed."""
    from encoders.train import TrainConfig, evaluate_run, train
    from pipeline.audio import MelConfig
    from pipeline.corpora.sample import write_sample_corpus
    from pipeline.faces import FaceConfig
    from pipeline.media import ffmpeg_exe
    from pipeline.run import ExtractConfig, run_extract
    from pipeline.splits import assign_splits

    sample = tmp_path / "sample"
    write_sample_corpus(sample, actors=3, sentences=1, seed=1)
    folders = tmp_path / "folders"
    for record in load_corpus("sample", sample):
        out = folders / record.speaker / record.emotion / f"{record.sentence or 'clip'}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", record.video_path, *(["-i", record.audio_path] if record.audio_path else []),
                        "-map", "0:v", *(["-map", "1:a"] if record.audio_path else []), "-c:v", "mpeg4", "-q:v", "3", "-c:a", "aac", str(out)],
                       check=True, timeout=60)
    records = assign_splits(load_corpus("folders-test", folders), seed=0)
    names, declared = class_list("folders-test", records)
    store = str(tmp_path / "store.zarr")
    config = ExtractConfig(faces=FaceConfig(frames=4, size=32, detect_every=2), mel=MelConfig(n_mels=32), fusions=(VSTACK.name,))
    run_extract(records, store, config, dataset="folders-test", class_names=names, workers=0, progress=False, classes_declared=declared)
    run = tmp_path / "run"
    metrics = train(store, TrainConfig(encoder="toy-test", modality="av", fusion=VSTACK.name, epochs=1, batch_size=6, device="cpu"), run, progress=False)
    assert metrics["inputs"]["in_channels"] == 3 and metrics["config"]["lr"] == TOY_LR and metrics["test"]["n"] > 0
    for which in ("audio", "vision"):
        assert evaluate_run(run, ablation=which)["ablate"] == which
