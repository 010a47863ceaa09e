"""GPU-readiness proven on CPU (issue 9): the device plan with every encoder, DDP numbers under torchrun, the loader.

The CPU runs what a GPU run runs: the same device plan (bf16 autocast and channels-last exist on CPU), the
same loader, the same sharding; torchrun uses gloo. Distributed runs are checked through the per-rank trace
(AVSTORE_TRAIN_TRACE) as numbers: batch sizes, losses, steps, parameter checksums, gathered metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from encoders.device import plan_for, prepare_model
from encoders.loader import Loader, LoaderConfig, epoch_order, rank_share
from encoders.registry import get_spec, list_models
from encoders.loader import memory_budget
from encoders.train import CPU_IN_MEMORY_CAP_GB, TrainConfig, build_model, evaluate, load_data, prepare
from pipeline.fuse import device_fusions, fuse, to_unit_range
from stores.torchdata import read_rows, to_model_inputs
from tests.conftest import REPO, extract_sample_store, run_cli

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """24 clips of 4 actors (12 train, 6 val, 6 test), T=8, 48 px, with the concat and stack fusions."""
    return extract_sample_store(tmp_path_factory, "small.zarr", actors=4, sentences=1, seed=1, frames=8, size=48, detect_every=3,
                                fusions=tuple(device_fusions()))


# ---- 1. the device plan, with every encoder -------------------------------------------------------------
HEAVY = {"vgg16", "videomae", "vit-b16"}  # 80M+ parameters: building and one Adam step take tens of seconds on 2 cores


@pytest.mark.parametrize("encoder", [pytest.param(n, marks=pytest.mark.heavy) if n in HEAVY else n
                                     for n in list_models() if get_spec(n).input_kind != "sequences"])  # ladder: tests/test_ladder.py
def test_the_gpu_device_plan_trains_every_encoder_one_step_on_cpu_in_bf16(store, encoder):
    kind = get_spec(encoder).input_kind
    config = TrainConfig(encoder=encoder, modality="av" if kind.startswith("pair") else "vision", fusion="none")
    data = load_data(store, config)
    torch.manual_seed(0)
    model = build_model(config, data)
    plan = dataclasses.replace(plan_for(model, "cuda"), device="cpu", compile=False)  # what a GPU run would do
    assert plan.amp_dtype == torch.bfloat16
    prepare_model(model, plan)
    convs = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    if any(w.dim() == 5 for w in convs):  # 3-D nets stay contiguous: channels-last is a 4-D layout
        assert plan.memory_format is torch.contiguous_format
    if kind in ("image", "pair-image") and len(convs) >= 3:  # 2-D conv nets run channels-last
        assert plan.memory_format is torch.channels_last and convs[-1].is_contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    raw = data.splits["train"].read(np.arange(2))
    with plan.autocast():
        logits = model(*prepare(data.recipe, raw, plan))
    assert logits.shape == (2, 6) and logits.dtype == torch.bfloat16  # autocast really ran
    loss = torch.nn.functional.cross_entropy(logits.float(), data.splits["train"].labels[:2])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_the_plan_puts_2d_nets_channels_last_and_keeps_3d_nets_and_transformers_contiguous():
    from encoders.registry import get_model

    formats = {name: plan_for(get_model(name, image_size=(64, 64), frames=8), "cuda").memory_format for name in ("resnet18", "simple3d", "i3d", "vit")}
    assert formats == {"resnet18": torch.channels_last, "simple3d": torch.contiguous_format, "i3d": torch.contiguous_format, "vit": torch.contiguous_format}
    cpu = plan_for(get_model("vgg16", image_size=(64, 64)), "cpu")
    assert cpu.amp_dtype is None and cpu.compile is False  # float32 and no compilation by default on CPU
    assert plan_for(get_model("vgg16", image_size=(64, 64)), "cuda").compile is True
    assert plan_for(get_model("simple3d", frames=8), "cuda").compile is False  # 3,262 parameters: would not pay


# ---- 3. the loader ----------------------------------------------------------------------------------------
def test_epoch_order_shuffles_blocks_of_neighbours_and_ranks_get_equal_disjoint_shares():
    block, mix = 8, 3
    whole = epoch_order(96, torch.Generator().manual_seed(1), block_rows=block, mix_blocks=mix)
    for start in range(0, 96, block * mix):  # each window holds whole blocks of neighbouring positions
        assert len(set((whole[start : start + block * mix] // block).tolist())) == mix
    n = 103
    order = epoch_order(n, torch.Generator().manual_seed(1), block_rows=block, mix_blocks=mix)
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    for world in (2, 3, 4):
        shares = [rank_share(order, r, world, equal=True) for r in range(world)]
        assert {len(s) for s in shares} == {n // world}
        assert len(set(np.concatenate(shares).tolist())) == n // world * world
        every = [rank_share(np.arange(n), r, world, equal=False) for r in range(world)]
        assert np.array_equal(np.concatenate(every), np.arange(n))  # evaluation: every clip once


def test_read_rows_reads_the_selected_rows_only(tmp_path):
    array = zarr.create_array(tmp_path / "a.zarr", shape=(10, 4), chunks=(1, 4), dtype="uint8")
    array[:] = np.arange(40, dtype=np.uint8).reshape(10, 4)
    for row in (2, 3, 4, 5):  # rows between the selected ones are unreadable
        (tmp_path / "a.zarr" / "c" / str(row) / "0").write_bytes(b"not zstd")
    rows = np.array([6, 0, 1, 9, 6])
    assert np.array_equal(read_rows(zarr.open_array(tmp_path / "a.zarr", mode="r"), rows, rows_per_call=2), np.arange(40).reshape(10, 4)[rows])


def test_memory_limit_follows_the_available_ram(monkeypatch):
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert abs(memory_budget(None, "cuda")[0] - available / 2) < 0.1 * available
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # every rank on the node holds its own copy
    assert abs(memory_budget(None, "cuda:0")[0] - available / 8) < 0.1 * available
    assert memory_budget(1.5, "cpu")[0] == 1.5e9 == memory_budget(1.5, "cuda")[0]


def test_a_cpu_run_holds_at_most_half_a_gigabyte_by_default_so_it_does_not_grow_with_the_corpus(store):
    """issue 11: a CPU run at CREMA-D size held all 2.2 GB of 2D concat rows and peaked at 4.5 GB."""
    assert memory_budget(None, "cpu")[0] <= CPU_IN_MEMORY_CAP_GB * 1e9 == 0.5e9
    config = TrainConfig(encoder="simple3d", modality="av", fusion="concat", device="cpu")
    data = load_data(store, config)
    assert data.splits["train"].memory is not None and data.split_bytes < 0.5e9  # a small store stays in memory
    capped = load_data(store, dataclasses.replace(config, max_memory_gb=data.split_bytes / 2e9))
    assert capped.splits["train"].memory is None
    assert capped.holding().startswith(f"streamed (splits {data.split_bytes / 1e9:.2f} GB > in-memory limit")
    assert f"limit {data.split_bytes / 2e9:.2f} GB: --max-memory-gb {data.split_bytes / 2e9:g}; --max-memory-gb raises it)" in capped.holding()  # why


def test_train_log_says_where_the_in_memory_limit_comes_from(monkeypatch):
    """The path train takes is explained by the limit's source: the option, half the available RAM, or the CPU cap."""
    from encoders.loader import memory_budget

    assert memory_budget(2.0, "cpu") == (2e9, "--max-memory-gb 2")
    limit, why = memory_budget(None, "cuda")
    assert why.startswith("half the ") and why.endswith(" GB of RAM available") and limit < 1e12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory_budget(None, "cuda")[1].endswith(", shared by 2 ranks")
    limit, why = memory_budget(None, "cpu")
    assert why.startswith("the CPU cap; half the ") if limit == 0.5e9 else why.startswith("half the ")  # under 2 GB free: half of it


def test_streamed_batches_equal_in_memory_ones_and_workers_persist_across_passes(store):
    config = TrainConfig(encoder="simple3d", modality="av", fusion="concat")
    memory = load_data(store, config).splits
    streamed = load_data(store, dataclasses.replace(config, max_memory_gb=0.0)).splits
    assert memory["train"].memory is not None and streamed["train"].memory is None
    ref = Loader(memory, LoaderConfig(workers=0), "cpu")
    # tasks of 6 rows with batches of 4: a task ends inside a batch, or completes two at once (ring of shared buffers)
    loader = Loader(streamed, LoaderConfig(workers=2, task_rows=6), "cpu")
    try:
        pids = None
        for epoch in range(2):
            # batch size 5 is not the ring's: whole batches in fresh shared memory
            for name, generator, size in (("train", torch.Generator().manual_seed(epoch), 4), ("val", None, 4), ("train", None, 5)):
                again = None if generator is None else torch.Generator().manual_seed(epoch)
                steps, before = 0, None
                for (raw, labels, where), (raw0, labels0, where0) in zip(loader.batches(name, size, generator=generator), ref.batches(name, size, generator=again), strict=True):
                    assert np.array_equal(where, where0) and torch.equal(labels, labels0)
                    assert all(r.dtype == torch.uint8 and torch.equal(r, r0) for r, r0 in zip(raw, raw0))  # uint8: float on the device
                    assert torch.equal(raw0[0], memory[name].memory[0][torch.as_tensor(where0)])
                    if before is not None:  # the batch before is still intact: the workers write ahead, not over it
                        assert torch.equal(before[0][0], memory[name].memory[0][torch.as_tensor(before[1])])
                    before = (raw, where)
                    steps += 1
                assert steps == -(-len(memory[name]) // size)
                workers = [w.pid for w in loader.loader._iterator._workers]
                assert pids is None or workers == pids  # the same processes serve every epoch and evaluation
                pids = workers
        assert loader.tasks.dispatched > 0  # the ring served the batches of size 4
    finally:
        loader.close()


@pytest.mark.parametrize("fusion", device_fusions())
def test_a_video_the_store_does_not_hold_is_built_on_the_device_as_the_fusion_defines_it(store, fusion):
    """issue 24: the concat and stack videos are not stored (FusionSpec.built_on_read); a 3D run reads the crops and
    chunks and builds them on the device, bit for bit the arrays pipeline.fuse.fuse makes in numpy."""
    root = zarr.open_group(store, mode="r")
    data = load_data(store, TrainConfig(encoder="simple3d", modality="av", fusion=fusion))
    assert data.recipe.fuse_on_device and [(p.source, p.array) for p in data.recipe.parts] == [("faces", "crops"), ("audio", "chunks")]
    assert not any(g.startswith(f"fusion-{fusion}-") and "video" in root[f"features/{g}"] for g in root["features"].group_keys())
    for name in ("train", "test"):
        split = data.splits[name]
        rows = split.rows
        faces, audio = root[f"features/{split.sets['faces']}"], root[f"features/{split.sets['audio']}"]
        expected = np.stack([fuse(fusion, faces=faces["crops"][r], middle=faces["middle"][r], spec=audio["spec"][r], chunks=audio["chunks"][r],
                                  clip_id=str(root["clips/clip_id"][r]), seed=0)["video"] for r in rows])
        inputs = to_model_inputs(data.recipe, split.read(np.arange(len(rows))))
        assert len(inputs) == 1 and torch.equal(inputs[0], to_unit_range(torch.from_numpy(expected)).permute(0, 4, 1, 2, 3))


@pytest.mark.parametrize("fusion", device_fusions())
def test_a_fused_image_built_on_the_device_equals_the_stored_one(store, fusion):
    encoder = "resnet18"
    stored = load_data(store, TrainConfig(encoder=encoder, modality="av", fusion=fusion))
    built = load_data(store, TrainConfig(encoder=encoder, modality="av", fusion=fusion, fuse_on_device=True))
    assert built.recipe.fuse_on_device and {p.source for p in built.recipe.parts} == {"faces", "audio"}
    stored_bytes = sum(m[0].numel() for m in stored.splits["train"].memory)
    built_bytes = sum(m[0].numel() for m in built.splits["train"].memory)
    assert built_bytes * 3 == stored_bytes * 2  # 4 bytes per pixel read instead of 6
    for name in ("train", "val", "test"):
        positions = np.arange(len(stored.splits[name]))
        a = to_model_inputs(stored.recipe, stored.splits[name].read(positions))
        b = to_model_inputs(built.recipe, built.splits[name].read(positions))
        assert len(a) == len(b) == 1 and torch.equal(a[0], b[0])


def test_loader_workers_option_bad_values_fail_in_one_line(store, tmp_path):
    result = run_cli("train", "--encoder", "simple3d", "--modality", "audio", "--store", store, "--loader-workers", "-1", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--loader-workers -1" in result.stderr and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="--loader-workers 100000 is outside 0.."):
        TrainConfig(loader_workers=100000).resolved()
    assert TrainConfig(loader_workers=0).resolved().loader_workers == 0
    assert TrainConfig().resolved().loader_workers >= 1  # from the CPU count


@pytest.mark.slow
def test_loader_workers_zero_streams_in_process(store, tmp_path):
    from encoders.train import train

    metrics = train(store, TrainConfig(encoder="simple3d", modality="audio", fusion="none", epochs=1, batch_size=4, max_memory_gb=0.0, loader_workers=0), tmp_path / "run", progress=False)
    assert metrics["inputs"]["in_memory"] is False and metrics["test"]["n"] == 6 and np.isfinite(metrics["train"]["loss"])


@pytest.mark.slow
def test_the_log_says_whether_the_splits_are_held_or_streamed_and_why_and_both_train(store, tmp_path):
    """issue 24: the splits are held only within the budget (--max-memory-gb; default half the available RAM,
    on CPU at most 0.5 GB), else streamed by the loader's workers; one line of train.log says which and why."""
    from encoders.train import train

    said = {}
    for budget in (0.0, 100.0):  # tiny: streamed; large: in memory
        out = tmp_path / f"run-{budget:g}"
        metrics = train(store, TrainConfig(encoder="simple3d", modality="av", fusion="concat", epochs=1, batch_size=4, max_memory_gb=budget,
                                           loader_workers=1), out, progress=False)
        assert metrics["inputs"]["in_memory"] is (budget > 0) and metrics["test"]["n"] == 6 and np.isfinite(metrics["train"]["loss"])
        said[budget] = [line.split(" ", 1)[1] for line in (out / "train.log").read_text().splitlines() if " data: " in line]
    assert len(said[0.0]) == 1 and said[0.0][0].startswith("data: streamed (splits ") and "> in-memory limit 0.00 GB: --max-memory-gb 0; --max-memory-gb raises it)" in said[0.0][0]
    assert len(said[100.0]) == 1 and said[100.0][0].startswith("data: in memory (splits ") and "<= in-memory limit 100.00 GB: --max-memory-gb 100;" in said[100.0][0]


# ---- 2. DDP: the numbers ----------------------------------------------------------------------------------
def torchrun(store: str, out: Path, trace: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(REPO / "cli.py"), "train", "--encoder", "simple3d", "--modality", "audio",
         "--store", store, "--epochs", "2", "--batch-size", "4", "--out", str(out), "--no-progress", "--device", "cpu", *extra],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "AVSTORE_TRAIN_TRACE": str(trace)},
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", ["in-memory", "streamed"])
def test_torchrun_ranks_train_on_full_batches_stay_identical_and_evaluate_like_one_process(store, tmp_path, path):
    extra = ("--max-memory-gb", "0", "--loader-workers", "1") if path == "streamed" else ()
    result = torchrun(store, tmp_path / "run", tmp_path / "trace", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / "trace" / f"rank{r}.json").read_text()) for r in (0, 1)]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["inputs"]["in_memory"] is (path == "in-memory") and metrics["world_size"] == 2
    train_clips = metrics["clips"]["train"]  # 12: 6 per rank, batches of 4 and 2
    for rank in ranks:
        assert all(len(s["rows"]) > 0 and np.isfinite(s["loss"]) for s in rank["steps"])
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 2 * 2
    for epoch in (1, 2):
        rows = [[r for s in rank["steps"] if s["epoch"] == epoch for r in s["rows"]] for rank in ranks]
        assert len(rows[0]) == len(rows[1]) == train_clips // 2
        assert len(set(rows[0]) | set(rows[1])) == train_clips  # disjoint shares covering the split
    assert ranks[0]["checksums"] == ranks[1]["checksums"]  # parameters and buffers identical on both ranks
    assert ranks[0]["evaluation"] == ranks[1]["evaluation"]  # every rank gathered the same numbers
    data = load_data(store, TrainConfig(encoder="simple3d", modality="audio", fusion="none"))
    model = build_model(TrainConfig(encoder="simple3d", modality="audio", fusion="none"), data)
    model.load_state_dict(torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"])
    for split in ("train", "val", "test"):
        single, loss = evaluate(model, data, split, "cpu", batch_size=5)  # one process, other batch cuts
        for key in ("n", "accuracy", "uar", "macro_f1", "confusion", "per_class"):
            assert single[key] == metrics[split][key], (split, key)
        assert loss == pytest.approx(metrics[split]["loss"], rel=1e-5)


# ---- 6. bad input under torchrun -------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_with_a_fusion_missing_from_the_store_fails_in_one_line_on_every_rank(store, tmp_path):
    # torchrun ends the other ranks as soon as it sees one fail; it looks every --monitor-interval seconds
    # (0.1 by default), so a rank a second slower to import was killed before it could say why. 5 s lets
    # each rank reach its own check, which is what is tested here.
    result = subprocess.run(
        [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "--monitor-interval", "5", str(REPO / "cli.py"), "train", "--encoder", "resnet18", "--fusion", "sum",
         "--store", store, "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu"],
        capture_output=True, text=True, cwd=REPO, timeout=180,
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode != 0 and len(errors) == 2, result.stderr[-3000:]
    assert all("no 'sum' fusion" in line and "--fusion sum" in line for line in errors)
    assert not (tmp_path / "run").exists()


def test_direct_shard_reads_equal_zarr_reads_for_every_large_array_of_the_store(store):
    from stores.store import FeatureStore
    from stores.torchdata import ShardReader

    root = FeatureStore.open(store).root
    arrays = [root[f"features/{g}/{n}"] for g in root["features"] for n in ("crops", "middle", "spec", "chunks", "image", "video") if n in root[f"features/{g}"]]
    rows = np.array([23, 0, 5, 5, 17, 1, 22, 2])
    sharded = [a for a in arrays if type(a.metadata.codecs[0]).__name__ == "ShardingCodec"]
    readers = [ShardReader.for_array(a) for a in sharded]
    assert len(sharded) >= 5 and all(r is not None for r in readers)  # the fast path is really taken
    assert {(r.compressed, bool(r.filters)) for r in readers} == {(True, False), (True, True), (False, False)}  # zstd, deltas + zstd, crc32c
    for array in arrays:
        assert np.array_equal(read_rows(array, rows), array[:][rows]), array.path
