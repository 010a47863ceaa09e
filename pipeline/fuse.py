"""Audio-visual fusions of one clip: every fusion of the comparison study (seed 000/001) and of
MultiMAE-DER (seed 004), as pure functions of the clip's face crops and spectrogram images.

Inputs for one clip (S = image size, T = time steps):
* `faces`  (T, S, S, 3) uint8 face crops at T time steps,
* `middle` (S, S, 3) uint8 middle-frame face (the 2D recipe),
* `spec`   (S, S) uint8 whole-clip spectrogram image,
* `chunks` (T, S, S) uint8 spectrogram chunks aligned in time with the faces.

A spectrogram image becomes 3 channels by repetition wherever it meets an RGB face. Each fusion
declares its output arrays up front (`fusion_arrays`) so the store can create fixed-shape arrays before
any clip is computed; `fuse` returns exactly those arrays. The store holds `stored_arrays`: all of them but
those a reader builds from the faces and audio instead (`FusionSpec.built_on_read`: the concat and stack videos).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.numeric import pinned

ArraySpecs = dict[str, tuple[tuple[int, ...], str]]
"""Output array name -> (shape of one clip, numpy dtype string)."""

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class ClipInputs:
    """The validated inputs of one clip, so each fusion can rely on shapes and dtypes."""

    faces: np.ndarray
    middle: np.ndarray
    spec: np.ndarray
    chunks: np.ndarray
    clip_id: str
    seed: int

    @property
    def size(self) -> int:
        return self.faces.shape[1]


def to_unit_range(stored):
    """uint8 (a face, a spectrogram or a fusion of them) -> float in [-1, 1]: every modality mapped the same way,
    so faces, spectrograms and their fusions are normalised consistently (the seed code did not; SPEC defect 9)."""
    return stored.float() / 127.5 - 1.0


def as_stored(stored):
    """A fusion stored already normalised (float16): only made float."""
    return stored.float()


@dataclass(frozen=True)
class FusionSpec:
    """One fusion, all of it: what it is, the arrays it stores and how it makes them (numpy, at extraction), and
    what training does with them (torch tensors, duck-typed, so this module needs no torch to extract).

    Adding a fusion is one `register_fusion(FusionSpec(...))`: the CLI's choices, the store, the trainer
    (stores/torchdata.py recipe_for, valid_fusions, ablate, fuse_on_device) and the tests all read these fields.
    """

    name: str
    description: str
    arrays: Callable[[int, int], ArraySpecs]
    """(T, S) -> the arrays of one clip. "image" feeds 2D encoders and "video" 3D ones (see `kinds`)."""
    build: Callable[[ClipInputs], dict[str, np.ndarray]]
    version: int = 1
    """Bumped by hand when this fusion's numbers change: from 2 on it is part of its fingerprint
    (extract.fusion_params), so a store's set made by the old code is not reused, and no other set is touched.
    1: never changed since fusions had versions, the fingerprint stores had before."""
    channels: int = 3
    """Channels of the model's input (the stem an encoder builds)."""
    square: bool = True
    """False for an S x 2S image: encoders with a fixed square input (ViT-B/16, VideoMAE) cannot take it."""
    kinds: tuple[str, ...] = ("image", "video")
    """The encoder input kinds it feeds: an "image" encoder reads its `image` array, a "video" one its `video`."""
    ablation_arrays: tuple[str, ...] = ()
    """Stored arrays read alongside the input only so that `ablate` can find each modality (the sequences' order)."""
    ablate: Callable[[Any, list, str], None] | None = None
    """ablate(x, extra, which): zero the `which` ("audio" | "vision") part of the model input x (N, C, [T,] H, W) in
    place, the study's "ablated" rows; `extra` holds the `ablation_arrays` as stored. None: the fusion mixes both
    modalities into every value, and cannot be ablated."""
    on_device: Callable[[Any, Any], Any] | None = None
    """on_device(faces (N, [T,] S, S, 3), spectrogram (N, [T,] S, S)) uint8 tensors -> the stored input, bit for bit,
    built where the tensors are (reads 4 bytes a pixel instead of the fusion's own). None: read the stored arrays."""
    built_on_read: tuple[str, ...] = ()
    """Arrays the store does not hold: every reader builds them from the faces and audio with `on_device` (needs
    one). The concat and stack videos (issue 24): a 4.8 MB row stored under a delta chain took 32 CPU-ms through
    plain zarr, and under zstd alone the store grew past 2.5 MB per clip; reading the zstd faces and chunks and
    joining them takes ~6-9 (bench/results/codecs.md), and the store stays under 2.5 MB per clip."""
    normalise: Callable[[Any], Any] = to_unit_range
    """Stored tensor -> the model's float input."""


# --- shared helpers -----------------------------------------------------------------------------


def _rgb(gray: np.ndarray) -> np.ndarray:
    """A spectrogram image (..., S, S) repeated into 3 channels (..., S, S, 3) to meet an RGB face."""
    return np.repeat(gray[..., None], 3, axis=-1)


def side_by_side(face: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """np.concatenate([face, _rgb(gray)], axis=-2) for uint8 RGB faces (..., S, W, 3) and grey images (..., S, V),
    with OpenCV's interleave and join: ~1.5 instead of ~7.7 ms for the concat fusion's (T, S, 2S, 3) video, whose
    numpy repeat alone took 5.5."""
    import cv2

    rows = np.ascontiguousarray(face).reshape(-1, face.shape[-2], 3)
    grey_rows = np.ascontiguousarray(gray).reshape(-1, gray.shape[-1])
    joined = cv2.hconcat([rows, cv2.merge([grey_rows] * 3)])
    return joined.reshape(*face.shape[:-2], face.shape[-2] + gray.shape[-1], 3)


def concat224_widths(size: int) -> tuple[int, int]:
    """(face width, chunk width): 208 + 16 at S=224, the chunk keeping 16/224 of the frame otherwise."""
    chunk_width = max(1, int(round(16 * size / 224)))
    if chunk_width >= size:
        raise ValueError(f"size {size} is too small to squeeze a face beside a spectrogram chunk")
    return size - chunk_width, chunk_width


def _squeeze_width(image: np.ndarray, width: int) -> np.ndarray:
    """Narrows an (S, S[, C]) image to (S, width[, C]) by area averaging (no aliasing when shrinking)."""
    return cv2.resize(image, (width, image.shape[0]), interpolation=cv2.INTER_AREA)


def _normalise_face(face: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 ImageNet-normalised, what a pretrained image backbone expects."""
    return (face.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def _normalise_spectrogram(spectrogram: np.ndarray) -> np.ndarray:
    """uint8 gray -> float32 in [-1, 1], 3 channels; the usual normalisation for non-natural images."""
    return _rgb((spectrogram.astype(np.float32) / 255.0 - 0.5) / 0.5)


# --- side by side, channel stack, sum -------------------------------------------------------------


def _concat_arrays(frames: int, size: int) -> ArraySpecs:
    return {
        "image": ((size, 2 * size, 3), "uint8"),
        "video": ((frames, size, 2 * size, 3), "uint8"),
    }


def _concat(clip: ClipInputs) -> dict[str, np.ndarray]:
    """Face left, spectrogram right, at full resolution each (the study's report: CFAS)."""
    return {
        "image": side_by_side(clip.middle, clip.spec),
        "video": side_by_side(clip.faces, clip.chunks),
    }


def _concat224_arrays(frames: int, size: int) -> ArraySpecs:
    return {"image": ((size, size, 3), "uint8"), "video": ((frames, size, size, 3), "uint8")}


def _squeezed_pair(face: np.ndarray, spectrogram: np.ndarray) -> np.ndarray:
    """One (S, S, 3) frame: the face squeezed to the left, the spectrogram squeezed to the right."""
    face_width, chunk_width = concat224_widths(face.shape[0])
    return np.concatenate(
        [_squeeze_width(face, face_width), _rgb(_squeeze_width(spectrogram, chunk_width))], axis=1
    )


def _concat224(clip: ClipInputs) -> dict[str, np.ndarray]:
    """Side by side but still S x S, so a video transformer with a fixed input size takes it as is."""
    video = np.stack([_squeezed_pair(face, chunk) for face, chunk in zip(clip.faces, clip.chunks)])
    return {"image": _squeezed_pair(clip.middle, clip.spec), "video": video}


def _stack_arrays(frames: int, size: int) -> ArraySpecs:
    return {"image": ((size, size, 6), "uint8"), "video": ((frames, size, size, 6), "uint8")}


def _stack(clip: ClipInputs) -> dict[str, np.ndarray]:
    """Face in channels 0..2, spectrogram in 3..5: what the seed code actually did."""
    return {
        "image": np.concatenate([clip.middle, _rgb(clip.spec)], axis=-1),
        "video": np.concatenate([clip.faces, _rgb(clip.chunks)], axis=-1),
    }


def _sum_arrays(frames: int, size: int) -> ArraySpecs:
    return {"image": ((size, size, 3), "float16"), "video": ((frames, size, size, 3), "float16")}


def _sum(clip: ClipInputs) -> dict[str, np.ndarray]:
    """SFAS done right: normalised float inputs added; the seed code added uint8 images, which wrap."""
    image = _normalise_face(clip.middle) + _normalise_spectrogram(clip.spec)
    video = _normalise_face(clip.faces) + _normalise_spectrogram(clip.chunks)
    return {"image": image.astype(np.float16), "video": video.astype(np.float16)}


# --- token sequences (MultiMAE-DER) --------------------------------------------------------------


def sequence_steps(frames: int) -> int:
    """K = T // 2 items per modality. Each covers 1/K of the clip (`sequence_audio`), so with T = 16 the 8 audio
    items of MultiMAE-DER together cover the whole clip and none of its audio is skipped (SPEC, MultiMAE-DER).
    At least one: a clip of one step is one item per modality."""
    return max(1, frames // 2)


SEQUENCE_VERSION = 2
"""The sequence fusions' version (FusionSpec.version). 1: the items were steps 0, 2, 4, ... alone, so the audio of
every odd step (half of each clip) never reached the model. 2: item j covers the clip's j-th K-th (`sequence_audio`)."""


def sequence_face_steps(frames: int, k: int) -> np.ndarray:
    """(K,) the step whose face stands for item j: the one whose span holds the item's centre, the earlier of two
    when the centre falls on their border. With T = 2K that is step 2j, the first of the item's two steps (their
    frames lie equally near the centre)."""
    j = np.arange(k)
    centre_twice_k = (2 * j + 1) * frames  # the item's centre in steps, times 2K: (j + 1/2) * T / K
    return -(-centre_twice_k // (2 * k)) - 1  # ceil(centre) - 1: the step [i, i + 1) with i < centre <= i + 1


def sequence_audio(chunks: np.ndarray, k: int) -> np.ndarray:
    """(K, S, S): the T chunks laid end to end, (S, T*S), a time axis of equal steps over the whole clip, cut into
    K equal spans, each area-resampled to S wide. With T = 2K, item j is chunks 2j and 2j + 1 side by side, each
    halved in width: every column of audio reaches some item, in time order."""
    steps, size = chunks.shape[:2]
    strip = np.ascontiguousarray(chunks.transpose(1, 0, 2)).reshape(size, steps * size)
    cut = cv2.resize(strip, (k * size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cut.reshape(size, k, size).transpose(1, 0, 2))


def _sequence_arrays(frames: int, size: int) -> ArraySpecs:
    items = 2 * sequence_steps(frames)
    return {"video": ((items, size, size, 3), "uint8"), "order": ((items,), "int16")}


def _sequence_items(clip: ClipInputs) -> np.ndarray:
    """(2K, S, S, 3): V_1..V_K then A_1..A_K, item j of each covering the clip's j-th K-th; an order indexes
    into this (j < K: V_j, else A_{j-K})."""
    frames = len(clip.faces)
    k = sequence_steps(frames)
    return np.concatenate([clip.faces[sequence_face_steps(frames, k)], _rgb(sequence_audio(clip.chunks, k))], axis=0)


def _ordered_sequence(order_of: Callable[[int, ClipInputs], np.ndarray]):
    """A fusion that arranges the 2K items in the order `order_of(K, clip)` and records that order."""

    def build(clip: ClipInputs) -> dict[str, np.ndarray]:
        order = order_of(sequence_steps(len(clip.faces)), clip).astype(np.int16)
        return {"video": _sequence_items(clip)[order], "order": order}

    return build


def _faces_first(k: int, clip: ClipInputs) -> np.ndarray:
    return np.arange(2 * k)


def _spectrograms_first(k: int, clip: ClipInputs) -> np.ndarray:
    return np.concatenate([np.arange(k, 2 * k), np.arange(k)])


def _interleaved(k: int, clip: ClipInputs) -> np.ndarray:
    return np.stack([np.arange(k), np.arange(k, 2 * k)], axis=1).reshape(-1)


def _random(k: int, clip: ClipInputs) -> np.ndarray:
    """Seeded from (seed, crc32(clip_id)): reproducible per clip, independent of processing order."""
    rng = np.random.default_rng([clip.seed, zlib.crc32(clip.clip_id.encode("utf-8"))])
    return rng.permutation(2 * k)


# --- what training does with each fusion (torch tensors, in the model's layout (N, C, [T,] H, W)) -----------


def _rgb_tensor(spectrogram):
    return spectrogram[..., None].expand(*spectrogram.shape, 3)


def _concat_on_device(faces, spectrogram):
    """`_concat` of a batch, where the tensors are: (N, [T,] S, 2S, 3)."""
    import torch

    return torch.cat([faces, _rgb_tensor(spectrogram)], dim=-2)


def _stack_on_device(faces, spectrogram):
    """`_stack` of a batch, where the tensors are: (N, [T,] S, S, 6)."""
    import torch

    return torch.cat([faces, _rgb_tensor(spectrogram)], dim=-1)


def _ablate_concat(x, extra: list, which: str) -> None:
    width = x.shape[-1] // 2
    (x[..., width:] if which == "audio" else x[..., :width]).zero_()


def _ablate_concat224(x, extra: list, which: str) -> None:
    _, chunk_width = concat224_widths(x.shape[-2])
    (x[..., -chunk_width:] if which == "audio" else x[..., :-chunk_width]).zero_()


def _ablate_stack(x, extra: list, which: str) -> None:
    (x[:, 3:] if which == "audio" else x[:, :3]).zero_()


def _ablate_sequence(x, extra: list, which: str) -> None:
    """Items j < K of the stored order are faces, the others spectrogram chunks (x: (N, C, 2K, S, S))."""
    order = extra[0].long()
    is_audio = (order >= order.shape[1] // 2).to(x.device)
    mask = is_audio if which == "audio" else ~is_audio
    for n in range(x.shape[0]):
        x[n, :, mask[n]] = 0


# --- registry and entry points -------------------------------------------------------------------

FUSIONS: dict[str, FusionSpec] = {}
"""Every fusion by name, in registration order (the order of the CLI's choices)."""


def register_fusion(spec: FusionSpec) -> FusionSpec:
    """Adds `spec` to FUSIONS; a second fusion of the same name is refused (it would silently replace the first)."""
    if spec.name == "none":
        raise ValueError("'none' means no fusion (unimodal and pair encoders); give the fusion another name")
    if spec.name in FUSIONS:
        raise ValueError(f"a fusion named {spec.name!r} is already registered")
    if spec.built_on_read and spec.on_device is None:
        raise ValueError(f"fusion {spec.name!r} builds {', '.join(spec.built_on_read)} on read, which needs an on_device builder")
    FUSIONS[spec.name] = spec
    return spec


def list_fusions() -> list[str]:
    """The registered fusion names, in registration order."""
    return list(FUSIONS)


def device_fusions() -> list[str]:
    """The fusions `--fuse-on-device` can build from the stored faces and audio (those with an `on_device`)."""
    return [name for name, spec in FUSIONS.items() if spec.on_device is not None]


def fusion_choices_help() -> str:
    """The train command's --fusion help, from the registry: which fusions each encoder kind takes (no torch import,
    so the CLI starts fast)."""
    both = [n for n, s in FUSIONS.items() if {"image", "video"} <= set(s.kinds)]
    only = {kind: [n for n, s in FUSIONS.items() if kind in s.kinds and n not in both] for kind in ("image", "video")}
    groups = [f"{', '.join(both)} (2D/3D)"] + [f"{', '.join(names)} ({label})" for (kind, names), label in zip(only.items(), ("2D", "3D")) if names]
    return (f"{', '.join(groups)}, or none (unimodal, and the encoders that fuse themselves: `cli.py encoders`, kinds pair-* "
            "and sequences). Default: concat for av, none otherwise.")


_SEQUENCE = dict(arrays=_sequence_arrays, version=SEQUENCE_VERSION, kinds=("video",), ablation_arrays=("order",), ablate=_ablate_sequence)

for _spec in (
    FusionSpec("concat", "CFAS: face | spectrogram side by side, each S x S", _concat_arrays, _concat,
               square=False, ablate=_ablate_concat, on_device=_concat_on_device, built_on_read=("video",)),
    FusionSpec("concat224", "face squeezed to S-round(16S/224) wide | chunk round(16S/224) wide; 208+16 at S=224",
               _concat224_arrays, _concat224, ablate=_ablate_concat224),
    FusionSpec("stack", "face in channels 0-2, spectrogram in 3-5 (the seed code)", _stack_arrays, _stack,
               channels=6, ablate=_ablate_stack, on_device=_stack_on_device, built_on_read=("video",)),
    FusionSpec("sum", "SFAS in float: ImageNet-normalised face + normalised spectrogram", _sum_arrays, _sum,
               normalise=as_stored),
    FusionSpec("ffls", "sequence: faces V_1..V_K first, spectrogram chunks A_1..A_K last",
               build=_ordered_sequence(_faces_first), **_SEQUENCE),
    FusionSpec("fslf", "sequence: spectrogram chunks A_1..A_K first, faces V_1..V_K last",
               build=_ordered_sequence(_spectrograms_first), **_SEQUENCE),
    FusionSpec("ofos", "sequence: V_1 A_1 V_2 A_2 ... alternating", build=_ordered_sequence(_interleaved), **_SEQUENCE),
    FusionSpec("rfas", "sequence: the 2K items in a random order seeded per clip, stored in 'order'",
               build=_ordered_sequence(_random), **_SEQUENCE),
):
    register_fusion(_spec)


def get_fusion(name: str) -> FusionSpec:
    """The registered fusion; an unknown name is an error that lists the valid ones."""
    try:
        return FUSIONS[name]
    except KeyError:
        raise ValueError(f"unknown fusion {name!r}; valid: {', '.join(FUSIONS)}") from None


def fusion_arrays(name: str, frames: int, size: int) -> ArraySpecs:
    """Per output array of `fuse`: (shape of ONE clip, numpy dtype str)."""
    return get_fusion(name).arrays(frames, size)


def read_notes(name: str) -> dict:
    """What a fusion set's attributes say about the arrays it does not hold, for a reader with plain zarr."""
    spec = get_fusion(name)
    return {"built_on_read": {array: f"{spec.description}; built from faces/crops and audio/chunks (pipeline/fuse.py)"
                              for array in spec.built_on_read}} if spec.built_on_read else {}


def stored_arrays(name: str, frames: int, size: int) -> ArraySpecs:
    """The arrays a store holds for fusion `name`, created up front: `fusion_arrays` less `built_on_read`."""
    spec = get_fusion(name)
    return {k: v for k, v in spec.arrays(frames, size).items() if k not in spec.built_on_read}


@pinned  # normalisation and resizing: same bytes whatever the caller's thread settings
def fuse(
    name: str,
    *,
    faces: np.ndarray,
    middle: np.ndarray,
    spec: np.ndarray,
    chunks: np.ndarray,
    clip_id: str,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The fused arrays of one clip, exactly as `fusion_arrays(name, T, S)` declares them."""
    fusion = get_fusion(name)
    clip = _validated(faces, middle, spec, chunks, clip_id, seed)
    return fusion.build(clip)


def _validated(
    faces: np.ndarray, middle: np.ndarray, spec: np.ndarray, chunks: np.ndarray, clip_id: str, seed: int
) -> ClipInputs:
    """Checks the inputs agree on T and S and are uint8, so no fusion silently broadcasts or wraps."""
    if faces.ndim != 4 or faces.shape[3] != 3 or faces.shape[1] != faces.shape[2]:
        raise ValueError(f"faces must be (T, S, S, 3), got {faces.shape}")
    frames, size = faces.shape[0], faces.shape[1]
    expected = {
        "middle": (middle, (size, size, 3)),
        "spec": (spec, (size, size)),
        "chunks": (chunks, (frames, size, size)),
    }
    for label, (array, shape) in expected.items():
        if array.shape != shape:
            raise ValueError(f"{label} must be {shape} to match faces {faces.shape}, got {array.shape}")
    for label, array in {"faces": faces, "middle": middle, "spec": spec, "chunks": chunks}.items():
        if array.dtype != np.uint8:
            raise ValueError(f"{label} must be uint8, got {array.dtype}")
    return ClipInputs(faces, middle, spec, chunks, clip_id, seed)
