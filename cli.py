"""avstore's command line: preprocess an audio-visual emotion corpus once, train every encoder from the store.

Each command parses its options (cli_options.py: defaults, help texts) and calls one function of the library,
which prints what the user sees. Bad input raises one of cli_options.INPUT_ERRORS: one line that names the problem
and the fix, and exit code 2. A command's function may return an exit code (1: the store differs, is damaged, ...).
"""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer

from cli_options import (
    CLASSES, DATASET, JSON, STORE, Demo, Diff, Embed, Evaluate, Extract, Preview, Publish, Report, Sample, Summary, Sweep, Train, input_errors,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="avstore: an audio-visual emotion feature store. Extract once, train every encoder from the store.",
)


def fail(message: str) -> None:
    """One line on stderr, exit code 2: the failure policy for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def command(function: Callable[..., Optional[int]]) -> Callable[..., None]:
    """Register `function` as a command: its bad input ends in one line and exit code 2, its returned code is the exit code."""
    @functools.wraps(function)
    def run(*args, **kwargs) -> None:
        try:
            code = function(*args, **kwargs)
        except input_errors() as err:
            fail(str(err))
        if code:
            raise typer.Exit(code=code)

    return app.command()(run)


@command
def sample(out: Path = Sample.out, actors: int = Sample.actors, sentences: int = Sample.sentences, seed: int = Sample.seed,
           with_broken: bool = Sample.with_broken) -> None:
    """Generate a small learnable corpus in CREMA-D's layout (FLV video + 16 kHz WAV)."""
    from pipeline.corpora.sample import make_sample

    make_sample(out, actors=actors, sentences=sentences, seed=seed, with_broken=with_broken)


@command
def datasets() -> None:
    """List the corpus adapters."""
    from pipeline.corpora import print_corpora

    print_corpora()


@command
def summary(dataset: str = DATASET, root: Path = Summary.root, meta: Optional[Path] = Summary.meta, split_seed: int = Summary.split_seed,
            as_json: bool = Summary.as_json, classes: Optional[str] = CLASSES) -> None:
    """Clips per emotion and per split, and the clips known to be broken, without decoding anything."""
    from pipeline.summary import summarise_corpus

    summarise_corpus(dataset, root, meta, split_seed, as_json, classes)


@command
def extract(
    dataset: str = DATASET, root: Optional[Path] = Extract.root, store: Optional[str] = Extract.store, meta: Optional[Path] = Extract.meta,
    frames: int = Extract.frames, size: int = Extract.size, margin: float = Extract.margin, detect_every: int = Extract.detect_every,
    sr: int = Extract.sr, n_fft: int = Extract.n_fft, hop: int = Extract.hop, n_mels: int = Extract.n_mels,
    fusion: list[str] = Extract.fusion, min_coverage: float = Extract.min_coverage,
    workers: int = Extract.workers, scheduler: Optional[str] = Extract.scheduler, device: str = Extract.device,
    split_seed: Optional[int] = Extract.split_seed, progress: bool = Extract.progress, commit_every: int = Extract.commit_every,
    retry_failed: bool = Extract.retry_failed, ffmpeg_timeout: float = Extract.ffmpeg_timeout, lld: bool = Extract.lld,
    classes: Optional[str] = CLASSES, face_policy: str = Extract.face_policy, scene: bool = Extract.scene,
) -> int:
    """Decode, detect faces, compute mel chunks and fusions once, into a Zarr store. Re-runs do only what is missing.

    Exit code 0 when every clip is ok or has an expected media status (no_face, face_lost, no_audio,
    decode_error, too_short, too_long); 1 when a clip ended in `error` (a bug) or no clip is usable; 2 for bad input.

    Example: python cli.py extract --dataset crema-d --root data/crema-d --store data/stores/crema-d.zarr
    """
    started, options = time.perf_counter(), locals()  # the start-up it prints counts from here; every option by its name
    from pipeline.extraction import extract_corpus

    return extract_corpus(**options, started=started)


@command
def embed(
    store: Optional[str] = Embed.store, backbone: str = Embed.backbone, weights: Optional[Path] = Embed.weights, size: Optional[int] = Embed.size,
    batch_size: int = Embed.batch_size, faces: Optional[str] = Embed.faces, device: str = Embed.device, progress: bool = Embed.progress,
) -> None:
    """Per-frame face embeddings of the stored crops from a frozen backbone (seed 002's visual input); no video decoded.

    Example: python cli.py embed --store data/stores/crema-d.zarr --backbone vggface --weights vgg_face.pt
    """
    from encoders.embed import embed_and_report

    embed_and_report(store, backbone=backbone, size=size, batch_size=batch_size, weights=weights, faces=faces, device=device, progress=progress)


@command
def info(store: Optional[str] = STORE, as_json: bool = JSON) -> None:
    """What a store holds: clips by status, feature sets with parameters and fingerprints, arrays, bytes on disk."""
    from stores.inspect import print_info

    print_info(store, as_json)


@command
def verify(store: Optional[str] = STORE) -> int:
    """Re-hash every file against the checksums written at commit; exit 1 and name the damage if any."""
    from stores.integrity import verify_and_report

    return verify_and_report(store)


@command
def publish(store: str = Publish.store, to: str = Publish.to) -> None:
    """Copy a finished store to a shared place, verify it there, and make it visible only once complete.

    Example: python cli.py publish --store data/stores/crema-d.zarr --to s3://lab-features/crema-d.zarr
    """
    from stores.publish import publish_and_report

    publish_and_report(store, to)


@command
def diff(store_a: str = Diff.store_a, store_b: str = Diff.store_b, as_json: bool = JSON, tolerance: int = Diff.tolerance) -> int:
    """Compare two stores by content (feature sets, parameters, clips, committed arrays); provenance is ignored.

    Exit 0 and "no difference" when identical in content, exit 1 when they differ (like `diff`). Bit-identical is
    the default verdict; where numeric arrays differ, the largest difference is shown in ulps and in absolute units,
    beside the numeric environment (CPU, BLAS kernels) of each side. Stores made on different CPU architectures
    may differ by rounding: `--tolerance 1` accepts one ulp.
    """
    from stores.diff import diff_and_report

    return diff_and_report(store_a, store_b, tolerance=tolerance, as_json=as_json)


@command
def preview(store: str = Preview.store, out: Path = Preview.out, clips: int = Preview.clips, status: list[str] = Preview.status) -> None:
    """A PNG contact sheet: per clip a few face crops beside their spectrogram chunks, labelled with the clip
    id, status, face coverage and split. Clips most likely to be wrong come first.

    Example: python cli.py preview --store data/stores/crema-d.zarr --out preview.png --status face_lost
    """
    from stores.preview import preview_and_report

    preview_and_report(store, out, clips=clips, statuses=tuple(status))


@command
def encoders() -> None:
    """List the encoders (the registry) with what they read."""
    from encoders.registry import print_encoders

    print_encoders()


@command
def train(
    encoder: str = Train.encoder, fusion: Optional[str] = Train.fusion, modality: Optional[str] = Train.modality, store: Optional[str] = Train.store,
    epochs: int = Train.epochs, max_steps: Optional[int] = Train.max_steps, batch_size: int = Train.batch_size,
    micro_batch: Optional[int] = Train.micro_batch, lr: Optional[float] = Train.lr,
    seed: int = Train.seed, split_seed: Optional[int] = Train.split_seed, fold: Optional[int] = Train.fold, folds: int = Train.folds,
    device: str = Train.device, pretrained: bool = Train.pretrained, out: Optional[Path] = Train.out,
    faces: Optional[str] = Train.faces, audio: Optional[str] = Train.audio,
    max_memory_gb: Optional[float] = Train.max_memory_gb, loader_workers: Optional[int] = Train.loader_workers,
    amp: str = Train.amp, compile: str = Train.compile, fuse_on_device: bool = Train.fuse_on_device,
    include_broken: bool = Train.include_broken, target: str = Train.target, labels: str = Train.labels,
    labelled_fraction: float = Train.labelled_fraction, noise: float = Train.noise, lambdas: str = Train.lambdas,
    cross_skips: bool = Train.cross_skips, reconstruction: bool = Train.reconstruction, combinator: str = Train.combinator,
    lld: Optional[str] = Train.lld, embed: Optional[str] = Train.embed,
    progress: bool = Train.progress, allow_partial: bool = Train.allow_partial,
) -> None:
    """Train one encoder from the store; the best validation epoch is tested once.

    Example: python cli.py train --encoder vgg16 --fusion concat --store data/stores/crema-d.zarr
    """
    options = locals()  # every option by its name: the run's, the ladder's flags and TrainConfig fields
    from encoders.runs import train_run

    train_run(**options)


@command
def evaluate(run: Path = Evaluate.run, ablate: Optional[str] = Evaluate.ablate, store: Optional[str] = Evaluate.store) -> None:
    """Re-evaluate a run on its test split; --ablate gives the study's "ablated" rows."""
    from encoders.runs import evaluate_and_print

    evaluate_and_print(run, ablate, store)


@command
def report(runs: Path = Report.runs, out: Optional[Path] = Report.out, compare: Optional[tuple[str, str]] = Report.compare,
           metric: str = Report.metric, alternative: str = Report.alternative) -> None:
    """The paper's comparison table (mean ± sd over folds, or over seeds without --fold) as Markdown and CSV, per-class
    sections, averaged confusion matrices and bar plots.

    Runs are grouped by every configuration field that differs between them (encoder, modality, fusion, pretrained,
    epochs, lr, the store's feature sets, ...); n is shown beside each mean.
    """
    from encoders.report import report_runs

    report_runs(runs, out, compare, metric, alternative)


@command
def sweep(
    store: Optional[str] = Sweep.store, encoders: Optional[str] = Sweep.encoders, modalities: Optional[str] = Sweep.modalities,
    seeds: Optional[str] = Sweep.seeds, folds: Optional[int] = Sweep.folds, preset: Optional[str] = Sweep.preset,
    split_seed: Optional[int] = Sweep.split_seed, lr: Optional[float] = Sweep.lr, pretrained: bool = Sweep.pretrained,
    fusion: str = Sweep.fusion, epochs: int = Sweep.epochs, batch_size: int = Sweep.batch_size, device: str = Sweep.device,
    out: Path = Sweep.out, progress: bool = Sweep.progress, allow_partial: bool = Sweep.allow_partial,
) -> None:
    """Encoders x modalities x folds x seeds in one command, ending with the comparison table and plots.

    Resumable: a run whose metrics.json exists is not redone, so an interrupted sweep continues where it stopped.
    Example (seed 002's protocol, reduced): sweep --encoders resnet18 --modalities av --folds 5 --seeds 0,1,2,3
    Seed 002's table: sweep --preset ladder-crema-d (ladder, its two ablations and resnet18 av concat; 5 folds x 4 seeds)
    """
    options = locals()  # every option by its name; those the sweep does not take itself are TrainConfig fields
    from encoders.study import sweep as run_sweep

    run_sweep(**options)


@command
def demo(out: Path = Demo.out, workers: int = Demo.workers) -> None:
    """End to end on a generated sample: corpus -> summary -> store -> trained vgg16 (re-runs reuse what exists)."""
    from encoders.demo import run_demo

    run_demo(out, workers)


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)  # the library prints; through a pipe too, each line shows when printed
    sys.exit(app())
