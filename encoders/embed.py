"""Face-embedding sequences from the store's crops (seed 002's visual input), no video decoded.

Goncalves & Busso describe each frame by VGG-Face's 4096-d representation. VGG-Face's weights cannot be
downloaded here, so a backbone comes from this registry with weights from a local file (`--weights PATH`,
a state dict, loaded with weights_only=True): torchvision's VGG16 read at fc7 (4096-d, after its ReLU, the
layer VGG-Face descriptors are usually taken from), the same network fed as VGG-Face was trained (`vggface`,
for VGG-Face's weights in torchvision's VGG16 layout), or facenet-pytorch's InceptionResnetV1 (512-d, its
L2-normalised output). Without weights the backbone is randomly initialised from a fixed seed: the feature set
records `random_init: true` and the report flags every run that read it, because such embeddings are random
projections of the pixels, not face descriptors.

Crops are resized to the backbone's input size and normalised as its weights were trained (`Normalisation`:
torchvision's ImageNet mean and std on RGB in [0, 1] for vgg16, VGG-Face's BGR 0-255 less its mean image's
mean, facenet's (x - 127.5) / 128). The feature set is named by the fingerprint of the backbone, the layer, the
weights' sha256 (or the random seed), the input size, the normalisation, the device kind and the precision
(bfloat16 on CUDA, float32 on CPU: a run resumed on the other kind makes its own set rather than mixing rows of
both) and the faces feature set it was computed from. It is written per shard like every other set,
resumably (committed rows are not redone), and each row takes the faces row's status when that is not ok.
The weights file is read and checked (every parameter up to the layer; a classifier head past it is ignored)
before the feature set exists, so a bad file leaves the store untouched. CPU kernels run pinned to one thread
(`stores.numeric`), so the stored bytes do not depend on the thread count.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.hardware import resolve_device
from stores.integrity import checksums_match_listing, refresh_checksums
from stores.location import check_writable, locate, store_or_default
from stores.lock import WriterLock
from stores.numeric import numeric_environment, pinned
from stores.provenance import provenance
from stores.store import SHARD_ROWS, FeatureSet, FeatureStore, StoreError, store_exists

ALGORITHM_VERSION = 2
"""Bump by hand when a change here changes the numbers. 2: crops normalised as each backbone's weights expect
(they were all scaled to [-1, 1]); device kind and precision in the fingerprint."""
RANDOM_SEED = 0  # the initialisation of a backbone without --weights


@dataclass(frozen=True)
class Normalisation:
    """What a backbone's weights were trained to see: (pixel * scale - mean) / std per channel, channels in the
    order given. A backbone fed otherwise gives embeddings that are not its descriptors, so this is in the
    fingerprint."""

    name: str
    channels: str  # "RGB" or "BGR": the order its first layer expects
    scale: float  # applied to the 0-255 pixel first
    mean: tuple[float, float, float]  # in `channels` order, after scaling
    std: tuple[float, float, float]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB pixels in 0-255 -> the backbone's input."""
        if self.channels == "BGR":
            pixels = pixels.flip(1)
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        return (pixels * self.scale - mean) / std


IMAGENET = Normalisation("torchvision imagenet", "RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""torchvision's VGG16_Weights.IMAGENET1K_V1.transforms(): RGB in [0, 1], ImageNet's mean and std."""
VGG_FACE = Normalisation("vgg-face", "BGR", 1.0, (93.5940, 104.7624, 129.1863), (1.0, 1.0, 1.0))
"""VGG-Face (Parkhi et al. 2015; Caffe): BGR 0-255 less the mean of its training images (B, G, R)."""
FACENET = Normalisation("facenet fixed_image_standardization", "RGB", 1.0, (127.5, 127.5, 127.5), (128.0, 128.0, 128.0))
"""facenet-pytorch's `fixed_image_standardization`, what its MTCNN hands InceptionResnetV1: (x - 127.5) / 128."""


@dataclass(frozen=True)
class Backbone:
    name: str
    layer: str
    dim: int
    input_size: int  # its native input side
    build: Callable[[], nn.Module]  # randomly initialised, returning the `layer` output
    head: str  # key prefix of the classifier after `layer`: a weights file may hold it, it is not loaded
    normalisation: Normalisation  # the input its weights expect


def _vgg16_fc7() -> nn.Module:
    import torchvision

    vgg = torchvision.models.vgg16(weights=None)
    vgg.classifier = vgg.classifier[:5]  # fc6, ReLU, dropout, fc7, ReLU: fc7 after its ReLU, 4096-d
    return vgg


def _facenet() -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    return InceptionResnetV1(pretrained=None, classify=False)


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("vgg16", "fc7", 4096, 224, _vgg16_fc7, head="classifier.6.", normalisation=IMAGENET),  # fc8, 1000 ImageNet classes
    "vggface": Backbone("vggface", "fc7", 4096, 224, _vgg16_fc7, head="classifier.6.", normalisation=VGG_FACE),  # fc8, 2622 identities
    "facenet": Backbone("facenet", "last_bn (L2-normalised)", 512, 160, _facenet, head="logits.", normalisation=FACENET),  # VGGFace2's identities
}


@dataclass(frozen=True)
class EmbedConfig:
    """Defaults: the study's layer of a VGG backbone at its native 224 px."""

    backbone: str = "vgg16"
    size: int | None = None  # input side; None: the backbone's native one
    batch_size: int = 64  # frames per forward pass

    @property
    def spec(self) -> Backbone:
        if self.backbone not in BACKBONES:
            raise StoreError(f"unknown backbone '{self.backbone}'; choose one of {', '.join(BACKBONES)}")
        return BACKBONES[self.backbone]

    @property
    def input_size(self) -> int:
        return self.size or self.spec.input_size


def weights_digest(weights: Path | None) -> str:
    if weights is None:
        return f"random-init-seed{RANDOM_SEED}"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def embed_precision(device: str) -> str:
    """The arithmetic the backbone runs in: bfloat16 autocast on CUDA (its fast path), float32 elsewhere."""
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def embed_params(config: EmbedConfig, weights: Path | None, faces_fingerprint: str, device: str) -> dict:
    """What the embeddings depend on. The device kind and precision are in it because bfloat16 on CUDA and float32 on
    CPU give different embeddings: one feature set must not hold rows of both (a run resumed elsewhere)."""
    spec = config.spec
    return {"stage": "embed", "algorithm": ALGORITHM_VERSION, "backbone": spec.name, "layer": spec.layer, "dim": spec.dim,
            "weights": weights_digest(weights), "random_init": weights is None, "size": config.input_size,
            "normalise": dataclasses.asdict(spec.normalisation), "device": torch.device(device).type,
            "precision": embed_precision(device), "faces": faces_fingerprint}


def build_backbone(config: EmbedConfig, weights: Path | None) -> nn.Module:
    """The frozen backbone: random init from a fixed seed, then the weights file's state dict if given."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model = config.spec.build()
    if weights is not None:
        model.load_state_dict(read_weights(weights, config.spec, model))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def read_weights(weights: Path, spec: Backbone, model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's state dict for `model`, less the classifier head past `spec.layer`; anything else refused.

    Every parameter up to the layer must come from the file: a file for another network would otherwise
    load nothing (or half) while its hash names the feature set, and the embeddings would be random.
    """
    fix = "give a state dict of that backbone saved with torch.save, or leave --weights out for random init"
    try:
        with warnings.catch_warnings():  # torch warns on some pickles before refusing them: the error says it all
            warnings.simplefilter("ignore")
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile, OSError) as err:
        why = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise StoreError(f"--weights '{weights}' is not a readable torch state dict ({why}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise StoreError(f"--weights '{weights}' holds a {type(state).__name__}, not a state dict of tensors; {fix}")
    state = {k: v for k, v in state.items() if not k.startswith(spec.head)}
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        first = (f"{len(missing)} missing (e.g. {missing[0]})" if missing else
                 f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else
                 f"{len(wrong)} of the wrong shape (e.g. {wrong[0]})")
        raise StoreError(f"--weights '{weights}' does not fit backbone {spec.name}: {first} parameters; {fix}")
    return state


@pinned
@torch.no_grad()
def embed_crops(model: nn.Module, crops: np.ndarray, config: EmbedConfig, device: str) -> np.ndarray:
    """(N, T, S, S, 3) uint8 RGB crops -> (N, T, D) float32 embeddings, `config.batch_size` frames per pass, resized
    to `config.input_size` and normalised as the backbone's weights expect, in `embed_precision(device)`.

    Pinned to one CPU thread like every other float kernel of the feature path: torch's convolutions round
    differently with 1 and 2 intra-op threads (facenet's embeddings moved in most elements), and a stored
    feature must not depend on the machine's thread count.
    """
    n, t = crops.shape[:2]
    size, batch_size, normalise = config.input_size, config.batch_size, config.spec.normalisation
    frames = torch.from_numpy(crops.reshape(n * t, *crops.shape[2:]))
    out = []
    for start in range(0, len(frames), batch_size):
        x = frames[start : start + batch_size].to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        if x.shape[-1] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = normalise(x)
        with torch.autocast("cuda", dtype=torch.bfloat16) if embed_precision(device) == "bfloat16" else _null():
            y = model(x)
        out.append(y.float().cpu())
    return torch.cat(out).reshape(n, t, -1).numpy()


def _null():
    import contextlib

    return contextlib.nullcontext()


def select_faces(store: FeatureStore, wanted: str | None) -> FeatureSet:
    sets = [s for s in store.feature_sets("faces") if not wanted or s.fingerprint.startswith(wanted)]
    if len(sets) != 1:
        names = ", ".join(s.fingerprint for s in store.feature_sets("faces")) or "none"
        raise StoreError(f"store '{store.location}' has {len(sets)} matching faces feature sets ({names}); "
                         + ("run `python cli.py extract` first" if not store.feature_sets("faces") else "choose one with --faces FINGERPRINT"))
    return sets[0]


def run_embed(location: str, config: EmbedConfig, *, weights: Path | None = None, device: str = "cpu",
              faces_fingerprint: str | None = None, progress: bool = True) -> tuple[FeatureSet, int]:
    """Add (or complete) the embedding feature set of `config` to the store; returns it and the rows computed."""
    if weights is not None and not Path(weights).is_file():
        raise StoreError(f"--weights '{weights}' is not a file; give a state dict saved with torch.save, or leave it out for random init")
    config.spec  # unknown backbone: refused before anything is written
    where = locate(location)
    with WriterLock(where) as lock:
        incremental = not lock.took_over and checksums_match_listing(where)
        store = FeatureStore.open(location, mode="r+")
        faces = select_faces(store, faces_fingerprint)
        t = int(faces.params["frames"])
        arrays = {"embedding": ((t, config.spec.dim), "float16"), "found": ((t,), "bool")}
        model = build_backbone(config, weights).to(device)  # a bad weights file is refused before anything is written
        embed = store.ensure_feature_set("embed", embed_params(config, weights, faces.fingerprint, device), arrays, provenance(device=device))
        todo = np.flatnonzero(faces.done() & ~embed.done())
        bar = tqdm(total=len(todo), desc=f"embed {config.backbone}", unit="clip", disable=not progress or not len(todo), file=sys.stderr)
        status_all, reason_all = faces.status(), faces["reason"][:]
        for start in range(0, len(todo), SHARD_ROWS):
            rows = todo[start : start + SHARD_ROWS]
            ok = rows[status_all[rows] == "ok"]
            values = {"embedding": np.zeros((len(rows), t, config.spec.dim), np.float16), "found": np.zeros((len(rows), t), bool)}
            if len(ok):
                at = np.searchsorted(rows, ok)
                crops = np.stack([faces["crops"][int(r)] for r in ok])
                values["embedding"][at] = embed_crops(model, crops, config, device).astype(np.float16)
                values["found"][at] = np.stack([faces["found"][int(r)] for r in ok])
            status = ["ok" if s == "ok" else str(s) for s in status_all[rows]]
            reason = ["" if s == "ok" else f"faces {s}: {why}" for s, why in zip(status_all[rows], reason_all[rows])]
            store.write_rows(embed, rows, values, status, reason)
            bar.update(len(rows))
        bar.close()
        if len(todo):
            where_run = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
            embed.add_numeric_environments([{**numeric_environment(), "device": where_run}])  # what can still move the last bits
            refresh_checksums(where, store.touched, trust_list=incremental)  # after a takeover: files whose stamp changed
    return embed, len(todo)


def embed_and_report(store: str | None, *, backbone: str, size: int | None, batch_size: int, weights: Path | None,
                     faces: str | None, device: str, progress: bool) -> None:
    """`cli.py embed`: embed the stored crops of `store` (default: the default store), then say what was made."""
    store = store_or_default(store)
    if not store_exists(store):
        raise StoreError(f"no store at '{store}'; make it with `python cli.py extract --store {store} ...` first")
    check_writable(store)
    config = EmbedConfig(backbone=backbone, size=size, batch_size=batch_size)
    made, n = run_embed(store, config, weights=weights, device=resolve_device(device), faces_fingerprint=faces, progress=progress)
    status = collections.Counter(made.status()[made.done()].tolist())
    print(f"{n} clips embedded into {made.name} ({made.params['backbone']} {made.params['layer']}, {made.params['dim']}-d, "
          f"weights {made.params['weights']}); status: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
    if made.params["random_init"]:
        print("warning: no --weights: the backbone is randomly initialised; runs that read these embeddings are flagged")
