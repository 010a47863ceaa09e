"""Tests of pipeline.fuse on small synthetic clips whose every time step and modality is recognisable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.fuse import (
    FUSIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    concat224_widths,
    fuse,
    fusion_arrays,
    list_fusions,
    register_fusion,
    side_by_side,
)

T, S = 6, 16
K = T // 2
SEQUENCE_FUSIONS = [name for name in FUSIONS if "order" in fusion_arrays(name, T, S)]
"""MultiMAE-DER's token sequences: the fusions that record the order of their items."""


def make_clip(frames: int = T, size: int = S, clip_id: str = "1001_DFA_ANG_XX") -> dict:
    """Face t is filled with 10 + t (channel c adds c), chunk t with 100 + t, so every item is unique."""
    faces = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        faces[t] = 10 + t + np.arange(3, dtype=np.uint8)
    chunks = np.empty((frames, size, size), dtype=np.uint8)
    chunks[:] = (100 + np.arange(frames, dtype=np.uint8))[:, None, None]
    middle = np.full((size, size, 3), 50, dtype=np.uint8)
    spec = np.full((size, size), 200, dtype=np.uint8)
    return dict(faces=faces, middle=middle, spec=spec, chunks=chunks, clip_id=clip_id)


def face_item(clip: dict, step: int) -> np.ndarray:
    return clip["faces"][step]


def audio_item(clip: dict, step: int) -> np.ndarray:
    return np.repeat(clip["chunks"][step][..., None], 3, axis=-1)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_outputs_match_declared_arrays(name: str) -> None:
    declared = fusion_arrays(name, T, S)
    fused = fuse(name, **make_clip())
    assert set(fused) == set(declared)
    for key, (shape, dtype) in declared.items():
        assert fused[key].shape == shape, key
        assert fused[key].dtype == np.dtype(dtype), key


def test_registry_entries_are_described_and_names_unique() -> None:
    assert SEQUENCE_FUSIONS and all(spec.name == name and spec.description for name, spec in FUSIONS.items())
    assert list_fusions() == list(FUSIONS)
    for taken in (next(iter(FUSIONS)), "none"):  # a second spec of a name, or the word for "no fusion"
        with pytest.raises(ValueError, match=repr(taken)):
            register_fusion(dataclasses.replace(next(iter(FUSIONS.values())), name=taken))
    assert "none" not in FUSIONS


def test_unknown_fusion_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="concat224.*fslf|fslf.*concat224"):
        fuse("nope", **make_clip())
    with pytest.raises(ValueError, match="rfas"):
        fusion_arrays("nope", T, S)


def test_mismatched_inputs_rejected() -> None:
    clip = make_clip()
    clip["chunks"] = clip["chunks"][:-1]
    with pytest.raises(ValueError, match="chunks"):
        fuse("concat", **clip)
    clip = make_clip()
    clip["spec"] = clip["spec"].astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        fuse("concat", **clip)


def test_concat_face_left_spectrogram_right() -> None:
    clip = make_clip()
    fused = fuse("concat", **clip)
    np.testing.assert_array_equal(fused["image"][:, :S], clip["middle"])
    np.testing.assert_array_equal(fused["image"][:, S:], np.repeat(clip["spec"][..., None], 3, -1))
    for t in range(T):
        np.testing.assert_array_equal(fused["video"][t, :, :S], face_item(clip, t))
        np.testing.assert_array_equal(fused["video"][t, :, S:], audio_item(clip, t))


def test_side_by_side_equals_the_face_beside_the_grey_image_repeated_into_three_channels() -> None:
    rng = np.random.default_rng(0)
    face, gray = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), rng.integers(0, 256, (3, 8, 5), dtype=np.uint8)
    want = np.concatenate([face, np.repeat(gray[..., None], 3, axis=-1)], axis=2)
    assert np.array_equal(side_by_side(face, gray), want) and np.array_equal(side_by_side(face[0], gray[0]), want[0])


def test_concat224_widths_at_224() -> None:
    assert concat224_widths(224) == (208, 16)
    assert concat224_widths(112) == (104, 8)
    clip = make_clip(frames=2, size=224)
    fused = fuse("concat224", **clip)
    assert fused["video"].shape == (2, 224, 224, 3)
    for t in range(2):
        face_colour = face_item(clip, t)[0, 0]
        np.testing.assert_array_equal(fused["video"][t, :, :208], np.broadcast_to(face_colour, (224, 208, 3)))
        np.testing.assert_array_equal(fused["video"][t, :, 208:], clip["chunks"][t, 0, 0])
    np.testing.assert_array_equal(fused["image"][:, :208], 50)
    np.testing.assert_array_equal(fused["image"][:, 208:], 200)


def test_concat224_squeezes_the_face_rather_than_cropping_it() -> None:
    clip = make_clip(frames=2, size=224)
    clip["faces"][:, :, 112:] = 255  # right half of each face white
    fused = fuse("concat224", **clip)
    face = fused["video"][0, :, :208, 0]
    assert np.all(face[:, :100] == 10) and np.all(face[:, 108:] == 255)  # white half kept, narrower


def test_stack_channels() -> None:
    clip = make_clip()
    fused = fuse("stack", **clip)
    np.testing.assert_array_equal(fused["image"][..., :3], clip["middle"])
    assert np.all(fused["image"][..., 3:] == 200)
    np.testing.assert_array_equal(fused["video"][..., :3], clip["faces"])
    for t in range(T):
        np.testing.assert_array_equal(fused["video"][t, ..., 3:], audio_item(clip, t))


def expected_sum(face_value: float, spec_value: float) -> np.ndarray:
    face = (face_value / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return face + (spec_value / 255.0 - 0.5) / 0.5


def test_sum_is_normalised_float_sum_without_wraparound() -> None:
    clip = make_clip()
    clip["middle"][:] = 200  # 200 + 200 wraps to 144 in uint8
    fused = fuse("sum", **clip)
    np.testing.assert_allclose(fused["image"][0, 0], expected_sum(200, 200), rtol=2e-3)
    np.testing.assert_allclose(fused["image"], np.broadcast_to(expected_sum(200, 200), (S, S, 3)), 2e-3)
    clip["middle"][:] = 100
    clip["spec"][:] = 100
    lower = fuse("sum", **clip)["image"]
    assert np.all(fused["image"] > lower)  # a wrapped uint8 sum (144 < 200) would invert this
    video = fuse("sum", **clip)["video"]
    for channel in range(3):
        face_value, chunk_value = clip["faces"][1, 0, 0, channel], clip["chunks"][1, 0, 0]
        expected = expected_sum(float(face_value), float(chunk_value))[channel]
        np.testing.assert_allclose(video[1, 3, 3, channel], expected, rtol=2e-3)


def span_audio_item(clip: dict, j: int) -> np.ndarray:
    """Sequence audio item j of an even-T clip whose chunks are each one value: chunk 2j's value on the left half,
    chunk 2j+1's on the right (the two steps side by side, each squeezed to half width)."""
    half = clip["chunks"].shape[2] // 2
    joined = np.concatenate([clip["chunks"][2 * j][:, :half], clip["chunks"][2 * j + 1][:, half:]], axis=1)
    return np.repeat(joined[..., None], 3, axis=-1)


def items_in(video: np.ndarray, clip: dict) -> list[str]:
    """Names each item of a fused sequence: 'V1'..'VK' faces (steps 0, 2, 4, ...), 'A1'..'AK' the chunks of steps
    2j and 2j+1 together."""
    catalogue = {f"V{k + 1}": face_item(clip, 2 * k) for k in range(K)}
    catalogue |= {f"A{k + 1}": span_audio_item(clip, k) for k in range(K)}
    names = []
    for item in video:
        matches = [name for name, image in catalogue.items() if np.array_equal(item, image)]
        assert len(matches) == 1
        names.append(matches[0])
    return names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ffls", ["V1", "V2", "V3", "A1", "A2", "A3"]),
        ("fslf", ["A1", "A2", "A3", "V1", "V2", "V3"]),
        ("ofos", ["V1", "A1", "V2", "A2", "V3", "A3"]),
    ],
)
def test_fixed_sequence_orders(name: str, expected: list[str]) -> None:
    clip = make_clip()
    fused = fuse(name, **clip)
    assert items_in(fused["video"], clip) == expected
    assert order_names(fused["order"]) == expected


def order_names(order: np.ndarray) -> list[str]:
    return [f"V{j + 1}" if j < K else f"A{j - K + 1}" for j in order.tolist()]


def audio_items(fused: dict) -> np.ndarray:
    """The K audio items of a fused sequence, in time order, whatever the fusion's order."""
    order = fused["order"].astype(int)
    k = len(order) // 2
    return fused["video"][np.argsort(order)][k:, ..., 0]


@pytest.mark.parametrize("frames", [6, 7, 16])
@pytest.mark.parametrize("name", SEQUENCE_FUSIONS)
def test_the_audio_of_every_step_reaches_the_sequence(name: str, frames: int) -> None:
    """SPEC (MultiMAE-DER): no span of audio is skipped. Until the items covered two steps each, the chunks of
    the odd steps (half of every clip's audio) were dropped: changing one of them changed nothing."""
    clip = make_clip(frames=frames)
    base = audio_items(fuse(name, **clip))
    for step in range(frames):
        changed = {**clip, "chunks": clip["chunks"].copy()}
        changed["chunks"][step] = 255
        after = audio_items(fuse(name, **changed))
        assert not np.array_equal(after, base), f"the audio of step {step} never reaches {name}"


def test_each_audio_item_is_its_two_steps_side_by_side_in_time_order() -> None:
    """T = 2K: item j's left half is step 2j's chunk, its right half step 2j+1's, each squeezed to half width."""
    rng = np.random.default_rng(0)
    clip = make_clip(frames=6)
    clip["chunks"] = rng.integers(0, 256, clip["chunks"].shape, dtype=np.uint8)
    items = audio_items(fuse("ofos", **clip))
    for j in range(3):
        pair = np.concatenate([clip["chunks"][2 * j], clip["chunks"][2 * j + 1]], axis=1).astype(np.float64)
        halved = (pair[:, 0::2] + pair[:, 1::2]) / 2  # each two neighbouring columns: one
        assert np.abs(items[j] - halved).max() <= 0.5 + 1e-9  # area averaging, rounded to uint8
    uniform = make_clip(frames=6)  # one value per chunk: the halves are exactly the two steps' values
    items = audio_items(fuse("ffls", **uniform))
    for j in range(3):
        assert np.all(items[j][:, : S // 2] == uniform["chunks"][2 * j, 0, 0])
        assert np.all(items[j][:, S // 2 :] == uniform["chunks"][2 * j + 1, 0, 0])


@pytest.mark.parametrize("frames", [1, 2, 6, 7, 16])
def test_each_face_item_is_a_face_from_its_audio_items_span(frames: int) -> None:
    """Item j covers [jT/K, (j+1)T/K) in steps; its face is the step whose span holds the item's centre."""
    clip = make_clip(frames=frames)
    fused = fuse("ffls", **clip)
    k = len(fused["order"]) // 2
    assert k == max(1, frames // 2)
    for j in range(k):
        step = [t for t in range(frames) if np.array_equal(fused["video"][j], face_item(clip, t))]
        assert len(step) == 1
        centre = (j + 0.5) * frames / k
        assert step[0] < centre <= step[0] + 1, (j, step, centre)


def test_only_fusions_past_version_1_get_a_new_fingerprint() -> None:
    """A store's sequence sets made when the odd steps were dropped must not be reused (the sequences are at version
    2); the other fusions' numbers did not change, so their sets (params as stores hold them: the one global version,
    3, that every stage had then) still are."""
    from pipeline.extract import fusion_params
    from stores.fingerprint import fingerprint

    assert {FUSIONS[name].version for name in SEQUENCE_FUSIONS} == {2}
    for name in FUSIONS:
        as_stored_before = {"stage": "fusion", "fusion": name, "faces": "f", "audio": "a", "seed": 0, "algorithm": 3}
        now = fingerprint(fusion_params(name, "f", "a", 0))
        assert (now != fingerprint(as_stored_before)) == (FUSIONS[name].version > 1), name


def test_rfas_is_a_recorded_reproducible_permutation() -> None:
    clip = make_clip(frames=16)
    k = 8
    fused = fuse("rfas", **clip, seed=3)
    order = fused["order"]
    assert sorted(order.tolist()) == list(range(2 * k))
    for position, j in enumerate(order.tolist()):
        expected = face_item(clip, 2 * j) if j < k else span_audio_item(clip, j - k)
        np.testing.assert_array_equal(fused["video"][position], expected)
    again = fuse("rfas", **clip, seed=3)
    np.testing.assert_array_equal(again["order"], order)
    np.testing.assert_array_equal(again["video"], fused["video"])
    other_clip = fuse("rfas", **{**clip, "clip_id": "1002_DFA_ANG_XX"}, seed=3)
    other_seed = fuse("rfas", **clip, seed=4)
    assert not np.array_equal(other_clip["order"], order)
    assert not np.array_equal(other_seed["order"], order)
