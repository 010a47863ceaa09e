"""ComParE LLD sequences (seed 002): the derived openSMILE framing, the pooling to the face steps, and the pipeline
that makes them from the audio it already decoded for the mel."""

from __future__ import annotations

import numpy as np
import opensmile
import pytest

import pipeline.extract as extract_mod
from pipeline.audio import MelConfig
from pipeline.compare import N_FEATURES, LldConfig, compare_llds, frame_centres, pool_to_spans
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, process_clip, run_extract
from pipeline.splits import assign_splits
from stores.sequences import MissingSequencesError, sequence_sets
from stores.store import FeatureStore

SR = 22050
CLASSES = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]


def voiced(seconds: float, f0: float, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sign(np.sin(2 * np.pi * f0 * t)) * np.hanning(t.size)).astype(np.float32)


def test_llds_are_comparE_2016_with_deltas_every_16_ms():
    result = compare_llds(voiced(2.0, 180.0), SR)
    names = opensmile.Smile(opensmile.FeatureSet.ComParE_2016, opensmile.FeatureLevel.LowLevelDescriptors).feature_names
    assert result.names[:65] == tuple(names)
    assert [n.replace("_de", "") for n in result.names[65:]] == names  # openSMILE names a delta x_de or x_de[k]
    assert result.features.shape[1] == N_FEATURES == 130
    starts = result.times[:, 0]
    assert np.allclose(np.diff(starts[:-1]), 0.016, atol=1e-6)  # opensmile's own ComParE step is 10 ms
    assert starts[-1] <= starts[-2] + 0.016  # its last frame is the end-of-input one, cut short
    assert abs(len(starts) - (2.0 - 0.060) / 0.016) <= 2
    f0 = result.features[:, result.names.index("F0final_sma")]
    assert 150 < np.median(f0[f0 > 0]) < 210  # the pitch is still found with the new framing


def test_same_audio_same_bytes_and_pitch_shows_in_the_llds():
    low, high = voiced(1.5, 120.0), voiced(1.5, 240.0)
    a, b = compare_llds(low, SR), compare_llds(low, SR)
    assert a.features.tobytes() == b.features.tobytes() and a.times.tobytes() == b.times.tobytes()
    f0 = lambda r: np.median(r.features[:, 0][r.features[:, 0] > 0])  # noqa: E731
    assert f0(compare_llds(high, SR)) > 1.6 * f0(a)


def test_pooling_uses_the_mel_chunks_rule_and_marks_spans_after_the_audio():
    config = LldConfig()
    times = np.stack([np.arange(10) * 0.016, np.arange(10) * 0.016 + 0.06], axis=1).astype(np.float32)
    features = np.arange(10 * N_FEATURES, dtype=np.float32).reshape(10, N_FEATURES)
    spans = np.array([[0.0, 0.05], [0.05, 0.10], [0.10, 0.105], [0.5, 0.6]])
    pooled, valid = pool_to_spans(features, times, spans, config)
    centres = frame_centres(times, config)  # 0.016, 0.032, ...
    first = (centres >= 0.0) & (centres < 0.05)
    assert np.allclose(pooled[0], features[first].mean(0))
    assert np.allclose(pooled[1], features[(centres >= 0.05) & (centres < 0.10)].mean(0))
    assert np.allclose(pooled[2], features[np.argmin(np.abs(centres - 0.1025))])  # shorter than a step: the nearest frame
    assert valid.tolist() == [True, True, True, False] and not pooled[3].any()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(root, actors=3, sentences=1, seed=2)
    return assign_splits(load_corpus("sample", root), seed=0)


FACES = FaceConfig(frames=4, size=32, detect_every=2)
MEL = MelConfig(n_mels=32)


def test_one_decode_serves_the_mel_and_the_llds(corpus, monkeypatch):
    calls = []
    real = extract_mod.decode_audio
    monkeypatch.setattr(extract_mod, "decode_audio", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    config = ExtractConfig(faces=FACES, mel=MEL, fusions=(), lld=LldConfig())
    faces, audio, lld, _ = process_clip(corpus[0], config, False, True, "cpu", True)
    assert faces is None and audio.status == "ok" and lld.status == "ok"
    assert len(calls) == 1  # the WAV was decoded once, for both
    n = int(lld.arrays["lld_frames"])
    assert n > 50 and lld.arrays["lld"][n:].sum() == 0 and lld.arrays["lld"][:n].any()
    assert np.array_equal(lld.arrays["spans"], audio.arrays["spans"])  # the same T spans as the mel chunks
    assert lld.arrays["pooled"].shape == (4, N_FEATURES) and lld.arrays["pooled_valid"].all()
    _, _, alone, _ = process_clip(corpus[0], config, False, False, "cpu", True)  # LLDs alone still decode (once)
    assert alone.status == "ok" and len(calls) == 2
    assert alone.arrays["lld"].tobytes() == lld.arrays["lld"].tobytes()


def test_lld_feature_set_is_fingerprinted_and_added_to_an_existing_store(corpus, tmp_path):
    corpus = corpus[::3]  # six clips, every actor
    location = str(tmp_path / "s.zarr")
    base = ExtractConfig(faces=FACES, mel=MEL, fusions=())
    first = run_extract(corpus, location, base, dataset="sample", class_names=CLASSES, workers=0, progress=False)
    assert not any(name.startswith("lld-") for name in first.feature_sets)
    second = run_extract(corpus, location, ExtractConfig(faces=FACES, mel=MEL, fusions=(), lld=LldConfig()),
                         dataset="sample", class_names=CLASSES, workers=0, progress=False)
    assert (second.faces_computed, second.audio_computed, second.lld_computed) == (0, 0, len(corpus))
    store = FeatureStore.open(location)
    (lld,) = store.feature_sets("lld")
    assert lld.ok().all() and lld.params["step"] == 0.016 and lld.params["window"] == 0.032
    assert lld.params["opensmile"] == opensmile.__version__ and lld.params["decoded_rate"] == MEL.sample_rate
    assert lld["lld_times"][0][1, 0] == pytest.approx(0.016)
    # the LLDs alone do not feed the ladder: the store is refused in one line naming the command that makes the rest
    with pytest.raises(MissingSequencesError, match=r"`python cli\.py embed --store ") as refused:
        sequence_sets(store, store.feature_sets("faces")[0])
    assert "\n" not in str(refused.value)
    third = run_extract(corpus, location, ExtractConfig(faces=FACES, mel=MEL, fusions=(), lld=LldConfig(step=0.010)),
                        dataset="sample", class_names=CLASSES, workers=0, progress=False)
    assert third.lld_computed == len(corpus) and len(store.feature_sets("lld")) == 2  # another framing, another set
