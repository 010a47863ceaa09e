"""Fusion on the workers and a writer that overlaps with computing through a bounded queue (pipeline/run.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import MelConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.extract import TaskResult, audio_arrays, audio_params, face_arrays, face_params, fusion_arrays, fusion_params
from pipeline.faces import FaceConfig
from pipeline.records import ClipRecord
from pipeline.run import (CLIPS_PER_TASK, WRITE_QUEUE, ExtractConfig, clip_task, clips_per_task, clips_task, materialise_fusion, process_clip, run_extract,
                          split_at_newest_shard, write_results)
from pipeline.splits import assign_splits
from stores.shards import EncodedRow, decode_row
from tests.remote_helpers import sample_corpus
from stores.store import FeatureStore

FACES, MEL = FaceConfig(frames=6, size=32, detect_every=3), MelConfig(n_mels=32)


@pytest.mark.slow
def test_fusions_made_on_the_workers_equal_fusions_derived_from_the_store(tmp_path):
    write_sample_corpus(tmp_path / "corpus", actors=3, sentences=1, seed=0, with_broken=True)
    records = assign_splits(load_corpus("sample", tmp_path / "corpus"), seed=0)
    config = ExtractConfig(faces=FACES, mel=MEL, fusions=("concat", "stack"))
    faces, audio, _, fused = process_clip(records[0], config, True, True, "cpu")
    assert faces.status == audio.status == "ok" and set(fused) == {"concat", "stack"}
    assert fused["concat"]["image"].shape == (32, 64, 3)
    assert process_clip(records[0], config, True, False, "cpu")[3] == {}  # one stage alone: fused later, from the store
    *encoded, encoded_fused = clip_task(records[0], config, True, True, "cpu")  # what the cluster runs: large arrays as chunk bytes
    assert isinstance(encoded[0].arrays["crops"], EncodedRow) and np.array_equal(decode_row(encoded[0].arrays["crops"]), faces.arrays["crops"])
    assert np.array_equal(decode_row(encoded_fused["concat"]["video"]), fused["concat"]["video"])
    location = tmp_path / "s.zarr"
    summary = run_extract(records, location, config, dataset="sample", class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"],
                          workers=0, progress=False)
    store = FeatureStore.open(location, mode="r+")
    faces_set, audio_set = store.feature_sets("faces")[0], store.feature_sets("audio")[0]
    both_ok = faces_set.ok() & audio_set.ok()
    assert 0 < both_ok.sum() < len(records)  # the broken clips are not fused
    for name in config.fusions:
        fused_set = store.feature_sets("fusion-" + name)[0]
        assert (fused_set.ok() == both_ok).all() and fused_set.done().all()
        made_on_workers = {key: fused_set[key][:] for key in fusion_arrays(name, FACES.frames, FACES.size)}
        store.uncommit_rows(fused_set, np.arange(len(records)))
        _, n = materialise_fusion(store, name, faces_set, audio_set, seed=0, progress=False, who={})
        assert n == len(records)
        for key, values in made_on_workers.items():
            assert np.array_equal(fused_set[key][:], values), (name, key)
    assert summary.fusions_computed == 2 * len(records)  # fused on the workers, plus the skipped rows marked after


def test_the_writer_never_falls_more_than_a_few_batches_behind(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", dataset="sample", class_names=["ANG"], split_seed=0)
    n, batch = 64, 4
    store.add_clips([ClipRecord(clip_id=f"c{i:04d}", video_path="v", label=0, emotion="ANG", speaker=str(i % 7)) for i in range(n)])
    faces = store.ensure_feature_set("faces", face_params(FACES), face_arrays(FACES), {})
    audio = store.ensure_feature_set("audio", audio_params(MEL, FACES.frames, FACES.size), audio_arrays(MEL, FACES.frames, FACES.size), {})
    fused = store.ensure_feature_set("fusion-concat", fusion_params("concat", faces.fingerprint, audio.fingerprint, 0),
                                     fusion_arrays("concat", FACES.frames, FACES.size), {})
    lag = []

    def results():
        for row in range(n):
            lag.append(row - int(fused.done().sum()))  # clips handed over but not yet written
            image = np.full((FACES.size, 2 * FACES.size, 3), row % 251, np.uint8)
            video = np.zeros((FACES.frames, FACES.size, 2 * FACES.size, 3), np.uint8)
            yield row, TaskResult("ok", ""), TaskResult("ok", ""), None, {"concat": {"image": image, "video": video}}  # no LLDs asked

    errors, n_fused = write_results(store, faces, audio, results(), commit_every=batch, fused={"concat": fused})
    assert errors == {} and n_fused == n
    assert faces.done().all() and audio.done().all() and fused.done().all()
    assert (fused["image"][:, 0, 0, 0] == np.arange(n) % 251).all()
    assert max(lag) <= (WRITE_QUEUE + 2) * batch, max(lag)  # queued + being written + filling


def test_a_row_equal_to_the_fill_value_is_written_without_zarr_scanning_for_it(tmp_path):
    """The writer skips zarr's empty-chunk check (a fifth of its CPU): a failed clip's all-zero row is stored
    like any other, and reads back the same."""
    import zarr

    from stores.store import _create_array, _write_rows

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    array = _create_array(group, "crops", 4, (2, 64, 64, 3), "uint8")
    _write_rows(array, np.array([0, 1]), np.zeros((2, 2, 64, 64, 3), np.uint8))
    assert list((tmp_path / "s.zarr" / "crops" / "c").rglob("*")), "the all-zero rows were left out of the shard"
    assert not zarr.open_array(str(tmp_path / "s.zarr" / "crops"), mode="r")[:].any()


def test_a_task_of_several_clips_fails_only_the_clip_that_raised(tmp_path_factory):
    """run.clips_task: clips travel to the workers a few per Dask task (CLIPS_PER_TASK); a bug in one clip must
    leave its neighbours' results whole, and name itself in its own status."""
    good = assign_splits(load_corpus("sample", sample_corpus(tmp_path_factory)), seed=0)[:2]
    config = ExtractConfig(faces=FACES, mel=MEL)
    results = clips_task([(good[0], True, True, False), (None, True, True, False), (good[1], True, True, False)], config, "cpu")
    assert [r[0].status for r in results] == ["ok", "error", "ok"] and [r[1].status for r in results] == ["ok", "error", "ok"]
    assert "AttributeError" in results[1][0].reason and results[1][2] is None
    assert results[0][0].source != results[2][0].source  # each clip's own results, in order


@pytest.mark.parametrize("workers", [1, 2, 3, 16, 64])
def test_small_runs_get_one_clip_per_task_so_no_worker_waits_on_a_last_large_task(workers):
    """Whatever the run's size: a task never exceeds CLIPS_PER_TASK; every worker gets at least 4 tasks when there
    are clips enough (or each clip is its own task), so the last task to finish is a small part of a worker's
    share; and a large run does batch CLIPS_PER_TASK clips (the point of batching)."""
    for clips in range(1, 40 * workers * CLIPS_PER_TASK):
        per_task = clips_per_task(clips, workers)
        tasks = -(-clips // per_task)
        assert 1 <= per_task <= CLIPS_PER_TASK, (clips, per_task)
        assert tasks >= min(clips, 4 * workers), (clips, per_task, tasks)
        if clips >= 4 * workers * CLIPS_PER_TASK:
            assert per_task == CLIPS_PER_TASK, (clips, per_task)


def test_a_commit_leaves_the_rows_of_the_newest_shard_for_the_next_commit():
    """Clips finish about in row order: committing the shard still filling would write it once per commit."""
    def rows(items: list) -> list[int]:
        return [row for row, _ in items]

    pending = {"faces": [(r, "x") for r in (3, 30, 31, 33, 40)], "audio": [(r, "x") for r in (30, 40)], "lld": []}
    now, later = split_at_newest_shard(pending)
    assert rows(now["faces"]) == [3, 30, 31] and rows(later["faces"]) == [33, 40]
    assert rows(now["audio"]) == [30] and rows(later["audio"]) == [40] and now["lld"] == later["lld"] == []
    one_shard = {"faces": [(r, "x") for r in (64, 70)], "audio": []}
    assert split_at_newest_shard(one_shard) == (one_shard, {"faces": [], "audio": []})  # nothing older: all of it now
