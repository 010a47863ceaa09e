"""Train one encoder from the store, in nanoGPT's order: set-up, data, model, optimiser, one loop, evaluate.

What makes the numbers trustworthy (each a defect of the seed code, SPEC): splits are actor-disjoint and come
from the store; the epoch kept is the one with the best *validation* UAR, and the test split is evaluated
once, with that checkpoint; models return logits and the loss applies the softmax; seeds are set and
recorded; every metric (WAR, UAR, F1, per class, confusion) is written, not just accuracy.

Devices (encoders/device.py): one plan per model sets its memory format (channels-last for 2-D conv nets
only), bf16 autocast (default on CUDA) and compilation; the CPU tests run the same plan. Data
(encoders/loader.py): uint8 batches, in memory or streamed by persistent workers, converted to float on the
device. Under torchrun every rank takes an equal share of each epoch, evaluation is split over the ranks
and gathered, and rank 0 alone logs and writes. `AVSTORE_TRAIN_TRACE=<folder>` makes every rank write its
steps and parameter checksums there (rank<N>.json), so tests can check those numbers.

One loop for every encoder, seed 002's ladder included: a model with its own objective (`own_objective`: the
ladder's supervised plus reconstruction losses) computes it when called with the labels, and one that
standardises its inputs gets the training split's statistics first (`fit_input_stats`). `--labelled-fraction`
hides the labels of a seeded share of the training clips (-1): the ladder still reconstructs them, the
cross-entropy of other encoders leaves them out. An encoder's own settings are `encoder_options`, checked and
built by the registry (encoders/registry.py), never TrainConfig fields.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from encoders import partition as run_partition
from encoders import predictions as run_predictions
from encoders.device import AMP_CHOICES, COMPILE_CHOICES, DevicePlan, compiled, plan_for, prepare, prepare_model
from encoders.grad_in_place import add_linear_grads_in_place
from encoders.loader import CPU_IN_MEMORY_CAP_GB, Loader, LoaderConfig, check_workers, default_workers  # noqa: F401 (re-exported)
from encoders.metrics import classification_metrics
from encoders.registry import encoder_config, get_model, get_spec, list_models
from encoders.rows import MissingFusionError, RowOptions, hold_splits, select_rows  # noqa: F401 (MissingFusionError re-exported)
from encoders.targets import ClipTargets, batch_target, check_target, score_run, soft_targets
from pipeline.hardware import resolve_device
from stores.provenance import code_commit, library_versions
from stores.splits import PARTITIONS
from stores.state import StoreState, check_finished, describe_partial, partial_record
from stores.store import FeatureStore
from stores.torchdata import InputRecipe, StoreSplit, read_rows, to_model_inputs

ENCODER_TYPE = {"image": "2D", "video": "3D", "pair-image": "fusion", "pair-video": "fusion", "sequences": "fusion"}



@dataclass(frozen=True)
class TrainConfig:
    encoder: str = "resnet18"
    modality: str = "av"  # audio | vision | av
    fusion: str = "concat"  # none for unimodal and pair models
    epochs: int = 20
    max_steps: int | None = None  # stop after this many optimiser steps (all epochs together); still evaluated and written
    batch_size: int = 16
    micro_batch: int | None = None  # samples per forward/backward pass; None: the encoder's CPU micro-batch on a CPU, else the batch
    lr: float | None = None  # None: the encoder's default (its EncoderSpec.lr; Adam throughout)
    weight_decay: float | None = None  # None: the encoder's default, else 0
    seed: int = 0
    split_seed: int | None = None  # None: the split stored with the clips
    fold: int | None = None  # k-fold by actor: this fold is test, 15/85 of the other speakers validation, the rest train
    folds: int = 5
    device: str = "auto"
    pretrained: bool = False
    max_memory_gb: float | None = None  # splits larger than this are streamed; None: half the available RAM per rank (CPU: <= 0.5 GB)
    loader_workers: int | None = None  # streaming worker processes; None: from the CPU count (default_workers)
    amp: str = "auto"  # auto (bf16 on CUDA, float32 on CPU) | bf16 | off
    compile: str = "auto"  # auto (CUDA, models of 5M parameters or more) | on | off
    fuse_on_device: bool = False  # build concat/stack from the stored faces and audio (fewer bytes read)
    faces: str | None = None  # feature-set fingerprints, when a store holds several
    audio: str | None = None
    include_broken: bool = False  # train on clips the corpus documents as broken (clips/broken) too
    target: str = "intended"  # intended | perceived-voice | perceived-face | perceived-av (encoders/targets.py)
    labels: str = "hard"  # hard (the majority) | soft (cross-entropy to the vote distribution)
    labelled_fraction: float = 1.0  # training clips that keep their label (seeded, per class); the rest pass unlabelled
    lld: str | None = None  # LLD / embedding feature-set fingerprints for "sequences" encoders, when a store holds several
    embed: str | None = None
    encoder_options: dict = dataclasses.field(default_factory=dict)  # the encoder's own settings (registry: its options class)

    def row_options(self) -> RowOptions:
        """What this run reads (encoders/rows.py): its encoder's input recipe, feature sets, split and target."""
        spec = get_spec(self.encoder)
        return RowOptions(input_kind=spec.input_kind, modality=self.modality, fusion=self.fusion, square_only=spec.square_input,
                          fuse_on_device=self.fuse_on_device, faces=self.faces, audio=self.audio, lld=self.lld, embed=self.embed,
                          split_seed=self.split_seed, fold=self.fold, folds=self.folds, include_broken=self.include_broken,
                          target=self.target)

    def resolved(self) -> "TrainConfig":
        """Defaults filled in; ValueError (one line, naming the fix) for options no run could use."""
        if self.amp not in AMP_CHOICES:
            raise ValueError(f"--amp takes {' | '.join(AMP_CHOICES)}, not '{self.amp}'")
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"--compile takes {' | '.join(COMPILE_CHOICES)}, not '{self.compile}'")
        check_target(self.target, self.labels, get_spec(self.encoder).input_kind if self.encoder in list_models() else "")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps {self.max_steps} is below 1; give the number of optimiser steps to take, or leave it out for whole epochs")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"--micro-batch {self.micro_batch} is below 1; give the samples of one forward/backward pass, or leave it out")
        if self.max_memory_gb is not None and self.max_memory_gb < 0:
            raise ValueError(f"--max-memory-gb {self.max_memory_gb} is negative; give 0 to stream everything")
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(f"--labelled-fraction {self.labelled_fraction:g} is outside (0, 1]; give e.g. 0.5 for half the training clips labelled")
        encoder_config(self.encoder, self.encoder_options)  # an option the encoder lacks, or a value it refuses
        spec = get_spec(self.encoder)  # its training defaults
        return dataclasses.replace(
            self,
            lr=self.lr if self.lr is not None else spec.lr,
            weight_decay=self.weight_decay if self.weight_decay is not None else spec.weight_decay,
            device=resolve_device(self.device),
            loader_workers=check_workers(self.loader_workers) if self.loader_workers is not None else default_workers(),
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- data -------------------------------------------------------------------------------------------------
@dataclass
class Data:
    recipe: InputRecipe
    splits: dict[str, StoreSplit]
    class_names: list[str]
    image_size: tuple[int, int]
    frames: int
    fingerprints: dict[str, str]
    speakers: dict[str, int]
    excluded_broken: int = 0  # ok clips left out because the corpus flags them broken
    partition: dict = dataclasses.field(default_factory=dict)  # the exact speakers and clips of each split
    notes: list[str] = dataclasses.field(default_factory=list)  # what changed in the store since a recorded partition
    split_bytes: int = 0  # the three splits' rows, decoded
    memory_limit: float = 0.0  # bytes the run would hold in memory (memory_budget)
    memory_budget: str = ""  # where that limit comes from
    soft: dict = dataclasses.field(default_factory=dict)  # --labels soft: split -> (clips, K) vote distributions
    in_channels: int = 3  # of the (vision) input: image channels, or a sequence encoder's embedding width
    labelled: np.ndarray | None = None  # per training position, whether its label is used (None: all are)
    warnings: list[str] = dataclasses.field(default_factory=list)  # what the run's inputs are not (metrics.json)
    embeddings_random_init: bool = False  # face embeddings of a randomly initialised backbone (cli.py embed without --weights)
    targets: ClipTargets | None = None  # every target of every clip row, read once per run (training, soft labels, scoring)

    def holding(self) -> str:
        """Where the rows come from, and why: one line of the log."""
        size, limit = f"splits {self.split_bytes / 1e9:.2f} GB", f"in-memory limit {self.memory_limit / 1e9:.2f} GB: {self.memory_budget}"
        if self.splits["train"].memory is not None:
            return f"in memory ({size} <= {limit}; --max-memory-gb lowers it)"
        return f"streamed ({size} > {limit}; --max-memory-gb raises it)"


def load_data(location: str, config: TrainConfig, recorded: dict | None = None, *, allow_partial: bool = False, checked: bool = False) -> Data:
    """The run's data; `recorded` (a run's partition.json) selects exactly the clips that run used.

    A store being written or never finished is refused (PartialStoreError) unless `allow_partial`: its
    committed clips look like a small finished store, and a run would silently train on a fraction of them.
    `checked`: the caller (train) has just checked that already, so the store's listing is not read twice.
    Which rows, splits and labels: encoders/rows.py, the one selection the Python API (avstore.py) uses too."""
    store = FeatureStore.open(location)
    if not checked:
        check_finished(location, allow_partial=allow_partial)
    selection = select_rows(store, config.row_options(), recorded)
    recipe, rows, labels, table = selection.recipe, selection.rows, selection.labels, selection.table
    splits, holding = hold_splits(selection, PARTITIONS, config.max_memory_gb, resolve_device(config.device))
    first = to_model_inputs(recipe, [torch.from_numpy(read_rows(a, rows["train"][:1])) for a in selection.arrays()])
    labelled, partition = None, {**run_partition.record(table, rows), "target": {"target": config.target, "labels": config.labels}}
    if config.labelled_fraction < 1:
        labelled = labelled_mask(labels[rows["train"]], config.labelled_fraction, config.seed)
        partition["train"]["unlabelled"] = [str(c) for c in table["clip_id"][rows["train"][~labelled]]]
    sequences = recipe.input_kind == "sequences"
    return Data(
        recipe=recipe,
        splits=splits,
        class_names=store.class_names,
        image_size=tuple(first[0].shape[-2:]),
        frames=int(selection.faces.params["frames"]),
        fingerprints=selection.fingerprints(),
        speakers={name: len(set(table["speaker"][r].tolist())) for name, r in rows.items()},
        excluded_broken=selection.excluded_broken,
        partition=partition,
        notes=list(selection.notes),
        split_bytes=holding.split_bytes,
        memory_limit=holding.memory_limit,
        memory_budget=holding.budget,
        soft=soft_targets(store, table, rows, config.target, selection.targets) if config.labels == "soft" else {},
        in_channels=first[2].shape[-1] if sequences else recipe.channels,
        labelled=labelled,
        warnings=["face embeddings from a randomly initialised backbone (no --weights): not face descriptors"] if selection.random_init else [],
        embeddings_random_init=selection.random_init,
        targets=selection.targets,
    )


def labelled_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which training clips keep their label: per class, the first ceil(fraction x n) of a seeded permutation."""
    keep = np.zeros(len(labels), bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[rng.permutation(idx)[: math.ceil(fraction * len(idx))]] = True
    return keep


# ---- model ------------------------------------------------------------------------------------------------
def build_model(config: TrainConfig, data: Data) -> torch.nn.Module:
    return get_model(
        config.encoder, num_classes=len(data.class_names), in_channels=data.in_channels,
        image_size=data.image_size, frames=data.frames, pretrained=config.pretrained, options=config.encoder_options,
    )


def step_loss(model, own_objective: bool, inputs: list[torch.Tensor], labels: torch.Tensor, loss_fn,
              soft: torch.Tensor | None = None, labelled_in_batch: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """One step's loss and its named terms. A model with its own objective (`own_objective`: the ladder's
    supervised plus reconstruction losses) computes both when called with the labels; any other model's loss is
    the cross-entropy of its logits over the labelled clips (label >= 0; unlabelled ones are -1), against the
    hard labels or, with `soft` (--labels soft), against the clips' vote distributions, summed and divided by the
    labelled clips of the whole batch (`labelled_in_batch`, when `inputs` are one pass of several)."""
    if own_objective:
        out = model(*inputs, labels=labels)
        return out["loss"], out["terms"]
    logits, labelled = model(*inputs).float(), labels >= 0
    count = (labelled.sum() if labelled_in_batch is None else labelled_in_batch).clamp_min(1)
    if soft is not None:
        return loss_fn(logits[labelled], soft[labelled]) / count, {}
    return loss_fn(logits, labels) / count, {}


def backward_passes(model, sync_model, own_objective: bool, recipe: InputRecipe, plan: DevicePlan, raw: list[torch.Tensor],
                    labels: torch.Tensor, positions: np.ndarray, loss_fn, soft_table: dict, per_pass: int) -> tuple[torch.Tensor, dict]:
    """The batch's gradients, from forward/backward passes of `per_pass` samples summed: the batch's loss and terms.

    Each pass divides its summed loss by the labelled clips of the whole batch, so the summed gradients are the
    batch's own (a model with its own objective, the ladder, gets one pass: samples_per_pass). Under DDP the
    gradients are all-reduced once, after the last pass (`sync_model.no_sync`)."""
    labelled, total, terms = (labels >= 0).sum(), torch.zeros((), device=labels.device), {}
    starts = range(0, len(labels), per_pass)
    for n, start in enumerate(starts):
        part = slice(start, start + per_pass)
        quiet = n < len(starts) - 1 and hasattr(sync_model, "no_sync")
        with sync_model.no_sync() if quiet else contextlib.nullcontext():
            with plan.autocast():
                soft = batch_target(soft_table, labels[part], positions[part]) if soft_table else None
                loss, pass_terms = step_loss(model, own_objective, prepare(recipe, [r[part] for r in raw], plan), labels[part], loss_fn, soft, labelled)
            loss.backward()
        total += loss.detach()
        for name, value in pass_terms.items():
            terms[name] = terms.get(name, 0.0) + value.detach()
    return total, terms


def samples_per_pass(config: TrainConfig, image_size: tuple[int, int], frames: int, device: str, model: torch.nn.Module) -> tuple[int, str]:
    """How many samples one forward/backward pass takes, and why (a line of the log).

    On a CPU a whole batch's activations are what breaks a 3 GB process: vit's batch of 16 side-by-side images
    alone holds ~4 GB. Each encoder's `cpu_micro_batch` (its EncoderSpec, measured by bench/scale.py at the store
    defaults, 224 px and 16 frames) says how many samples a pass takes there; a store of smaller images or fewer
    frames takes proportionally more. A GPU takes the whole batch; `--micro-batch` sets it anywhere."""
    batch, spec = config.batch_size, get_spec(config.encoder)
    if getattr(model, "own_objective", False):
        return batch, f"the batch of {batch} in one pass ({config.encoder} computes its own objective over the batch)"
    if config.micro_batch is not None:
        per_pass, why = min(config.micro_batch, batch), "--micro-batch"
    elif device == "cpu" and spec.cpu_micro_batch is not None:
        height = image_size[0]
        scale = (224 / height) ** 2 * (16 / frames if spec.input_kind in ("video", "pair-video") else 1)
        per_pass = max(1, min(batch, int(spec.cpu_micro_batch * max(1.0, scale))))
        why = f"{config.encoder}'s CPU micro-batch {spec.cpu_micro_batch} at 224 px and 16 frames" + (", scaled to these inputs" if scale > 1 else "")
    else:
        return batch, f"the batch of {batch} in one pass"
    if per_pass >= batch:
        return batch, f"the batch of {batch} in one pass ({why})"
    batchnorm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return per_pass, (f"passes of {per_pass} samples ({why}), {math.ceil(batch / per_pass)} per optimiser step of {batch}: the gradients are "
                      "summed, so a step is the whole batch's" + (" (its BatchNorm layers normalise with each pass's statistics)" if batchnorm else ""))


def lighten_cpu_passes(model: torch.nn.Module) -> str:
    """What a CPU step in micro-batches does to hold less per pass; a clause for the log line.

    Two measured costs that micro-batches alone leave (bench/results/micro-batches.md): autograd's new weight
    gradient per pass in large linear layers (vgg16: 0.41 GB, grad_in_place.py), and a long sequence's
    activations (videomae, 1,568 tokens: 0.95 GB per sample; a model with `checkpoint_activations` recomputes
    them in the backward, ~30 % more time). The gradients are the same. Single-process only: DDP's reducer
    waits on autograd's own accumulation."""
    notes = []
    if swapped := add_linear_grads_in_place(model):
        notes.append(f"{swapped} large linear layer(s) add each pass's gradient in place")
    if hasattr(model, "checkpoint_activations"):
        model.checkpoint_activations()
        notes.append("activations recomputed in the backward (activation checkpointing)")
    return "".join(f"; {note}" for note in notes)


def return_freed_memory() -> None:
    """Make glibc give every freed block of 1 MB or more back to the system at once.

    By default glibc raises that threshold (up to 32 MB) each time a large block is freed, so after the first
    steps a batch's activations come from the heap, whose freed memory the process keeps: vit at batch 16 peaked
    at 6.2 GB that way, 4.8 GB with this (bench/results/scale-*.md). The cost is a page fault per fresh page."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
        except (OSError, AttributeError):  # another C library (musl): keep its own policy
            pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


@torch.no_grad()
def evaluate(model, data: Data, split: str, plan: DevicePlan | str, batch_size: int, ablation: str | None = None, *,
             loader: Loader | None = None, rank: int = 0, world: int = 1, predictions: dict | None = None,
             per_pass: int | None = None) -> tuple[dict, float]:
    """Metrics and mean loss of `model` on `split`; under DDP each rank runs its share and all get the whole.

    `per_pass`: samples per forward pass (a CPU run's micro-batch, samples_per_pass), so that evaluating holds no
    more activations than training; the batches read stay `batch_size`.

    Per-clip losses are summed in the split's order in float64, so a sharded evaluation gives the numbers of
    a single-process one.
    """
    plan = plan if isinstance(plan, DevicePlan) else plan_for(model, plan, amp="off", compile="off")
    own = loader is None
    loader = loader or Loader(data.splits, LoaderConfig(workers=0), plan.device)
    model.eval()
    positions, y_pred, losses = [], [], []
    for raw, labels, where in loader.batches(split, batch_size, rank=rank, world=world):
        step = per_pass or len(labels)
        with plan.autocast():
            logits = torch.cat([model(*prepare(data.recipe, [r[a:a + step] for r in raw], plan, ablation)).float()
                                for a in range(0, len(labels), step)])
        losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="none").double().cpu())
        y_pred.append(logits.argmax(1).cpu())
        positions.append(torch.as_tensor(where))
    if own:
        loader.close()
    mine = [torch.cat(x).numpy() if x else np.zeros(0) for x in (positions, y_pred, losses)]
    shares = [mine]
    if world > 1:
        shares = [None] * world
        torch.distributed.all_gather_object(shares, mine)
    where, y_pred, losses = (np.concatenate([s[k] for s in shares]) for k in range(3))
    order = np.argsort(where, kind="stable")
    y_true = data.splits[split].labels.numpy()[where[order].astype(np.int64)]
    metrics = classification_metrics(y_true, y_pred[order].astype(np.int64), data.class_names)
    if predictions is not None:  # per clip, in the split's row order (run_predictions.save)
        predictions[split] = y_pred[order].astype(np.int64)
    return metrics, float(np.sum(losses[order]) / len(order))


# ---- the loop ---------------------------------------------------------------------------------------------
def train(location: str, config: TrainConfig, out: Path, *, progress: bool = True, allow_partial: bool = False) -> dict:
    """Train, keep the best validation epoch, test it once, and write the run directory `out`.

    The store must be finished (stores/state.py) unless `allow_partial`, and a run that is allowed records what
    it used against what the store holds (metrics.json `partial_store`, and train.log). The run is written into
    a hidden sibling of `out` (`.<name>.incomplete`) renamed to `out` once complete: a failed run leaves no
    `out` to block its retry, and its files stay in the sibling until that retry replaces them."""
    state = check_finished(location, allow_partial=allow_partial)  # before anything is written
    master = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 alone writes
    if master and out.exists():
        raise FileExistsError(f"run directory '{out}' exists; pass another out or delete it")
    work = out.with_name(f".{out.name}.incomplete")
    if master:
        shutil.rmtree(work, ignore_errors=True)  # a failed attempt's leftovers
    metrics = train_model(location, config, work, progress=progress)
    if master and metrics:
        record_partial(state, location, work, metrics)
        work.rename(out)
    return metrics


def record_partial(state: StoreState, location: str, run: Path, metrics: dict) -> None:
    """A run on an unfinished store (--allow-partial): its clip counts against the store's, in metrics.json
    (`partial_store`, for the report) and in train.log."""
    record = partial_record(state, FeatureStore.open(location), metrics["clips"], metrics["speakers"])
    if record is None:
        return
    metrics["partial_store"] = record
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))
    line = f"{time.strftime('%H:%M:%S')} warning: {describe_partial(record)}"
    with open(run / "train.log", "a") as log:
        log.write(line + "\n")
    print(line, file=sys.stderr)


def train_model(location: str, config: TrainConfig, out: Path, *, progress: bool = True) -> dict:
    """train()'s one loop, for every encoder (the ladder's own objective included): writes `out` (which must not exist)."""
    config = config.resolved()
    seed_everything(config.seed)
    return_freed_memory()
    data = load_data(location, config, checked=True)  # train() checked the store (once); bad input fails here, on every rank
    rank, world, device = start_distributed(config.device)
    master = rank == 0  # only rank 0 logs and writes
    if master:
        out.mkdir(parents=True, exist_ok=False)
    log = run_logger(out if master else None)
    trace = Trace(rank)

    raw_model = build_model(config, data)
    plan = plan_for(raw_model, device, amp=config.amp, compile=config.compile)
    prepare_model(raw_model, plan)
    per_pass, passes_why = samples_per_pass(config, data.image_size, data.frames, device, raw_model)
    if per_pass < config.batch_size and device == "cpu" and world == 1 and not plan.compile:
        passes_why += lighten_cpu_passes(raw_model)
    model = torch.nn.parallel.DistributedDataParallel(raw_model) if world > 1 else raw_model
    step_model = compiled(model, plan)
    pretrained_ids = {id(p) for p in getattr(raw_model, "pretrained_parameters", lambda: [])()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in pretrained_ids], "lr": config.lr},
        {"params": [p for p in model.parameters() if id(p) in pretrained_ids], "lr": config.lr * 0.01},  # seed 003
    ]
    # fused: one kernel per step, without the float temporaries of the per-parameter loop (vgg16 on a CPU: 0.55 GB less at its peak)
    optimizer = torch.optim.Adam([g for g in groups if g["params"]], weight_decay=config.weight_decay, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=getattr(raw_model, "label_smoothing", 0.0), ignore_index=-1, reduction="sum")
    own_objective = getattr(raw_model, "own_objective", False)
    generator = torch.Generator().manual_seed(config.seed)
    loader = Loader(data.splits, LoaderConfig(workers=config.loader_workers), device)
    if hasattr(raw_model, "fit_input_stats"):  # inputs standardised with the training split's statistics (the ladder); the same on every rank
        raw_model.fit_input_stats(prepare(data.recipe, raw, plan) for raw, _, _ in loader.batches("train", config.batch_size))
    unlabelled = torch.as_tensor(~data.labelled, device=device) if data.labelled is not None else None
    n_params = sum(p.numel() for p in raw_model.parameters())
    log.info("data: %s", data.holding())
    log.info("each optimiser step: %s", passes_why)
    log.info("encoder %s (%s params), modality %s, fusion %s%s, device %s x %d (%s, amp %s, compiled %s), inputs %s, "
             "train/val/test clips %s, speakers %s, %d loader workers",
             config.encoder, f"{n_params:,}", config.modality, config.fusion, " (fused on the device)" if data.recipe.fuse_on_device else "",
             device, world, "channels-last" if plan.memory_format is torch.channels_last else "contiguous", plan.amp_dtype, plan.compile,
             data.image_size, [len(s) for s in data.splits.values()], list(data.speakers.values()),
             config.loader_workers)
    if config.include_broken:
        log.info("clips the corpus flags as broken (clips/broken) are included (--include-broken)")
    else:
        log.info("%d usable clip(s) the corpus flags as broken (clips/broken) left out; --include-broken lets them in", data.excluded_broken)
    for note in data.notes:  # e.g. clips without votes for a perceived --target
        log.info(note)
    if config.target != "intended" or config.labels != "hard":
        log.info("target: %s, %s labels (best epoch by validation UAR against its majority labels)", config.target, config.labels)
    if data.labelled is not None:
        log.info("labelled %d of %d training clips (--labelled-fraction %g); the others train without their label",
                 int(data.labelled.sum()), len(data.labelled), config.labelled_fraction)
    if config.encoder_options:
        log.info("encoder options: %s", config.encoder_options)
    for warning in data.warnings:
        log.info("warning: %s", warning)

    if config.max_steps is not None:
        log.info("at most %d optimiser steps (--max-steps), then the run is evaluated as after a whole epoch", config.max_steps)

    history, best, epoch_seconds, wait_seconds = [], None, [], []
    best_state = tempfile.TemporaryFile()  # the best epoch's parameters, on disk: a second copy in memory is 0.5 GB for vgg16
    steps, samples = 0, 0  # optimiser steps and training samples (all ranks) so far
    for epoch in range(1, config.epochs + 1):
        model.train()
        started, waited, seen, loss_sum = time.perf_counter(), 0.0, 0, torch.zeros((), device=device)
        labelled_seen, term_sums, epoch_steps = torch.zeros((), device=device), {}, 0
        bar = tqdm(total=len(data.splits["train"]) // world, desc=f"epoch {epoch}/{config.epochs}", unit="clip", disable=not (progress and master), file=sys.stderr, leave=False)
        batches = loader.batches("train", config.batch_size, generator=generator, rank=rank, world=world)
        while not steps_done(config, steps):  # every rank takes the same number of steps
            asked = time.perf_counter()
            try:
                raw, labels, positions = next(batches)
            except StopIteration:
                break
            waited += time.perf_counter() - asked
            if unlabelled is not None:  # --labelled-fraction: these clips train without their label
                labels = labels.masked_fill(unlabelled[torch.as_tensor(positions, device=device)], -1)
            loss, terms = backward_passes(step_model, model, own_objective, data.recipe, plan, raw, labels, positions, loss_fn, data.soft, per_pass)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # now, not before the next step: no gradients held through the evaluation
            steps, epoch_steps = steps + 1, epoch_steps + 1
            loss_sum += loss.detach() * len(labels)
            labelled_seen += (labels >= 0).sum()
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.float() * len(labels)
            seen += len(labels)
            bar.update(len(labels))
            trace.step(epoch, positions, data.splits["train"].rows, loss)
        batches.close()  # a pass cut short by --max-steps: the loader drains it before the next one
        bar.close()
        sync_buffers(raw_model, world)  # BatchNorm statistics: rank 0's, as DDP broadcasts before each forward
        epoch_seconds.append(time.perf_counter() - started)
        wait_seconds.append(waited)
        names = sorted(term_sums)  # the same on every rank
        totals = torch.stack([loss_sum.float(), torch.tensor(float(seen), device=device), labelled_seen.float(),
                              *(torch.as_tensor(term_sums[n], device=device).float() for n in names)])
        if world > 1:
            torch.distributed.all_reduce(totals)
        train_loss = float(totals[0] / totals[1])
        samples += int(totals[1])
        if steps_done(config, steps):  # said before the evaluation, which at full size on a CPU takes minutes
            log.info("stopped after %d optimiser steps (--max-steps): %d training samples in %.1f s, %.1f samples/s; evaluating",
                     steps, samples, sum(epoch_seconds), samples / sum(epoch_seconds))
        val, val_loss = evaluate(raw_model, data, "val", plan, config.batch_size, loader=loader, rank=rank, world=world, per_pass=per_pass)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val["accuracy"], "val_uar": val["uar"], "seconds": epoch_seconds[-1],
               "steps": epoch_steps, "samples": int(totals[1]),
               "labelled_seen": int(totals[2]), "unlabelled_seen": int(totals[1] - totals[2]),
               **{f"{n}_loss": float(totals[3 + k] / totals[1]) for k, n in enumerate(names)}}
        history.append(row)
        log.info("epoch %d: train loss %.4f%s, val loss %.4f, val accuracy %.3f, val UAR %.3f, %.1f s (%.0f %% waiting for data)",
                 epoch, row["train_loss"], "".join(f" ({n} {row[f'{n}_loss']:.4f})" for n in names), val_loss, val["accuracy"], val["uar"],
                 epoch_seconds[-1], 100 * waited / epoch_seconds[-1])
        if best is None or (val["uar"], val["accuracy"]) > (best["val_uar"], best["val_accuracy"]):  # the same on every rank
            best = row
            best_state.seek(0)
            best_state.truncate()
            torch.save({k: v.detach().cpu() for k, v in raw_model.state_dict().items()}, best_state)
        if steps_done(config, steps):
            break
    trace.checksum("last_epoch", raw_model.state_dict())

    del optimizer  # its moments (twice the parameters) are not needed to evaluate
    best_state.seek(0)
    raw_model.load_state_dict(torch.load(best_state, weights_only=True))
    best_state.close()
    trace.checksum("best_epoch", raw_model.state_dict())
    predicted: dict = {}
    scores = {name: evaluate(raw_model, data, name, plan, config.batch_size, loader=loader, rank=rank, world=world, predictions=predicted, per_pass=per_pass)
              for name in ("train", "val", "test")}
    loader.close()
    trace.write(history=history, evaluation={k: {**m, "loss": l} for k, (m, l) in scores.items()})  # the test split once, with the chosen epoch
    if not master:
        stop_distributed(world)
        return {}
    save_checkpoint(out / "model.pt", {k: v.detach().cpu() for k, v in raw_model.state_dict().items()}, config, data)
    (train_metrics, train_loss), (val_metrics, val_loss), (test_metrics, test_loss) = scores["train"], scores["val"], scores["test"]
    metrics = {
        "encoder": config.encoder,
        "encoder_type": ENCODER_TYPE[get_spec(config.encoder).input_kind],
        "modality": config.modality,
        "fusion": config.fusion,
        "seed": config.seed,
        "split_seed": config.split_seed,
        "fold": None if config.fold is None else f"{config.fold}/{config.folds}",
        "ablate": None,
        "best_epoch": best["epoch"],
        "selection": "best validation UAR (ties: validation accuracy, then the earlier epoch)",
        "train": {**train_metrics, "loss": train_loss},
        "val": {**val_metrics, "loss": val_loss},
        "test": {**test_metrics, "loss": test_loss},
        "history": history,
        "seconds_per_epoch": float(np.mean(epoch_seconds)),
        "samples_per_second": float(samples / np.sum(epoch_seconds)),
        "steps": steps,
        "samples_per_pass": per_pass,  # of each optimiser step's batch (samples_per_pass): gradients summed over its passes
        "data_wait_fraction": float(np.sum(wait_seconds) / np.sum(epoch_seconds)),
        "world_size": world,
        "parameters": n_params,
        "clips": {k: len(v) for k, v in data.splits.items()},
        "labelled": {"train_labelled": int(data.labelled.sum()) if data.labelled is not None else len(data.splits["train"]),
                     "train_unlabelled": int((~data.labelled).sum()) if data.labelled is not None else 0, "fraction": config.labelled_fraction},
        "speakers": data.speakers,
        "class_names": data.class_names,
        "store": {"location": location, "fingerprints": data.fingerprints, "embeddings_random_init": data.embeddings_random_init},
        "warnings": data.warnings,
        "config": dataclasses.asdict(config),
        "inputs": {"image_size": list(data.image_size), "frames": data.frames, "in_channels": data.recipe.channels,
                   "in_memory": data.splits["train"].memory is not None, "split_bytes": data.split_bytes,
                   "in_memory_limit_bytes": data.memory_limit, "in_memory_budget": data.memory_budget, "fused_on_device": data.recipe.fuse_on_device},
        "device_plan": {"memory_format": str(plan.memory_format).removeprefix("torch."), "amp": str(plan.amp_dtype).removeprefix("torch."), "compiled": plan.compile},
        "code_commit": code_commit(),
        "versions": library_versions(),
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
    }
    metrics["targets"] = score_run(raw_model, data, plan, config, location, batch_size=per_pass)  # every target side by side: encoders/targets.py
    metrics["partition"] = {"file": run_partition.PARTITION_FILE, "sha256": run_partition.save(out, data.partition)}
    run_predictions.save(out, location, data.splits["test"].rows, predicted["test"])  # before metrics.json: a resumed sweep skips runs that have it
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    from encoders.plots import plot_confusion, plot_learning_curve  # matplotlib (26 MB) after training, not through it

    plot_learning_curve(history, out / "learning_curve.png", title=f"{config.encoder} {config.modality} {config.fusion} seed {config.seed}", best_epoch=best["epoch"])
    plot_confusion(test_metrics["confusion"], data.class_names, out / "confusion_test.png", title=f"test: {config.encoder} {config.modality} {config.fusion}")
    log.info("best epoch %d; test accuracy (WAR) %.3f, UAR %.3f, macro-F1 %.3f", best["epoch"], test_metrics["accuracy"], test_metrics["uar"], test_metrics["macro_f1"])
    close_logger(log)
    stop_distributed(world)
    return metrics


def steps_done(config: TrainConfig, steps: int) -> bool:
    """Whether `--max-steps` has been reached (never without it)."""
    return config.max_steps is not None and steps >= config.max_steps


def sync_buffers(model: torch.nn.Module, world: int) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics), so evaluation and checkpoints agree."""
    if world > 1:
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, 0)


class Trace:
    """Per-rank record of a run (steps, parameter checksums, evaluation) in $AVSTORE_TRAIN_TRACE; off without it.

    For tests and debugging of distributed runs: what each rank really did, as numbers.
    """

    def __init__(self, rank: int) -> None:
        folder = os.environ.get("AVSTORE_TRAIN_TRACE")
        self.path = Path(folder) / f"rank{rank}.json" if folder else None
        self.record: dict = {"rank": rank, "steps": [], "checksums": {}}

    def step(self, epoch: int, positions: np.ndarray, rows: np.ndarray, loss: torch.Tensor) -> None:
        if self.path is not None:
            self.record["steps"].append({"epoch": epoch, "rows": rows[positions].tolist(), "loss": float(loss.detach())})

    def checksum(self, name: str, state: dict) -> None:
        if self.path is not None:
            digest = hashlib.sha256()
            for key in sorted(state):
                digest.update(key.encode())
                digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
            self.record["checksums"][name] = digest.hexdigest()

    def write(self, **extra) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({**self.record, **extra}, indent=1))


def start_distributed(device: str) -> tuple[int, int, str]:
    """(rank, world size, this rank's device), from torchrun's environment; (0, 1, device) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    cuda = device.startswith("cuda")
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return torch.distributed.get_rank(), world, device


def stop_distributed(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def save_checkpoint(path: Path, state: dict, config: TrainConfig, data: Data) -> None:
    """A state dict plus plain values only, so it loads with torch.load(weights_only=True)."""
    torch.save({"state_dict": state, "config": dataclasses.asdict(config), "class_names": data.class_names,
                "image_size": list(data.image_size), "frames": data.frames}, path)


def evaluate_run(run: Path, *, ablation: str | None = None, store: str | None = None, progress: bool = False) -> dict:
    """Re-evaluate a finished run on its test split, optionally with one modality zeroed."""
    metrics = json.loads((run / "metrics.json").read_text())
    config = run_config(metrics["config"])
    checkpoint = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    recorded = run_partition.load(run)
    data = load_data(store or metrics["store"]["location"], config, recorded, allow_partial=recorded is not None)  # the run's own clips
    changed = {k: (v, data.fingerprints.get(k)) for k, v in metrics["store"]["fingerprints"].items() if data.fingerprints.get(k) != v}
    if changed:
        kind, (was, now) = next(iter(changed.items()))
        raise run_partition.PartitionError(f"the store's {kind} features changed since this run (fingerprint {was} then, {now} now); "
                                           "evaluate with --store pointing at the store the run was trained on")
    if recorded is None:
        data.notes.append("this run predates recorded partitions; evaluating on the store's current split, which may differ from its own")
    model = build_model(dataclasses.replace(config, pretrained=False), data)
    model.load_state_dict(checkpoint["state_dict"])
    plan = plan_for(model, config.device, amp=config.amp, compile="off")
    prepare_model(model, plan)
    per_pass, _ = samples_per_pass(config, data.image_size, data.frames, plan.device, model)  # a CPU holds what training held
    result, loss = evaluate(model, data, "test", plan, config.batch_size, ablation, per_pass=per_pass)
    name = f"evaluate{'-ablate-' + ablation if ablation else ''}"
    report = {**{k: metrics[k] for k in ("encoder", "encoder_type", "modality", "fusion", "seed", "best_epoch")}, "ablate": ablation, "test": {**result, "loss": loss},
              "partition": metrics.get("partition"), "warnings": data.notes,
              "targets": score_run(model, data, plan, config, store or metrics["store"]["location"], ablation, batch_size=per_pass)}
    (run / f"{name}.json").write_text(json.dumps(report, indent=2))
    from encoders.plots import plot_confusion  # matplotlib only now, as in train_model

    plot_confusion(result["confusion"], data.class_names, run / f"confusion_{name}.png", title=f"test{' (' + ablation + ' zeroed)' if ablation else ''}: {config.encoder}")
    return report


def run_config(recorded: dict) -> TrainConfig:
    """A run's TrainConfig from its metrics.json. Runs made before the encoders' own options moved out of
    TrainConfig carry `ladder_*` fields: ignored for other encoders, refused for a ladder (another model then)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    legacy = sorted(k for k in recorded if k not in known)
    if legacy and recorded.get("encoder") == "ladder":
        raise ValueError(f"this ladder run predates the sequence ladder network (its config has {', '.join(legacy)}); retrain it to evaluate it")
    return TrainConfig(**{k: v for k, v in recorded.items() if k in known})


def run_logger(out: Path | None) -> logging.Logger:
    """The run's log (train.log and stderr); silent for `out=None` (DDP ranks other than 0)."""
    log = logging.getLogger(f"avstore.train.{out}")
    close_logger(log)  # a retried run reuses the name
    log.setLevel(logging.INFO)
    log.propagate = False
    if out is None:
        log.addHandler(logging.NullHandler())
        return log
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    return log


def close_logger(log: logging.Logger) -> None:
    for handler in list(log.handlers):
        handler.close()
        log.removeHandler(handler)
