"""Fusion on the workers, tasks of whole shards that write them, and the client's commit (pipeline/run.py, spans.py, commit.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.audio import MelConfig
from pipeline.corpora import load_corpus
from pipeline.corpora.sample import write_sample_corpus
from pipeline.extract import audio_arrays, audio_params, face_arrays, face_params, fusion_arrays, fusion_params, stored_arrays
from pipeline.faces import FaceConfig
from pipeline.records import ClipRecord
from pipeline.run import ExtractConfig, materialise_fusion, process_clip, run_extract, shards_task
from pipeline.spans import Span, plan_spans, rows_per_span, sharded_arrays
from pipeline.splits import assign_splits
from tests.remote_helpers import sample_corpus
from stores.location import locate
from stores.store import SHARD_ROWS, FeatureStore

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
        assert "video" not in fused_set.group and "image" in fused_set.group  # built on read from the faces and chunks
        made_on_workers = {key: fused_set[key][:] for key in stored_arrays(name, FACES.frames, FACES.size)}
        store.uncommit_rows(fused_set, np.arange(len(records)))
        _, n = materialise_fusion(store, name, faces_set, audio_set, seed=0, progress=False, who={})
        assert n == len(records)
        for key, values in made_on_workers.items():
            assert np.array_equal(fused_set[key][:], values), (name, key)
    assert summary.fusions_computed == 2 * len(records)  # fused on the workers, plus the skipped rows marked after


def test_a_row_equal_to_the_fill_value_is_written_without_zarr_scanning_for_it(tmp_path):
    """The writer skips zarr's empty-chunk check (a fifth of its CPU): a failed clip's all-zero row is stored
    like any other, and reads back the same."""
    import zarr

    from stores.store import _create_array, write_runs

    group = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    array = _create_array(group, "crops", 4, (2, 64, 64, 3), "uint8")
    write_runs(array, np.array([0, 1]), np.zeros((2, 2, 64, 64, 3), np.uint8))
    assert list((tmp_path / "s.zarr" / "crops" / "c").rglob("*")), "the all-zero rows were left out of the shard"
    assert not zarr.open_array(str(tmp_path / "s.zarr" / "crops"), mode="r")[:].any()


def store_with_sets(location, records, config: ExtractConfig) -> tuple[FeatureStore, dict]:
    store = FeatureStore.create(location, dataset="sample", class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], split_seed=0)
    store.add_clips(records)
    faces = store.ensure_feature_set("faces", face_params(config.faces), face_arrays(config.faces), {})
    audio = store.ensure_feature_set("audio", audio_params(config.mel, config.faces.frames, config.faces.size),
                                     audio_arrays(config.mel, config.faces.frames, config.faces.size), {})
    # every array of the fusion, the video too: a set as stores made before issue 24 hold it, still filled by new clips
    fused = store.ensure_feature_set("fusion-concat", fusion_params("concat", faces.fingerprint, audio.fingerprint, 0),
                                     fusion_arrays("concat", config.faces.frames, config.faces.size), {})
    return store, {"faces": faces, "audio": audio, "fusion-concat": fused}


def test_a_task_writes_its_shards_and_fails_only_the_clip_that_raised(tmp_path_factory, tmp_path):
    """run.shards_task: a bug in one clip must leave its neighbours' results and rows whole, and name itself in
    its own status; the task writes every large array's shard, and sends back only small values."""
    import pickle

    good = assign_splits(load_corpus("sample", sample_corpus(tmp_path_factory)), seed=0)[:2]
    config = ExtractConfig(faces=FACES, mel=MEL)
    store, sets = store_with_sets(tmp_path / "s.zarr", good + [ClipRecord(clip_id="x", video_path="v", label=0, emotion="ANG", speaker="9")], config)
    arrays = {kind: sharded_arrays(s, dict(s.group.arrays())) for kind, s in sets.items()}
    span = Span(str(tmp_path / "s.zarr"), [(0, good[0], True, True, False), (2, None, True, True, False), (1, good[1], True, True, False)], arrays)
    result = shards_task(span, config, "cpu")
    assert result.rows == [0, 2, 1]
    assert [r["faces"].status for r in result.stages] == ["ok", "error", "ok"] and "AttributeError" in result.stages[1]["faces"].reason
    assert "fusion-concat" not in result.stages[1] and result.stages[0]["fusion-concat"].status == "ok"  # not committed: redone next run
    assert "crops" not in result.stages[0]["faces"].arrays and "boxes" in result.stages[0]["faces"].arrays  # small values only
    assert len(pickle.dumps(result)) < 20_000
    written = {rel for rel in result.files}
    assert written == {a.key(0) for by_name in arrays.values() for a in by_name.values()}  # one shard each, all written
    expected = process_clip(good[1], config, True, True, "cpu")
    assert np.array_equal(sets["faces"]["crops"][1], expected[0].arrays["crops"])  # zarr reads what the worker wrote
    assert np.array_equal(sets["fusion-concat"]["video"][1], expected[3]["concat"]["video"])
    assert not sets["faces"]["crops"][2].any()


@pytest.mark.parametrize("commit_every", [1, 3, 32, 47, 100])
def test_tasks_cover_whole_shards_so_no_shard_is_written_by_two_tasks(commit_every):
    class Array:
        def __init__(self, shard_rows: int):
            self.shard_rows = shard_rows

    layouts = {"faces": {"crops": Array(SHARD_ROWS)}, "fusion-concat": {"video": Array(SHARD_ROWS)}}
    span_rows = rows_per_span(layouts, commit_every)
    assert span_rows % SHARD_ROWS == 0 and span_rows == SHARD_ROWS * max(1, round(commit_every / SHARD_ROWS))
    todo = [(row, None, True, True, False) for row in (200, 3, 4, 31, 32, 95, 96, 97)]
    spans = plan_spans(todo, span_rows)
    shards = [{row // SHARD_ROWS for row, *_ in span} for span in spans]
    assert sum(len(s) for s in shards) == len(set().union(*shards))  # every shard in one span only
    assert [row for span in spans for row, *_ in span] == sorted(row for row, *_ in todo)
    assert rows_per_span({"faces": {"crops": Array(4)}, "audio": {"mel": Array(6)}}, 1) == 12  # whole shards of both


def test_rows_whose_shards_this_process_cannot_see_are_not_committed(tmp_path_factory, tmp_path):
    """With --scheduler, a worker on another machine writes a local --store path on its own disk: the client must
    refuse to mark those rows done, in one line that says what --store needs."""

    from pipeline.commit import CommitTargets, commit_span
    from stores.store import StoreError

    good = assign_splits(load_corpus("sample", sample_corpus(tmp_path_factory)), seed=0)[:1]
    config = ExtractConfig(faces=FACES, mel=MEL)
    store, sets = store_with_sets(tmp_path / "s.zarr", good, config)
    opened = {kind: dict(s.group.arrays()) for kind, s in sets.items()}
    span = Span(str(tmp_path / "elsewhere.zarr"), [(0, good[0], True, True, False)], {k: sharded_arrays(s, opened[k]) for k, s in sets.items()})
    result = shards_task(span, config, "cpu")  # written into another folder, as on another machine
    targets = {kind: CommitTargets.of(s, opened[kind], locate(str(tmp_path / "s.zarr"))) for kind, s in sets.items()}
    with pytest.raises(StoreError, match="shared filesystem"):
        commit_span(store, locate(str(tmp_path / "s.zarr")), targets, result)
    assert not sets["faces"].done().any()
    import shutil

    shutil.copytree(tmp_path / "elsewhere.zarr" / "features", tmp_path / "s.zarr" / "features", dirs_exist_ok=True)  # same bytes, other files
    with pytest.raises(StoreError, match="shared filesystem"):
        commit_span(store, locate(str(tmp_path / "s.zarr")), targets, result)
    here = Span(str(tmp_path / "s.zarr"), span.clips, span.arrays)
    commit_span(store, locate(str(tmp_path / "s.zarr")), targets, shards_task(here, config, "cpu"))
    assert sets["faces"].done().all()
