"""`cli.py embed` end to end on a real store, its refusals, the input each backbone's weights expect, the
fingerprint, and embeddings that do not depend on thread counts.

The store is tiny (4 clips, 2 frames of 32 px) and the backbone is facenet at 80 px (its smallest input), so a
CLI run is mostly its ~6 s of imports; one run is vgg16 at 32 px (its random init takes a few seconds more).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from encoders.embed import BACKBONES, EmbedConfig, build_backbone, embed_crops, embed_params, run_embed
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
            out.append(embed_crops(model, crops, EmbedConfig(backbone="facenet", size=80, batch_size=8), "cpu"))
    finally:
        torch.set_num_threads(before)
    assert out[0].shape == (2, 4, 512) and out[0].dtype == np.float32
    assert out[0].tobytes() == out[1].tobytes()
    assert torch.get_num_threads() == before  # the pin is lifted afterwards


def model_inputs(backbone: str, crops: np.ndarray) -> torch.Tensor:
    """What embed_crops hands the backbone for these crops: read through nn.Flatten, a real module that passes
    its input on (crops at the backbone's native size, so nothing is resized)."""
    config = EmbedConfig(backbone=backbone, batch_size=64)
    flat = embed_crops(torch.nn.Flatten(), crops, config, "cpu")
    return torch.from_numpy(flat).reshape(-1, 3, crops.shape[2], crops.shape[3])


def test_vgg16_sees_its_weights_own_transform():
    """torchvision's VGG16 weights document their input: VGG16_Weights.IMAGENET1K_V1.transforms() (built offline, no
    download): resize to 256, centre crop 224, RGB in [0, 1], ImageNet mean and std. A 256 px image goes through it
    unresized; its centre 224 crop, as a stored crop, must reach the backbone as the same numbers. (It reached it
    scaled to [-1, 1].)"""
    import torchvision

    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8))
    documented = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()(image)
    crops = image[..., 16:240, 16:240].permute(0, 2, 3, 1).numpy()[None]  # one clip of 2 steps, channels last
    torch.testing.assert_close(model_inputs("vgg16", crops), documented, atol=1e-5, rtol=1e-5)


def test_facenet_sees_fixed_image_standardization_and_vggface_bgr_less_its_mean():
    """facenet-pytorch's own `fixed_image_standardization` (what its MTCNN hands InceptionResnetV1); VGG-Face's Caffe
    recipe: BGR, 0-255, less the mean pixel (B 93.5940, G 104.7624, R 129.1863)."""
    from facenet_pytorch import fixed_image_standardization

    crops = np.random.default_rng(1).integers(0, 256, (1, 2, 160, 160, 3), dtype=np.uint8)
    pixels = torch.from_numpy(crops[0]).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(model_inputs("facenet", crops), fixed_image_standardization(pixels))
    crops = crops[..., :64, :64, :]  # vggface's native 224 would resize; 64 px with --size 64
    config = EmbedConfig(backbone="vggface", size=64)
    got = torch.from_numpy(embed_crops(torch.nn.Flatten(), crops, config, "cpu")).reshape(-1, 3, 64, 64)
    bgr = torch.from_numpy(crops[0]).permute(0, 3, 1, 2).float()[:, [2, 1, 0]]
    torch.testing.assert_close(got, bgr - torch.tensor([93.5940, 104.7624, 129.1863]).view(1, 3, 1, 1))


def test_the_fingerprint_tells_cpu_float32_from_cuda_bfloat16_and_names_the_normalisation():
    """A resumed run on the other kind of device must make its own set: bfloat16 rows among float32 ones would
    be one feature set of two different features. Computed without a GPU: the params are a pure function."""
    config = EmbedConfig(backbone="vgg16")
    cpu, cuda = (embed_params(config, None, "faces", device) for device in ("cpu", "cuda"))
    assert (cpu["device"], cpu["precision"]) == ("cpu", "float32")
    assert (cuda["device"], cuda["precision"]) == ("cuda", "bfloat16")
    assert fingerprint(cpu) != fingerprint(cuda)
    assert fingerprint(embed_params(config, None, "faces", "cuda:1")) == fingerprint(cuda)  # which GPU: provenance
    normalisations = {name: fingerprint(embed_params(EmbedConfig(backbone=name), None, "faces", "cpu")["normalise"]) for name in BACKBONES}
    assert len(set(normalisations.values())) == len(BACKBONES)  # vgg16 and vggface: one network, two inputs


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
    assert (params["normalise"]["name"], params["device"], params["precision"]) == ("facenet fixed_image_standardization", "cpu", "float32")
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


@pytest.mark.slow
def test_embed_cli_vgg16_stores_the_backbone_output_of_imagenet_normalised_crops(store, tmp_path):
    """`cli.py embed --backbone vgg16` in a real subprocess on the tiny store (random init, 32 px): each stored row
    is fc7 of the crops normalised as torchvision's VGG16 weights expect, not of crops scaled to [-1, 1]."""
    import torchvision

    copy = tmp_path / "s.zarr"  # its own store: the other tests count the sets in theirs
    shutil.copytree(store, copy)
    result = run_cli("embed", "--backbone", "vgg16", "--size", "32", "--batch-size", "4", "--device", "cpu", "--no-progress", "--store", str(copy))
    assert result.returncode == 0, result.stderr
    (group,) = [g for g in embed_sets(copy).values() if g.attrs["params"]["backbone"] == "vgg16"]
    assert group.attrs["params"]["normalise"]["name"] == "torchvision imagenet"
    root = zarr.open_group(str(copy), mode="r")
    faces = next(g for name, g in root["features"].groups() if name.startswith("faces-"))
    row = int(np.flatnonzero(np.asarray(group["status"][:]) == "ok")[0])
    pixels = torch.from_numpy(faces["crops"][row]).permute(0, 3, 1, 2)
    documented = torchvision.models.VGG16_Weights.IMAGENET1K_V1.transforms()  # built offline, no download
    model = build_backbone(EmbedConfig(backbone="vgg16"), None)
    with torch.no_grad():
        want = model(torchvision.transforms.functional.normalize(pixels.float() / 255, documented.mean, documented.std)).numpy()
        scaled = model(pixels.float() / 127.5 - 1).numpy()  # the old input, to show the tolerance tells them apart
    stored = group["embedding"][row].astype(np.float32)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(stored, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())
    assert not np.allclose(stored, scaled, rtol=1e-2, atol=1e-2 * np.abs(want).max())
