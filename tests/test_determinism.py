"""Same inputs, same bytes: stored features must not depend on thread counts, workers or the scheduler.

The kernel tests set the thread pools the way a caller would (a notebook with every core, a Dask nanny with
one) and demand bit-identical output: before the kernels were pinned, the mel product moved ~2,000 float32
elements of five random clips and MTCNN's boxes moved in their last bits. The end-to-end test extracts one
corpus three ways and compares every array of every feature set, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from threadpoolctl import threadpool_limits

from pipeline.audio import MelConfig, MelExtractor
from pipeline.numeric import single_threaded
from tests.remote_helpers import arrays_of, cli, extract_args, reference_store, sample_corpus


def test_log_mel_is_bit_identical_whatever_the_blas_threads():
    extractor = MelExtractor(MelConfig())
    rng = np.random.default_rng(0)
    for _ in range(5):
        clip = (0.1 * rng.standard_normal(3 * 22050)).astype(np.float32)
        with threadpool_limits(1):
            one = extractor.log_mel(clip)
        with threadpool_limits(2):
            two = extractor.log_mel(clip)
        assert one.tobytes() == two.tobytes()


def test_face_detection_is_bit_identical_whatever_the_torch_threads(grid_dir):
    import torch

    from pipeline.faces import FaceConfig, track_faces
    from pipeline.media import decode_frames, probe

    path = str(sorted(grid_dir.glob("*.mpg"))[0])
    info = probe(path)
    frames = decode_frames(path, list(range(0, 64, 4)), info.width, info.height)
    before = torch.get_num_threads()
    tracks = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            tracks.append(track_faces(frames[:-1], frames[-1], FaceConfig(size=64)))
    finally:
        torch.set_num_threads(before)
    for name in ("boxes", "prob", "crops", "middle", "middle_box"):
        assert getattr(tracks[0], name).tobytes() == getattr(tracks[1], name).tobytes(), name
    assert torch.get_num_threads() == before  # the pin is lifted afterwards


def test_pinning_is_restored_and_nests():
    from threadpoolctl import threadpool_info

    def blas_threads() -> int:
        return min(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")

    with threadpool_limits(2):
        with single_threaded():
            with single_threaded():
                assert blas_threads() == 1
            assert blas_threads() == 1  # the inner exit must not lift the outer pin
        assert blas_threads() == 2


def test_the_loaded_libraries_are_listed_again_only_after_an_import():
    """Listing them reads the memory map (~2 ms a clip); a library loaded by a later import must still be pinned."""
    import sys
    import types

    from stores.numeric import thread_pools

    first = thread_pools()
    assert thread_pools() is first
    sys.modules["avstore_test_new_module"] = types.ModuleType("avstore_test_new_module")
    try:
        assert thread_pools() is not first
    finally:
        del sys.modules["avstore_test_new_module"]


@pytest.mark.slow
def test_extraction_is_byte_identical_across_threads_workers_and_in_process(tmp_path_factory, tmp_path):
    """The session's reference store is `--workers 0` with 2 BLAS/OpenMP threads (remote_helpers)."""
    corpus = sample_corpus(tmp_path_factory)
    reference = arrays_of(reference_store(tmp_path_factory))
    assert any(key.endswith("/mel") for key in reference) and any(key.endswith("/boxes") for key in reference)
    for name, workers, threads in (("in-process, 1 thread", "0", "1"), ("2 dask workers", "2", None)):
        env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        if threads:
            env.update(OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        store = tmp_path / f"{workers}-{threads}.zarr"
        result = cli(*extract_args(corpus, str(store), workers=workers), env=env)
        assert result.returncode == 0, result.stderr
        arrays = arrays_of(store)
        assert arrays.keys() == reference.keys(), name
        differing = [key for key in reference if reference[key].tobytes() != arrays[key].tobytes()]
        assert not differing, f"{name} differs from in-process with 2 threads in {differing}"


def _nudge(store, feature_kind: str, array: str, ulps: int) -> str:
    """Move one float element of the first committed row by `ulps` units in the last place (its bit pattern
    plus `ulps`) and rewrite the checksums, as a store made on another CPU would look; returns the clip id."""
    from stores.integrity import write_checksums
    from stores.location import locate

    root = zarr.open_group(str(store), mode="r+")
    group = next(g for n, g in root["features"].groups() if n.startswith(feature_kind + "-"))
    row = int(np.flatnonzero(group["done"][:] == 1)[0])
    values = group[array][row]
    bits = values.view(f"u{values.dtype.itemsize}").reshape(-1)
    bits[bits.size // 2] += ulps
    group[array][row] = values
    write_checksums(locate(str(store)))
    return str(root["clips/clip_id"][row])


def test_diff_reports_ulps_and_accepts_a_tolerance(tmp_path_factory, tmp_path):
    reference = reference_store(tmp_path_factory)
    other = tmp_path / "other.zarr"
    shutil.copytree(reference, other)
    clip = _nudge(other, "audio", "mel", ulps=1)

    strict = cli("diff", str(reference), str(other))
    assert strict.returncode == 1, strict.stdout
    assert clip in strict.stdout and "max 1 ulp" in strict.stdout, strict.stdout
    assert "numeric environment" in strict.stdout  # why two stores may differ: shown beside the difference

    tolerant = cli("diff", str(reference), str(other), "--tolerance", "1")
    assert tolerant.returncode == 0, tolerant.stdout
    assert "within 1 ulp" in tolerant.stdout and clip in tolerant.stdout, tolerant.stdout

    report = json.loads(cli("diff", str(reference), str(other), "--json").stdout)
    stats = next(v for k, v in report["array_stats"].items() if k.endswith("/mel"))
    assert stats["max_ulps"] == 1 and 0 < stats["max_abs"] < 0.1 and stats["clips"] == [clip]


def test_diff_tolerance_does_not_hide_a_larger_difference(tmp_path_factory, tmp_path):
    other = tmp_path / "other.zarr"
    shutil.copytree(reference_store(tmp_path_factory), other)
    _nudge(other, "audio", "mel", ulps=8)
    result = cli("diff", str(reference_store(tmp_path_factory)), str(other), "--tolerance", "2")
    assert result.returncode == 1 and "max 8 ulps" in result.stdout, result.stdout


def test_diff_rejects_a_negative_tolerance(tmp_path_factory):
    store = str(reference_store(tmp_path_factory))
    result = cli("diff", store, store, "--tolerance", "-1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_feature_sets_record_their_numeric_environment(tmp_path_factory):
    info = json.loads(cli("info", "--store", str(reference_store(tmp_path_factory)), "--json").stdout)
    for feature_set in info["feature_sets"]:
        environments = feature_set["numeric"]
        assert environments, feature_set["name"]
        for env in environments:
            assert env["pinned_threads"] == 1 and env["machine"]
            assert any(lib.get("user_api") == "blas" and lib.get("architecture") for lib in env["libraries"])


def test_ulp_distance_counts_representable_values_across_zero_and_types():
    from stores.diff import ulp_distance

    for dtype in (np.float16, np.float32, np.float64):
        x = np.array([1.0, -1.0, 0.0, -0.0], dtype=dtype)
        up = np.nextafter(np.nextafter(x, dtype(np.inf)), dtype(np.inf))
        assert ulp_distance(x, up).tolist() == [2, 2, 2, 2], dtype
        smallest = np.nextafter(dtype(0), dtype(1))
        assert ulp_distance(np.array([-smallest]), np.array([smallest])).tolist() == [2]  # -tiny, ±0, +tiny
    assert ulp_distance(np.array([3, 250], np.uint8), np.array([4, 5], np.uint8)).tolist() == [1, 245]


def stage_fingerprints() -> dict[str, str]:
    """Every stage's fingerprint for default settings: faces, audio, lld, and each fusion made from those faces and audio."""
    from pipeline.compare import LldConfig
    from pipeline.extract import audio_params, face_params, fusion_params, lld_params
    from pipeline.faces import FaceConfig
    from pipeline.fuse import FUSIONS
    from stores.fingerprint import fingerprint

    mel = MelConfig()
    found = {"faces": fingerprint(face_params(FaceConfig())), "audio": fingerprint(audio_params(mel, 16, 224)),
             "lld": fingerprint(lld_params(LldConfig(), mel, 16))}
    return {**found, **{f"fusion-{name}": fingerprint(fusion_params(name, found["faces"], found["audio"], 0)) for name in FUSIONS}}


def test_a_stage_version_re_fingerprints_that_stage_alone(monkeypatch):
    """One global version used to re-fingerprint faces and audio (and so every store's sets) when one fusion's
    formula changed. Now each stage's version moves its own fingerprint, and those of the fusions made from it."""
    import dataclasses

    from pipeline.compare import LldConfig
    from pipeline.faces import FaceConfig
    from pipeline.fuse import FUSIONS

    before = stage_fingerprints()
    fusions = {f"fusion-{name}" for name in FUSIONS}
    for stage, config, moves_too in (("faces", FaceConfig, fusions), ("audio", MelConfig, fusions), ("lld", LldConfig, set())):
        with monkeypatch.context() as patch:
            patch.setattr(config, "VERSION", config.VERSION + 1)
            after = stage_fingerprints()
        assert {k for k in before if after[k] != before[k]} == {stage, *moves_too}, stage
    for name, spec in FUSIONS.items():
        with monkeypatch.context() as patch:
            patch.setitem(FUSIONS, name, dataclasses.replace(spec, version=spec.version + 1))
            after = stage_fingerprints()
        assert {k for k in before if after[k] != before[k]} == {f"fusion-{name}"}, name


def test_stores_made_before_stage_versions_keep_their_fingerprints():
    """Every stage's params still say "algorithm": 3, the one global version every stage had before each got its
    own, and a fusion at version 1 adds nothing: a store made then finds its feature sets (checked once by hand: a
    store extracted by the code before this change was reused whole by extract after it)."""
    from pipeline.compare import LldConfig
    from pipeline.extract import FUSION_BASE_VERSION, audio_params, face_params, fusion_params, lld_params
    from pipeline.faces import FaceConfig
    from pipeline.fuse import FUSIONS

    mel = MelConfig()
    params = [face_params(FaceConfig()), audio_params(mel, 16, 224), lld_params(LldConfig(), mel, 16), *(fusion_params(n, "f", "a", 0) for n in FUSIONS)]
    assert {p["algorithm"] for p in params} == {FUSION_BASE_VERSION} == {3}
    assert all(("fusion_version" in p) == (FUSIONS[p["fusion"]].version > 1) for p in params if p["stage"] == "fusion")
