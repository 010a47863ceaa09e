"""A training run as a user asks for one: its configuration from the command's options, its folder's name, the
checks before it starts, and a fusion the store lacks derived on the way. `train`, `sweep`, a study's presets
and the demo all start their runs here, so a run's folder is named in one place (`run_name`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from encoders.ladder import LadderConfig
from encoders.registry import get_spec
from encoders.rows import MissingFusionError
from encoders.targets import target_lines
from encoders.train import TrainConfig, evaluate_run, train
from pipeline.run import derive_fusion
from stores.location import local_store_writable, reading, store_or_default
from stores.state import check_finished
from stores.store import FeatureStore
from stores.torchdata import default_fusion, recipe_for, select_feature_sets

RUNS_DIR = Path("runs")
"""Where `train` puts a run that names no --out."""


class RunError(ValueError):
    """Options no run can use, or a run folder in the way; the message names the fix."""


def run_name(config: TrainConfig, prefix: str | None = None) -> str:
    """The folder name of a run: <encoder>-<modality>-<fusion> (or a study arm's `prefix`), -seed<S>, then
    -fold<K>of<N> for a fold and -<target>-<labels> for a perceived target, so no two configurations share one."""
    fold = "" if config.fold is None else f"-fold{config.fold}of{config.folds}"
    target = "" if config.target == "intended" else f"-{config.target}-{config.labels}"
    return f"{prefix or f'{config.encoder}-{config.modality}-{config.fusion}'}-seed{config.seed}{fold}{target}"


def train_config(encoder: str, modality: str | None, fusion: str | None, **options: Any) -> TrainConfig:
    """The run a user means: modality av unless given; the fusion the registry gives the encoder's input kind
    and modality unless given (stores/torchdata.default_fusion). A fusion the encoder cannot read is refused."""
    spec = get_spec(encoder)  # UnknownEncoderError lists the encoders
    kind, modality = spec.input_kind, modality or "av"
    if kind == "sequences" and (modality != "av" or fusion not in (None, "none")):  # seed 002's ladder fuses itself
        raise RunError(f"encoder {encoder} is audiovisual and fuses itself; use --modality av and no --fusion")
    fusion = fusion or default_fusion(kind, modality)
    if kind != "sequences":
        try:
            recipe_for(kind, modality, fusion, square_only=spec.square_input)
        except ValueError as err:
            raise RunError(f"encoder {encoder}: {err}") from None
    return TrainConfig(encoder=encoder, modality=modality, fusion=fusion, **options)


def ladder_options(*, noise: float, lambdas: str, cross_skips: bool, reconstruction: bool, combinator: str) -> dict[str, Any]:
    """`encoder_options` from the ladder's flags: those that differ from LadderConfig's defaults, so a run is recorded
    the same way by `train` and by a preset. LadderConfig checks the values (TrainConfig.resolved), and an encoder
    without these options refuses them there."""
    try:
        values = tuple(float(v) for v in lambdas.split(",") if v.strip())
    except ValueError:
        raise RunError(f"--lambdas '{lambdas}': give non-negative numbers, e.g. --lambdas 1,1,0.1") from None
    given = dict(noise=noise, lambdas=values, cross_skips=cross_skips, reconstruction=reconstruction, combinator=combinator)
    defaults = dataclasses.asdict(LadderConfig())
    return {k: v for k, v in given.items() if v != defaults[k]}


def check_store(store: str, allow_partial: bool) -> None:
    """Refuse a store that is missing, unreadable, being written or never finished (stores/state.py); with
    `allow_partial`, warn once on stderr instead."""
    with reading(f"store '{store}'"):
        FeatureStore.open(store)
        state = check_finished(store, allow_partial=allow_partial)
    if not state.finished:
        print(f"warning: {state.message()}; --allow-partial: training on the clips committed so far "
              "(recorded in metrics.json and train.log)", file=sys.stderr)


def run_training(store: str, config: TrainConfig, out: Path, progress: bool = True, allow_partial: bool = False) -> dict:
    """Train; a fusion the store lacks is first derived from its stored crops and chunks, and cached."""
    try:
        return train(store, config, out, progress=progress, allow_partial=allow_partial)
    except MissingFusionError as err:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise RunError(f"{err} first; under torchrun the ranks cannot derive it themselves") from None
        if not local_store_writable(store):
            raise RunError(f"{err} (this store is read-only for you: ask its owner, or copy it)") from None
        print(f"deriving fusion '{err.fusion}' from the stored faces and audio (no decoding) ...", file=sys.stderr)
        faces, audio = select_feature_sets(FeatureStore.open(store), config.faces, config.audio)
        derive_fusion(store, err.fusion, faces.fingerprint, audio.fingerprint)
    return train(store, config, out, progress=progress, allow_partial=allow_partial)


def train_run(store: str | None, encoder: str, modality: str | None, fusion: str | None, out: Path | None, *, progress: bool,
              allow_partial: bool, noise: float, lambdas: str, cross_skips: bool, reconstruction: bool, combinator: str,
              **options: Any) -> None:
    """`cli.py train`: one run into `out` (default RUNS_DIR/run_name), every option checked before the store is
    read and before any folder is made. `options` are TrainConfig fields."""
    store = store_or_default(store)
    encoder_options = ladder_options(noise=noise, lambdas=lambdas, cross_skips=cross_skips, reconstruction=reconstruction, combinator=combinator)
    config = train_config(encoder, modality, fusion, encoder_options=encoder_options, **options)
    try:
        config.resolved()  # bad options fail here, before any run directory or store access
    except ValueError as err:
        raise RunError(str(err)) from None
    out = out or RUNS_DIR / run_name(config)
    if config.fold is not None and not 0 <= config.fold < config.folds:
        raise RunError(f"--fold {config.fold} is outside 0..{config.folds - 1} for --folds {config.folds}; pick a fold in that range")
    if out.exists() and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 creates it
        if not (out / "metrics.json").is_file():  # runs write elsewhere until they finish (encoders/train.py)
            raise RunError(f"run directory '{out}' exists but holds no metrics.json (a failed attempt, or not a run); delete it (rm -r '{out}') or pass another --out")
        raise RunError(f"run directory '{out}' exists; pass another --out or delete it")
    check_store(store, allow_partial)
    metrics = run_training(store, config, out, progress, allow_partial=allow_partial)
    if metrics:  # under torchrun, rank 0 alone reports
        print_metrics(metrics, out)


def print_metrics(metrics: dict, out: Path) -> None:
    """A finished run in four lines: its test scores, per-class recall, the other targets, where it is."""
    test = metrics["test"]
    print(f"{metrics['encoder']} {metrics['modality']} {metrics['fusion']} seed {metrics['seed']}: best epoch {metrics['best_epoch']} (by validation UAR); "
          f"test accuracy (WAR) {test['accuracy']:.3f}, UAR {test['uar']:.3f}, macro-F1 {test['macro_f1']:.3f} on {test['n']} clips")
    print("  per-class recall: " + "  ".join(f"{k} {v['recall']:.2f}" for k, v in test["per_class"].items()))
    print_targets(metrics.get("targets"))
    print(f"  run directory: {out} (metrics.json, model.pt, learning_curve.png, confusion_test.png, train.log)")


def print_targets(targets: dict | None) -> None:
    """The run scored against the intended and the three perceived targets, and the raters (encoders/targets.py)."""
    for line in target_lines(targets or {}):
        print(line)


def evaluate_and_print(run: Path, ablate: str | None, store: str | None) -> None:
    """`cli.py evaluate`: re-test a finished run (optionally with one modality zeroed) and print the scores."""
    if not (run / "metrics.json").is_file() or not (run / "model.pt").is_file():
        raise RunError(f"'{run}' is not a finished run directory (needs metrics.json and model.pt)")
    try:
        report = evaluate_run(run, ablation=ablate, store=store)
    except ValueError as err:  # a StoreError, or an ablation this run has no modality for
        raise RunError(str(err)) from None
    for note in report.get("warnings", []):
        print(f"warning: {note}", file=sys.stderr)
    test = report["test"]
    print(f"{report['encoder']} {report['modality']} {report['fusion']}{' ablated ' + ablate if ablate else ''}: "
          f"test accuracy {test['accuracy']:.3f}, UAR {test['uar']:.3f}, macro-F1 {test['macro_f1']:.3f}")
    print_targets(report.get("targets"))


def finished_metrics(run: Path) -> dict | None:
    """A run folder's metrics.json, or None when the run is not finished."""
    metrics = run / "metrics.json"
    return json.loads(metrics.read_text()) if metrics.is_file() else None
