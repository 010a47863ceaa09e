"""`cli.py embed` end to end on a real store, its refusals, and embeddings that do not depend on thread counts.

The store is tiny (4 clips, 2 frames of 32 px) and the backbone is facenet at 80 px (its smallest input), so a
CLI run is mostly its ~6 s of imports.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from encoders.embed import EmbedConfig, build_backbone, embed_crops, run_embed
from pipeline.audio import MelConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, run_extract
from pipeline.splits import assign_splits
from stores.fingerprint import fingerprint
from stores.store import StoreError
from tests.conftest import run_cli

CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]
EMBED = ("embed", "--backbone", "facenet", "--size", "80", "--batch-size", "4", "--device", "cpu", "--no-progress")


def test_embeddings_are_bit_identical_whatever_the_torch_threads():
    """Unpinned, facenet's CPU convolutions rounded differently with 1 and 2 threads in most elements."""
    model = build_backbone(EmbedConfig(backbone="facenet", size=80), None)
    crops = np.random.default_rng(0).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out.append(embed_crops(model, crops, 80, "cpu", 8))
    finally:
        torch.set_num_threads(before)
    assert out[0].shape == (2, 4, 512) and out[0].dtype == np.float32
    assert out[0].tobytes() == out[1].tobytes()
    assert torch.get_num_threads() == before  # the pin is lifted afterwards


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(corpus, actors=3, sentences=1, seed=3)
    records = assign_splits(load_corpus("sample", corpus), seed=0)[::4]
    location = tmp_path_factory.mktemp("store") / "s.zarr"
    config = ExtractConfig(faces=FaceConfig(frames=2, size=32, detect_every=2), mel=MelConfig(n_mels=16), fusions=())
    run_extract(records, str(location), config, dataset="sample", class_names=CLASSES, workers=0, progress=False)
    return location


def embed_sets(store: Path) -> dict[str, zarr.Group]:
    root = zarr.open_group(str(store), mode="r")
    return {name: group for name, group in root["features"].groups() if name.startswith("embed-")}


def snapshot(store: Path) -> dict[str, str]:
    """Every file under the store and the hash of its bytes: what "nothing written" is checked against."""
    return {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_embed_cli_writes_a_fingerprinted_set_and_records_random_init(store, tmp_path):
    result = run_cli(*EMBED, "--store", str(store))
    assert result.returncode == 0, result.stderr
    assert "randomly initialised" in result.stdout  # the user is told at once, not only in the report
    (name, group), = embed_sets(store).items()
    params = dict(group.attrs["params"])
    clips = zarr.open_group(str(store), mode="r")["clips/clip_id"].shape[0]
    assert group["embedding"].shape == (clips, 2, 512) and group["embedding"].dtype == np.float16
    assert group["found"].shape == (clips, 2)
    assert params["random_init"] is True and params["weights"].startswith("random-init")
    assert (params["backbone"], params["layer"], params["dim"], params["size"]) == ("facenet", "last_bn (L2-normalised)", 512, 80)
    assert group.attrs["fingerprint"] == fingerprint(params) and name == f"embed-{fingerprint(params)}"
    ok = np.asarray(group["status"][:]) == "ok"
    assert ok.any() and np.abs(group["embedding"][:][ok].astype(np.float32)).sum() > 0  # computed, not left zero
    assert group.attrs["numeric"] and group.attrs["numeric"][0]["pinned_threads"] == 1

    # The same backbone with a weights file makes another set: the fingerprint covers the weights' hash.
    torch.manual_seed(1)
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
             for k, v in build_backbone(EmbedConfig(backbone="facenet"), None).state_dict().items()}
    weights = tmp_path / "facenet.pt"
    torch.save({**state, "logits.weight": torch.zeros(8631, 512), "logits.bias": torch.zeros(8631)}, weights)  # a head, as VGGFace2's file has
    made, n = run_embed(str(store), EmbedConfig(backbone="facenet", size=80, batch_size=4), weights=weights, progress=False)  # in-process: a CLI start costs ~6 s
    assert n == clips and made.name != name
    sets = embed_sets(store)
    assert len(sets) == 2
    loaded = next(g for n, g in sets.items() if n != name)
    assert loaded.attrs["params"]["random_init"] is False
    assert loaded.attrs["params"]["weights"] == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    assert not np.array_equal(loaded["embedding"][:][ok], group["embedding"][:][ok])  # the weights were used


def test_embed_cli_with_a_garbage_weights_file_is_one_line_exit_2_and_writes_nothing(store, tmp_path):
    weights = tmp_path / "weights.pt"
    weights.write_bytes(np.random.default_rng(0).bytes(4096))
    before = snapshot(store)
    result = run_cli(*EMBED, "--store", str(store), "--weights", str(weights))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--weights" in result.stderr and "state dict" in result.stderr, result.stderr
    assert snapshot(store) == before


@pytest.mark.parametrize("bad", ["missing", "other-network", "a-tensor"])
def test_unusable_weights_are_refused_before_anything_is_written(store, tmp_path, bad):
    """In-process (the CLI turns the same StoreError into its one line, exit 2, as the garbage test shows)."""
    weights = tmp_path / "weights.pt"
    if bad == "other-network":  # a readable state dict, but of another model: it would load nothing
        torch.save(torch.nn.Linear(4, 2).state_dict(), weights)
    elif bad == "a-tensor":
        torch.save(torch.zeros(3), weights)
    before = snapshot(store)
    with pytest.raises(StoreError, match="--weights") as refused:
        run_embed(str(store), EmbedConfig(backbone="facenet", size=80), weights=weights, progress=False)
    assert "\n" not in str(refused.value)
    assert snapshot(store) == before
