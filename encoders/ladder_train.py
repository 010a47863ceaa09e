"""Training the seed 002 ladder network from the store, in train.py's order, with its semi-supervised losses.

The loop differs from train.py's in what one step computes: the noisy pass's three heads give the supervised
loss (mean of the AV, audio and video cross-entropies, over the labelled clips of the batch) and the decoders
the unsupervised one (λ_l-weighted reconstructions, AV plus half of A→V and V→A). With `labelled_fraction` < 1
a seeded, class-stratified share of the training clips keeps its labels; the others still pass through the
network every epoch and contribute reconstruction loss only. Everything else is train.py's: actor-disjoint
splits from the store, the epoch of best validation UAR, one test evaluation, the same run directory.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from encoders import partition as run_partition
from encoders.ladder import LadderConfig, LadderNetwork, supervised_loss
from encoders.metrics import classification_metrics
from encoders.plots import plot_confusion, plot_learning_curve
from encoders.train import TrainConfig, close_logger, run_logger, seed_everything
from stores.provenance import code_commit, library_versions
from stores.selection import usable_rows
from stores.sequences import read_sequences, sequence_sets
from stores.store import FeatureStore
from stores.torchdata import select_feature_sets


class LadderOptionError(ValueError):
    """An option the ladder network cannot take; the message names the valid range."""


def ladder_config(config: TrainConfig) -> LadderConfig:
    if not 0.0 < config.labelled_fraction <= 1.0:
        raise LadderOptionError(f"--labelled-fraction {config.labelled_fraction:g} is outside (0, 1]; give e.g. 0.5 for half the training clips labelled")
    if config.ladder_noise < 0 or any(lam < 0 for lam in config.ladder_lambdas) or not config.ladder_lambdas:
        raise LadderOptionError("--noise and --lambdas must be >= 0 (e.g. --noise 0.3 --lambdas 1,1,1)")
    if config.modality != "av":
        raise LadderOptionError(f"the ladder network is audiovisual; use --modality av, not {config.modality}")
    return LadderConfig(noise=config.ladder_noise, lambdas=tuple(config.ladder_lambdas), cross_skips=config.ladder_cross_skips,
                        reconstruction=config.ladder_reconstruction)


def labelled_mask(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which training clips keep their label: per class, the first ceil(fraction x n) of a seeded permutation."""
    keep = np.zeros(len(labels), bool)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep[rng.permutation(idx)[: math.ceil(fraction * len(idx))]] = True
    return keep


def _tensors(seq) -> list[torch.Tensor]:
    return [torch.from_numpy(x) for x in (seq.audio, seq.audio_mask, seq.video, seq.video_mask)]


def load(location: str, config: TrainConfig):
    """(tensors per split, labels per split, rows, table, fingerprints, embed params, class names)."""
    store = FeatureStore.open(location)
    faces, audio = select_feature_sets(store, config.faces, config.audio)
    lld, embed = sequence_sets(store, faces, config.lld, config.embed)
    table = store.clip_table()
    split = run_partition.split_column(store, table, split_seed=config.split_seed, fold=config.fold, folds=config.folds)
    ok, _ = usable_rows(faces, audio, None, table["broken"], include_broken=config.include_broken)
    ok &= lld.ok() & embed.ok()
    rows = {name: np.flatnonzero(ok & (split == name)) for name in ("train", "val", "test")}
    empty = [name for name, r in rows.items() if not len(r)]
    if empty:
        raise LadderOptionError(f"no usable clip in the {', '.join(empty)} split(s) of '{location}' (faces, audio, lld and embed all ok)")
    data = {name: _tensors(read_sequences(lld, embed, r)) for name, r in rows.items()}
    labels = {name: torch.as_tensor(table["label"][r].astype(np.int64)) for name, r in rows.items()}
    fingerprints = {s.kind: s.fingerprint for s in (faces, audio, lld, embed)}
    return data, labels, rows, table, fingerprints, embed.params, store.class_names


def batches(n: int, size: int, generator: torch.Generator | None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for start in range(0, n, size):
        yield order[start : start + size]


@torch.no_grad()
def evaluate(model: LadderNetwork, inputs: list[torch.Tensor], labels: torch.Tensor, class_names, device: str, batch_size: int) -> tuple[dict, float]:
    model.eval()
    preds, loss = [], 0.0
    for index in batches(len(labels), batch_size, None):
        logits = model(*[x[index].to(device) for x in inputs])
        loss += float(torch.nn.functional.cross_entropy(logits, labels[index].to(device), reduction="sum"))
        preds.append(logits.argmax(1).cpu())
    return classification_metrics(labels.numpy(), torch.cat(preds).numpy(), class_names), loss / len(labels)


def train_ladder(location: str, config: TrainConfig, out: Path, *, progress: bool = True) -> dict:
    """Train the ladder network, keep the best validation epoch, test it once, write the run directory `out`."""
    config = config.resolved()
    ladder = ladder_config(config)  # bad options: refused before anything is read or written
    seed_everything(config.seed)
    device = config.device
    data, labels, rows, table, fingerprints, embed_params, class_names = load(location, config)
    out.mkdir(parents=True, exist_ok=False)
    log = run_logger(out)

    keep = labelled_mask(labels["train"].numpy(), config.labelled_fraction, config.seed)
    train_labels = torch.where(torch.as_tensor(keep), labels["train"], torch.full_like(labels["train"], -1))
    model = LadderNetwork(audio_dim=data["train"][0].shape[-1], video_dim=data["train"][2].shape[-1], num_classes=len(class_names), config=ladder)
    with torch.no_grad():
        model.set_input_stats(*_pooled(data["train"]))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("encoder ladder (%s params), device %s, train/val/test clips %s, labelled %d of %d training clips, noise %g, lambdas %s, "
             "cross-modal skips %s, reconstruction loss %s", f"{n_params:,}", device, [len(v) for v in labels.values()], int(keep.sum()),
             len(keep), ladder.noise, list(ladder.lambdas), ladder.cross_skips, ladder.reconstruction)
    if embed_params.get("random_init"):
        log.info("warning: the face embeddings come from a randomly initialised %s (cli.py embed without --weights)", embed_params.get("backbone"))

    history, best, best_state, epoch_seconds = [], None, None, []
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        sums = {"supervised": 0.0, "unsupervised": 0.0, "labelled_seen": 0, "unlabelled_seen": 0}
        for index in batches(len(train_labels), config.batch_size, generator):
            if len(index) < 2:  # batch norm needs two clips
                continue
            out_ = model.ladder(*[x[index].to(device) for x in data["train"]])
            y = train_labels[index].to(device)
            sup = supervised_loss(out_["logits"], y)
            uns = out_["unsupervised"] if ladder.reconstruction else sup * 0.0
            optimizer.zero_grad(set_to_none=True)
            (sup + uns).backward()
            optimizer.step()
            sums["supervised"] += float(sup.detach()) * len(index)
            sums["unsupervised"] += float(out_["unsupervised"].detach()) * len(index)
            sums["labelled_seen"] += int((y >= 0).sum())
            sums["unlabelled_seen"] += int((y < 0).sum())
        epoch_seconds.append(time.perf_counter() - started)
        val, val_loss = evaluate(model, data["val"], labels["val"], class_names, device, config.batch_size)
        n = max(1, sums["labelled_seen"] + sums["unlabelled_seen"])
        row = {"epoch": epoch, "train_loss": sums["supervised"] / n, "reconstruction_loss": sums["unsupervised"] / n, "val_loss": val_loss,
               "val_accuracy": val["accuracy"], "val_uar": val["uar"], "labelled_seen": sums["labelled_seen"],
               "unlabelled_seen": sums["unlabelled_seen"], "seconds": epoch_seconds[-1]}
        history.append(row)
        log.info("epoch %d: supervised %.4f, reconstruction %.4f, val loss %.4f, val UAR %.3f", epoch, row["train_loss"],
                 row["reconstruction_loss"], val_loss, val["uar"])
        if best is None or (val["uar"], val["accuracy"]) > (best["val_uar"], best["val_accuracy"]):
            best, best_state = row, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})

    model.load_state_dict(best_state)
    torch.save({"state_dict": best_state, "config": dataclasses.asdict(config), "class_names": class_names}, out / "model.pt")
    results = {name: evaluate(model, data[name], labels[name], class_names, device, config.batch_size) for name in ("train", "val", "test")}
    partition = run_partition.record(table, rows)
    partition["train"]["unlabelled"] = [str(c) for c in table["clip_id"][rows["train"][~keep]]]
    warnings = ["face embeddings from a randomly initialised backbone (no --weights): not face descriptors"] if embed_params.get("random_init") else []
    metrics = {
        "encoder": "ladder", "encoder_type": "fusion", "modality": "av", "fusion": "none", "seed": config.seed,
        "split_seed": config.split_seed, "fold": None if config.fold is None else f"{config.fold}/{config.folds}", "ablate": None,
        "best_epoch": best["epoch"], "selection": "best validation UAR (ties: validation accuracy, then the earlier epoch)",
        **{name: {**m, "loss": loss} for name, (m, loss) in results.items()},
        "history": history, "seconds_per_epoch": float(np.mean(epoch_seconds)), "parameters": n_params,
        "clips": {k: len(v) for k, v in labels.items()},
        "labelled": {"train_labelled": int(keep.sum()), "train_unlabelled": int((~keep).sum()), "fraction": config.labelled_fraction},
        "speakers": {name: len(set(table["speaker"][r].tolist())) for name, r in rows.items()},
        "class_names": class_names,
        "store": {"location": location, "fingerprints": fingerprints, "embeddings_random_init": bool(embed_params.get("random_init"))},
        "config": dataclasses.asdict(config), "warnings": warnings,
        "code_commit": code_commit(), "versions": library_versions(), "device": device,
    }
    metrics["partition"] = {"file": run_partition.PARTITION_FILE, "sha256": run_partition.save(out, partition)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_learning_curve(history, out / "learning_curve.png", title=f"ladder seed {config.seed}", best_epoch=best["epoch"])
    plot_confusion(results["test"][0]["confusion"], class_names, out / "confusion_test.png", title="test: ladder")
    log.info("best epoch %d; test accuracy (WAR) %.3f, UAR %.3f, macro-F1 %.3f", best["epoch"], results["test"][0]["accuracy"],
             results["test"][0]["uar"], results["test"][0]["macro_f1"])
    close_logger(log)
    return metrics


def _pooled(train: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from encoders.ladder import pool

    audio, audio_mask, video, video_mask = train
    return pool(audio, audio_mask), pool(video, video_mask)
