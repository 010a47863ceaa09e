"""Extraction end to end through the CLI, with a real Dask cluster, real ffmpeg, real MTCNN, real Zarr."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.corpora.sample import write_sample_corpus
from pipeline.hardware import GPU_DRIVER_FILES
from stores.lock import WriterLock
from stores.store import FeatureStore
from tests.conftest import REPO, run_cli

SMALL = ["--size", "48", "--n-mels", "32", "--frames", "10", "--detect-every", "3", "--no-progress"]
EXPECTED = {"decode_error", "no_audio", "no_face", "too_short"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_sample_corpus(out, actors=3, sentences=1, seed=0, with_broken=True)
    return out


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    store = tmp_path_factory.mktemp("stores") / "sample.zarr"
    result = run_cli("extract", "--dataset", "sample", "--root", str(corpus), "--store", str(store), "--workers", "2", "--fusion", "concat", "--fusion", "rfas", *SMALL)
    assert result.returncode == 0, result.stderr
    return store, result


def arrays_of(store: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(store), mode="r")
    out = {}
    for name, group in root["features"].groups():
        for array_name, array in group.arrays():
            out[f"{name}/{array_name}"] = array[:]
    out["clips/clip_id"] = root["clips/clip_id"][:]
    return out


@pytest.mark.slow
def test_every_good_clip_ok_and_each_broken_clip_recorded_with_its_reason(extracted, corpus):
    store, result = extracted
    expected = {b["id"]: b["expect"] for b in json.loads((corpus / "SAMPLE.json").read_text())["broken"]}
    assert set(expected.values()) == EXPECTED
    s = FeatureStore.open(store)
    ids = s.clip_table()["clip_id"]
    faces, audio = s.feature_sets("faces")[0], s.feature_sets("audio")[0]
    assert faces.done().all() and audio.done().all()
    for row, clip_id in enumerate(ids):
        statuses = {faces.status()[row], audio.status()[row]}
        if clip_id in expected:
            assert expected[clip_id] in statuses, (clip_id, statuses)
            assert clip_id in result.stdout  # the summary names it
        else:
            assert statuses == {"ok"}, (clip_id, statuses, faces["reason"][row], audio["reason"][row])
    assert re.search(r"clips/s \(first clip after \d+\.\d s: start-up\)", result.stdout)  # what a user waits through
    ok = faces.ok()
    assert faces["found"][:][ok].all() and (faces["crops"][:][ok].reshape(ok.sum(), -1).std(axis=1) > 5).all()


@pytest.mark.slow
def test_stored_arrays_are_aligned_and_fusions_cached(extracted):
    store, _ = extracted
    s = FeatureStore.open(store)
    faces, audio = s.feature_sets("faces")[0], s.feature_sets("audio")[0]
    ok = np.flatnonzero(faces.ok() & audio.ok())
    spans, stamps = audio["spans"][:][ok], faces["timestamps"][:][ok]
    assert (stamps >= spans[..., 0] - 1e-3).all() and (stamps < spans[..., 1]).all()  # frame i lies in span i
    concat = s.feature_sets("fusion-concat")[0]
    row = ok[0]
    image = concat["image"][row]
    assert image.shape == (48, 96, 3)
    assert np.array_equal(image[:, :48], faces["middle"][row])
    assert np.array_equal(image[:, 48:, 0], audio["spec"][row])
    assert "video" not in concat.group  # built on read from the crops and chunks (pipeline/fuse.py built_on_read)
    assert "faces/crops and audio/chunks" in concat.group.attrs["built_on_read"]["video"]  # and the set says so to a plain-zarr reader
    rfas = s.feature_sets("fusion-rfas")[0]
    assert sorted(rfas["order"][row].tolist()) == list(range(10))
    assert rfas.ok().sum() == len(ok)


@pytest.mark.slow
def test_second_run_reprocesses_nothing(extracted, corpus):
    store, _ = extracted
    before = arrays_of(store)
    listed = (store / "avstore-checksums.json").stat().st_mtime_ns
    result = run_cli("extract", "--dataset", "sample", "--root", str(corpus), "--store", str(store), "--workers", "2", "--fusion", "concat", "--fusion", "rfas", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "0 processed" in result.stdout and "0 fused entries computed" in result.stdout
    assert (store / "avstore-checksums.json").stat().st_mtime_ns == listed  # nothing written, nothing re-hashed
    assert run_cli("verify", "--store", str(store)).returncode == 0
    after = arrays_of(store)
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


NO_GPU_DRIVER = not any(Path(p).exists() for p in GPU_DRIVER_FILES)


@pytest.mark.slow
@pytest.mark.skipif(not NO_GPU_DRIVER, reason="with a GPU driver, --device auto asks torch")
def test_a_no_op_re_run_imports_neither_torch_nor_the_detector(extracted, corpus):
    """A shared store is re-extracted often with nothing new; torch + torchvision + facenet cost seconds of
    import (issue 11: a no-op re-run of CREMA-D under 10 s), so the path that computes nothing must not load them,
    nor start the workers' import server (pipeline/workers.py: ~6 CPU-s, and a caller capturing the output waited)."""
    store, _ = extracted
    probe = (
        "import atexit, runpy, sys; sys.path.insert(0, '.'); "
        "import psutil; atexit.register(lambda: print('LOADED', sorted(m for m in ('torch', 'torchvision', 'facenet_pytorch') if m in sys.modules), "
        "'CHILDREN', len(psutil.Process().children(recursive=True)))); "
        f"sys.argv = ['cli.py', *{['extract', '--dataset', 'sample', '--root', str(corpus), '--store', str(store), '--workers', '2', '--fusion', 'concat', '--fusion', 'rfas', *SMALL]!r}]; "
        "runpy.run_path('cli.py', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "0 processed" in result.stdout
    assert "LOADED [] CHILDREN 0" in result.stdout, result.stdout[-500:]  # nor starts the workers' import server


def test_a_clip_on_a_worker_imports_neither_librosa_nor_scipy(corpus):
    """A cold `extract` waits for its workers' imports: librosa's STFT and mel filterbank pulled in scipy.signal
    and numba, 6 s of a 12 s start-up; pipeline/audio.py computes both in numpy (bit-identical, tests/test_audio.py)."""
    probe = (
        "import sys; sys.path.insert(0, '.'); "
        "from pipeline.corpora import load_corpus; from pipeline.run import ExtractConfig, process_clip; "
        f"broken = {sorted(b['id'] for b in json.loads((corpus / 'SAMPLE.json').read_text())['broken'])!r}; "
        f"record = next(r for r in load_corpus('sample', {str(corpus)!r}) if r.clip_id not in broken); "
        "faces, audio, _, fused = process_clip(record, ExtractConfig(fusions=('concat',)), True, True, 'cpu', False); "
        "assert faces.status == 'ok' and audio.status == 'ok' and fused, (faces.status, audio.status); "
        "print('LOADED', sorted(m for m in ('librosa', 'scipy', 'numba') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout[-500:]


def test_local_workers_start_with_their_imports_done_and_one_thread():
    """pipeline/workers.py: a worker is a fork of a server that imported torch and MTCNN once, and never
    torchvision (a spawned worker has imported neither before its first clip: ~3.5 CPU-s each, all at once on a
    laptop, and ~6.5 while facenet-pytorch, which imports torchvision, ran the detection),
    with the thread variables at 1 as Dask's nanny sets them for a spawned one (set before numpy loaded OpenBLAS:
    loaded with 2 threads, its idle thread spun ~110 CPU-ms a clip after a warm-up by client.run), and without Dask's statistical
    profiler (a stack walk every 10 ms, for a dashboard a local run does not have: ~3 % of a clip)."""
    from dask.distributed import Client

    from pipeline.workers import local_cluster

    def facts() -> dict:
        import os
        import sys

        modules = ("av", "cv2", "facenet_pytorch", "pipeline.mtcnn", "torch", "torchvision")
        preloaded = sorted(m for m in modules if m in sys.modules)  # before importing any here
        import torch

        import dask

        from threadpoolctl import threadpool_info

        blas = {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}  # numpy's OpenBLAS
        return {"preloaded": preloaded, "omp": os.environ.get("OMP_NUM_THREADS"), "torch threads": torch.get_num_threads(),
                "blas threads": blas, "profiler": dask.config.get("distributed.worker.profile.enabled")}

    with local_cluster(1) as cluster, Client(cluster) as client:
        (worker,) = client.run(facts).values()
    assert worker == {"preloaded": ["av", "cv2", "pipeline.mtcnn", "torch"], "omp": "1", "torch threads": 1, "blas threads": {1},
                      "profiler": False}


def test_a_fresh_store_starts_the_import_server_while_planning_and_a_no_op_never_does(tmp_path_factory, tmp_path, monkeypatch):
    """pipeline/workers.start_import_server: on a fresh store every clip is to compute, so the workers' imports
    start beside the planning (~0.8 s of start-up) instead of with the cluster; a re-run with nothing to do
    starts neither (the functions are wrapped to record their calls, and still do their work)."""
    import pipeline.run as run
    from pipeline.corpora import load_corpus
    from pipeline.faces import FaceConfig
    from pipeline.audio import MelConfig
    from pipeline.splits import assign_splits
    from tests.remote_helpers import sample_corpus

    calls: list[str] = []
    start, cluster = run.start_import_server, run.local_cluster
    monkeypatch.setattr(run, "start_import_server", lambda: (calls.append("import server"), start())[1])
    monkeypatch.setattr(run, "local_cluster", lambda n: (calls.append("cluster"), cluster(n))[1])
    records = assign_splits(load_corpus("sample", sample_corpus(tmp_path_factory)), seed=0)[:2]
    config = run.ExtractConfig(faces=FaceConfig(frames=4, size=32), mel=MelConfig(n_mels=32))
    for expected in (["import server", "cluster"], []):
        calls.clear()
        summary = run.run_extract(records, tmp_path / "s.zarr", config, dataset="sample", class_names=["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], workers=1, progress=False)
        assert calls == expected and summary.computed == (2 if expected else 0)


def test_a_worker_keeps_the_memory_a_clip_frees_despite_the_trim_setting_dask_gives_it():
    """run.keep_freed_memory: with Dask's MALLOC_TRIM_THRESHOLD_=65536, glibc mapped every large array afresh, so
    each clip faulted its frames and arrays in again (~30,000 page faults, a fifth of a clip's CPU)."""
    probe = ("import resource, numpy as np; from pipeline.run import keep_freed_memory; assert keep_freed_memory(); "
             "a = np.ones(16 << 20, np.uint8); before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "for _ in range(20): a = np.ones(16 << 20, np.uint8)\n"
             "print('FAULTS', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)")
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    faults = int(result.stdout.split("FAULTS")[1])
    assert faults < 2000, faults  # 20 arrays of 4,096 pages each: ~80,000 when every one is mapped afresh


def test_the_worker_import_server_holds_one_thread_so_forking_it_is_safe():
    """A fork copies only the forking thread: a server with a thread pool or an event loop running would hand its
    workers locks held by threads that do not exist in them."""
    probe = "import os, pipeline.worker_imports; print('THREADS', len(os.listdir('/proc/self/task')))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "THREADS 1" in result.stdout, result.stdout


@pytest.mark.slow
def test_info_and_verify_catch_a_flipped_byte(extracted, tmp_path):
    store, _ = extracted
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    info = json.loads(run_cli("info", "--store", str(copy), "--json").stdout)
    assert info["dataset"] == "sample" and info["clips"] == 22
    kinds = sorted(fs["kind"] for fs in info["feature_sets"])
    assert kinds == ["audio", "faces", "fusion-concat", "fusion-rfas"]
    faces = next(fs for fs in info["feature_sets"] if fs["kind"] == "faces")
    assert faces["params"]["frames"] == 10 and faces["arrays"]["crops"]["shape"] == [22, 10, 48, 48, 3]
    assert faces["status"]["ok"] == 19 and info["bytes"] > 0 and faces["versions"]["zarr"]
    assert run_cli("verify", "--store", str(copy)).returncode == 0
    shard = sorted((copy / "features" / faces["name"] / "crops").rglob("c/*"))[0]
    shard = next(p for p in (copy / "features" / faces["name"] / "crops").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = run_cli("verify", "--store", str(copy))
    assert result.returncode == 1
    assert f"changed: features/{faces['name']}/crops/c/0" in result.stdout and "clip rows 0-31" in result.stdout


@pytest.mark.slow
def test_changed_audio_parameter_reuses_faces_and_new_clips_only_are_processed(corpus, tmp_path):
    partial = tmp_path / "corpus"
    shutil.copytree(corpus, partial)
    moved = sorted((partial / "VideoFlash").glob("1003_*_[AD]*.flv"))  # two clips of a speaker that stays
    for video in moved:
        video.rename(tmp_path / video.name)
    store = tmp_path / "s.zarr"
    args = ["extract", "--dataset", "sample", "--root", str(partial), "--store", str(store), "--workers", "0", *SMALL]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert f"{22 - len(moved)} processed" in first.stdout
    for video in moved:
        (tmp_path / video.name).rename(video)
    second = run_cli(*args)
    assert f"{len(moved)} processed (faces {len(moved)}, audio {len(moved)})" in second.stdout
    third = run_cli(*[a if a != "32" else "24" for a in args])  # n_mels 32 -> 24: a new audio feature set
    assert "22 processed (faces 0, audio 22)" in third.stdout, third.stdout
    s = FeatureStore.open(store)
    assert len(s.feature_sets("faces")) == 1 and len(s.feature_sets("audio")) == 2
    assert len(s.feature_sets("fusion-concat")) == 2


def large_shard_files(store: Path) -> dict[str, bytes]:
    """The bytes of every shard file of a sharded (large) array, by store-relative path."""
    root = zarr.open_group(str(store), mode="r")
    return {path.relative_to(store).as_posix(): path.read_bytes()
            for name, group in root["features"].groups() for array_name, array in group.arrays() if array.shards is not None
            for path in sorted((store / "features" / name / array_name / "c").rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_kill_9_then_resume_gives_identical_arrays(corpus, tmp_path):
    """Shards of 4 rows (AVSTORE_SHARD_ROWS), so each task holds 4 clips and the kill lands between commits. What
    the killed run left is whole (every shard file it wrote, every committed row), the resumed run hashes none of
    the shards the killed one committed (their sums were recorded when they were committed), and its shard files
    are byte for byte those of a run never killed."""
    from stores.shards import read_shard

    env = {**os.environ, "AVSTORE_SHARD_ROWS": "4"}
    reference = tmp_path / "reference.zarr"
    args = ["--dataset", "sample", "--root", str(corpus), "--workers", "0", *SMALL]
    extract = [sys.executable, str(REPO / "cli.py"), "extract"]
    assert subprocess.run([*extract, "--store", str(reference), *args], cwd=REPO, env=env, capture_output=True).returncode == 0
    store = tmp_path / "killed.zarr"
    proc = subprocess.Popen([*extract, "--store", str(store), *args, "--commit-every", "3"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            faces = [g for k, g in zarr.open_group(str(store), mode="r")["features"].groups() if k.startswith("faces-")]
            done = int(faces[0]["done"][:].sum()) if faces else 0
        except Exception:  # noqa: BLE001 - the store may not exist yet
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 1 <= done < 22, f"the kill did not land mid-run (done={done})"
    killed_state = FeatureStore.open(store).feature_sets("faces")[0].done()
    assert not killed_state.all()
    for rel, data in large_shard_files(store).items():
        if not rel.endswith(".partial"):
            assert read_shard(data, 4, rel), rel  # whole: its index and crc32c are right
    arrays_of(store)  # every row, committed or not, reads
    assert list((store / ".avstore-sums").iterdir()), "the killed run recorded no sums for what it committed"
    resumed = subprocess.run([*extract, "--store", str(store), *args], cwd=REPO, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    hashed = int(re.search(r"checksums: (\d+) files hashed", resumed.stdout).group(1))
    files = [p for p in store.rglob("*") if p.is_file()]
    assert hashed <= len(files) - len(large_shard_files(store)), "the resumed run hashed shards the killed one had committed"
    a, b = arrays_of(reference), arrays_of(store)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert large_shard_files(store) == large_shard_files(reference)
    assert run_cli("verify", "--store", str(store)).returncode == 0


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(corpus, tmp_path):
    store = tmp_path / "locked.zarr"
    store.mkdir()
    with WriterLock(store):
        result = run_cli("extract", "--dataset", "sample", "--root", str(corpus), "--store", str(store), *SMALL)
    assert result.returncode == 2
    assert f"is being written by pid {os.getpid()}" in result.stderr and result.stderr.strip().count("\n") == 0
    assert sorted(p.name for p in store.iterdir()) == []


def test_unknown_dataset_and_fusion_are_refused_without_writing(tmp_path, corpus):
    result = run_cli("extract", "--dataset", "nope", "--store", str(tmp_path / "s.zarr"))
    assert result.returncode == 2 and "unknown dataset 'nope'" in result.stderr
    result = run_cli("extract", "--dataset", "sample", "--root", str(corpus), "--store", str(tmp_path / "s.zarr"), "--fusion", "zip")
    assert result.returncode == 2 and "unknown fusion 'zip'" in result.stderr and "concat" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_real_grid_clips_have_a_face_in_every_frame_and_centred_crops(grid_dir, tmp_path):
    from facenet_pytorch import MTCNN

    manifest = tmp_path / "grid.csv"
    videos = sorted(grid_dir.glob("*.mpg"))
    manifest.write_text("video,label,speaker\n" + "".join(f"{v},NEU,s{i % 3}\n" for i, v in enumerate(videos)))
    store = tmp_path / "grid.zarr"
    result = run_cli("extract", "--dataset", "manifest", "--root", str(manifest), "--store", str(store), "--workers", "2",
                     "--size", "160", "--n-mels", "64", "--no-progress")
    assert result.returncode == 0, result.stderr
    faces = FeatureStore.open(store).feature_sets("faces")[0]
    assert faces.ok().all() and faces["found"][:].all() and (faces["prob"][:] > 0.95).all()
    detector = MTCNN(keep_all=False, device="cpu")
    crops = faces["crops"][:]
    for clip in range(len(videos)):
        for step in (0, 8, 15):
            box, prob = detector.detect(crops[clip, step])
            assert box is not None and prob[0] > 0.9
            cx, cy = (box[0][0] + box[0][2]) / 2, (box[0][1] + box[0][3]) / 2
            assert abs(cx - 80) < 16 and abs(cy - 80) < 16, (clip, step, cx, cy)


@pytest.mark.slow
def test_a_one_minute_take_is_recorded_as_too_long(grid_dir, tmp_path):
    from pipeline.media import ffmpeg_exe

    long_video = tmp_path / "take.mp4"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-stream_loop", "4", "-i", str(grid_dir / "bbaf2n.mpg"), "-t", "12", str(long_video)], check=True)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,label,speaker\n{long_video},NEU,a\n{grid_dir / 'lwbsza.mpg'},HAP,b\n{grid_dir / 'lrwp9a.mpg'},SAD,c\n")
    result = run_cli("extract", "--dataset", "manifest", "--root", str(manifest), "--store", str(tmp_path / "s.zarr"), "--workers", "0", *SMALL)
    assert result.returncode == 0, result.stderr
    assert "faces:too_long 1" in result.stdout and "faces:ok 2" in result.stdout


def test_a_plain_file_or_a_foreign_folder_as_store_is_refused_in_one_line_and_left_untouched(corpus, tmp_path):
    """Issue 25: a file gave a 49-line traceback; a folder of other files got the store written in among them."""
    plain = tmp_path / "notes.txt"
    plain.write_text("mine")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"jpeg")
    (foreign / "half.partial").write_bytes(b"not ours")  # extract deletes *.partial files in a store it resumes
    other_zarr = tmp_path / "other.zarr"
    zarr.open_group(str(other_zarr), mode="w").attrs["owner"] = "someone else"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for target, says in ((plain, "is a file"), (foreign, "holds other files"), (other_zarr, "not avstore's")):
        result = run_cli("extract", "--dataset", "sample", "--root", str(corpus), "--store", str(target), "--workers", "0", *SMALL)
        assert result.returncode == 2, result.stderr[-2000:]
        assert says in result.stderr and "--store" in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written, nothing deleted


@pytest.mark.slow
def test_ctrl_c_during_extract_is_one_line_exit_130_and_train_refuses_the_store_until_a_re_run_finishes_it(corpus, tmp_path):
    """Issue 25: Ctrl-C printed 55-66 lines of worker tracebacks and never said how to go on; `train` then used
    the clips committed so far as if they were the corpus. The signal goes to the whole process group, as a
    terminal's Ctrl-C does, so the Dask workers get it too."""
    store = tmp_path / "s.zarr"
    args = ["extract", "--dataset", "sample", "--root", str(corpus), "--store", str(store), "--workers", "1", *SMALL]
    # Tasks of 4 clips, one at a time: after the first commit five tasks are left, so the interrupt lands mid-run
    # even on a loaded machine (with 2 workers the run could finish before a slow poll saw the first commit).
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), *args, "--commit-every", "2"], cwd=REPO, text=True,
                            env={**os.environ, "AVSTORE_SHARD_ROWS": "4"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a terminal's default, whatever this process inherited
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline, done = time.time() + 180, 0
    while time.time() < deadline and proc.poll() is None and done < 1:
        try:
            faces = [g for k, g in zarr.open_group(str(store), mode="r")["features"].groups() if k.startswith("faces-")]
            done = int(faces[0]["done"][:].sum()) if faces else 0
        except Exception:  # noqa: BLE001 - the store may not exist yet
            done = 0
        time.sleep(0.05)
    assert 1 <= done < 22, f"the run ended before its first commit was seen ({done} clips done)"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    lines = [line for line in err.strip().splitlines() if not port_busy_warning(line)]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    committed = int(re.search(r"interrupted: (\d+) of 22 clips committed", lines[0]).group(1))
    assert 1 <= committed < 22 and "re-run the same command to resume" in lines[0], lines
    refused = run_cli("train", "--encoder", "resnet18", "--store", str(store), "--out", str(tmp_path / "run"))
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0, refused.stderr[-2000:]
    assert "interrupted" in refused.stderr and "re-run" in refused.stderr and "--allow-partial" in refused.stderr
    assert not (tmp_path / "run").exists()
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{22 - committed} processed" in resumed.stdout, resumed.stdout
    from stores.state import store_state

    assert store_state(store).finished


def port_busy_warning(line: str) -> bool:
    """Dask's warning when another cluster on this machine holds port 8787 (shared test machines): three lines, and the
    source line `warnings.warn(` that Python shows under it."""
    return ("UserWarning: Port 8787 is already in use" in line or line.strip() in ("Perhaps you already have a cluster running?", "warnings.warn(")
            or line.strip().startswith("Hosting the HTTP server on port"))
