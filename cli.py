"""avstore's command line: preprocess an audio-visual emotion corpus once, train every encoder from the store.

Each command is a few lines over the library; choices come from the registries. Bad input gets one line
that names the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from pipeline.fuse import FUSIONS
from pipeline.corpora import CorpusError, get_corpus, list_corpora, load_corpus
from pipeline.splits import SplitError, assign_splits

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="avstore: an audio-visual emotion feature store. Extract once, train every encoder from the store.",
)

DATASETS_HELP = f"Corpus adapter: {', '.join(list_corpora())}."
FUSION_NAMES = sorted(FUSIONS)


def fail(message: str) -> None:
    """One line on stderr, exit code 2: the failure policy for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def load_records(dataset: str, root: Path, meta: Optional[Path], split_seed: int):
    try:
        get_corpus(dataset)
        return assign_splits(load_corpus(dataset, root, meta), seed=split_seed)
    except (CorpusError, SplitError) as err:
        fail(str(err))


@app.command()
def sample(
    out: Path = typer.Option(..., help="Folder to write the corpus into (CREMA-D layout)."),
    actors: int = typer.Option(8, min=3, help="Number of actors (at least 3, for train/val/test)."),
    sentences: int = typer.Option(2, min=1, max=12, help="Sentences per actor (each gets all 6 emotions)."),
    seed: int = typer.Option(0, help="Same seed, same bytes."),
    with_broken: bool = typer.Option(False, "--with-broken", help="Add a truncated file, a clip without audio, one without a face and a too-short one."),
) -> None:
    """Generate a small learnable corpus in CREMA-D's layout (FLV video + 16 kHz WAV)."""
    from pipeline.corpora.sample import write_sample_corpus

    if out.exists() and any(out.iterdir()):
        fail(f"'{out}' exists and is not empty; choose a new --out folder or delete it")
    ids = write_sample_corpus(out, actors=actors, sentences=sentences, seed=seed, with_broken=with_broken)
    typer.echo(f"wrote {len(ids)} clips to {out}")


@app.command()
def datasets() -> None:
    """List the corpus adapters."""
    for name in list_corpora():
        typer.echo(f"{name:10s} {get_corpus(name).description}")


@app.command()
def summary(
    dataset: str = typer.Option(..., help=DATASETS_HELP),
    root: Path = typer.Option(..., help="The corpus folder (for `manifest`: the CSV file)."),
    meta: Optional[Path] = typer.Option(None, help="CREMA-D metadata tables (VideoDemographics.csv, tabulatedVotes.csv)."),
    split_seed: int = typer.Option(0, help="Seed of the actor-disjoint split."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Clips per emotion and per split, and the clips known to be broken, without decoding anything."""
    records = load_records(dataset, root, meta, split_seed)
    print_summary(records, as_json)


def print_summary(records, as_json: bool = False) -> None:
    info = {
        "clips": len(records),
        "speakers": len({r.speaker for r in records}),
        "per_emotion": dict(sorted(Counter(r.emotion for r in records).items())),
        "per_split": {s: sum(r.split == s for r in records) for s in ("train", "val", "test")},
        "speakers_per_split": {s: len({r.speaker for r in records if r.split == s}) for s in ("train", "val", "test")},
        "broken": {r.clip_id: r.broken for r in records if r.broken},
    }
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"{info['clips']} clips, {info['speakers']} speakers")
    typer.echo("per emotion: " + "  ".join(f"{k} {v}" for k, v in info["per_emotion"].items()))
    typer.echo(
        "per split:   "
        + "  ".join(f"{s} {n} clips / {info['speakers_per_split'][s]} speakers" for s, n in info["per_split"].items())
        + "  (actor-disjoint)"
    )
    for clip_id, reason in info["broken"].items():
        typer.echo(f"broken:      {clip_id}: {reason}")



def default_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda asked for, but torch sees no CUDA GPU here; use --device cpu (or auto)")
    if device not in ("cpu", "cuda"):
        fail(f"unknown --device '{device}'; choose auto, cpu or cuda")
    return device


@app.command()
def extract(
    dataset: str = typer.Option(..., help=DATASETS_HELP),
    root: Optional[Path] = typer.Option(None, help="Corpus folder (default data/<dataset>; for `manifest`: the CSV)."),
    store: Optional[str] = typer.Option(None, help="Store path or URL (default stores/<dataset>.zarr)."),
    meta: Optional[Path] = typer.Option(None, help="CREMA-D metadata tables to join (demographics, perceived emotion)."),
    frames: int = typer.Option(16, min=1, help="T: face crops and spectrogram chunks per clip."),
    size: int = typer.Option(224, min=32, help="Side of every face crop and spectrogram image."),
    margin: float = typer.Option(0.2, min=0.0, help="Margin around the face box, as a fraction of its side."),
    detect_every: int = typer.Option(4, min=1, help="Run MTCNN on every n-th of the T frames (plus last and middle)."),
    sr: int = typer.Option(22050, help="Audio sample rate (Hz)."),
    n_fft: int = typer.Option(2048, help="STFT window."),
    hop: int = typer.Option(512, help="STFT hop."),
    n_mels: int = typer.Option(512, help="Mel bands (the study's slides: 512; its code: 128)."),
    fusion: list[str] = typer.Option(["concat"], help="Fused tensors to cache (repeat the option): " + ", ".join(FUSION_NAMES) + "."),
    workers: int = typer.Option(2, min=0, help="Local Dask worker processes (0: in this process, for debugging)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running dask.distributed scheduler (tcp://HOST:PORT)."),
    device: str = typer.Option("auto", help="MTCNN device: auto, cpu or cuda."),
    split_seed: int = typer.Option(0, help="Seed of the actor-disjoint train/val/test split stored with the clips."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    commit_every: int = typer.Option(32, min=1, help="Commit finished clips to the store this many at a time (32 = one shard)."),
) -> None:
    """Decode, detect faces, compute mel chunks and fusions once, into a Zarr store. Re-runs do only what is missing.

    Example: python cli.py extract --dataset crema-d --root data/crema-d --store stores/crema-d.zarr
    """
    from pipeline.audio import MelConfig
    from pipeline.faces import FaceConfig
    from pipeline.run import ExtractConfig, run_extract
    from stores.lock import StoreLockedError
    from stores.store import StoreError

    unknown = [f for f in fusion if f not in FUSION_NAMES]
    if unknown:
        fail(f"unknown fusion '{unknown[0]}'; choose from: {', '.join(FUSION_NAMES)}")
    root = root or Path("data") / dataset
    store = store or f"stores/{dataset}.zarr"
    device = default_device(device)
    records = load_records(dataset, root, meta, split_seed)
    class_names = list(get_corpus(dataset).class_names) or sorted({r.emotion for r in records}, key=lambda e: [r.label for r in records if r.emotion == e][0])
    config = ExtractConfig(
        faces=FaceConfig(frames=frames, size=size, margin=margin, detect_every=detect_every),
        mel=MelConfig(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels),
        fusions=tuple(dict.fromkeys(fusion)),
    )
    check_writable(store)
    try:
        result = run_extract(records, store, config, dataset=dataset, class_names=class_names, split_seed=split_seed,
                             workers=workers, scheduler=scheduler, device=device, progress=progress,
                             commit_every=commit_every)
    except (StoreLockedError, StoreError, ValueError) as err:
        fail(str(err))
    typer.echo(
        f"{result.clips} clips: {result.computed} processed (faces {result.faces_computed}, audio {result.audio_computed}), "
        f"{result.skipped} already done; "
        f"{result.fusions_computed} fused entries computed; {result.seconds:.1f} s, {result.clips_per_second:.2f} clips/s"
    )
    typer.echo("status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        typer.echo(f"  not ok: {clip_id}: {why}")
    typer.echo(f"store:  {store}  (feature sets: {', '.join(result.feature_sets)})")


def check_writable(store: str) -> None:
    """Refuse, before anything is written, a store location this user cannot write."""
    import os

    path = Path(store)
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK):
        fail(f"store '{store}' is read-only for this user; extract into a writable --store (consumers can still read this one)")


def open_store(store: str):
    from stores.store import FeatureStore, StoreError

    try:
        return FeatureStore.open(store)
    except StoreError as err:
        fail(str(err))


@app.command()
def info(
    store: str = typer.Option("stores/crema-d.zarr", help="Store path or URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What a store holds: clips by status, feature sets with parameters and fingerprints, arrays, bytes on disk."""
    from stores.inspect import describe_store

    description = describe_store(open_store(store))
    if as_json:
        typer.echo(json.dumps(description, indent=2, default=str))
        return
    typer.echo(f"store {store}: dataset {description['dataset']}, {description['clips']} clips, {description['bytes'] / 1e6:.1f} MB")
    typer.echo("splits: " + ", ".join(f"{k} {v}" for k, v in description["splits"].items()))
    for fs in description["feature_sets"]:
        typer.echo(f"\n{fs['name']}  (fingerprint {fs['fingerprint']}, made by {fs.get('made_by', '?')} at {fs.get('made_at', '?')})")
        typer.echo("  status: " + ", ".join(f"{k} {v}" for k, v in fs["status"].items()))
        typer.echo("  params: " + json.dumps(fs["params"], sort_keys=True))
        for name, a in fs["arrays"].items():
            typer.echo(f"  {name:14s} {str(tuple(a['shape'])):28s} {a['dtype']}")


@app.command()
def verify(store: str = typer.Option("stores/crema-d.zarr", help="Store path.")) -> None:
    """Re-hash every file against the checksums written at commit; exit 1 and name the damage if any."""
    from stores.integrity import CHECKSUMS, verify as verify_store

    open_store(store)
    if not (Path(store) / CHECKSUMS).is_file():
        fail(f"'{store}' has no {CHECKSUMS}; it was never committed by a finished extract run")
    damage = verify_store(Path(store))
    if damage:
        for d in damage:
            typer.echo(str(d))
        typer.echo(f"{len(damage)} damaged file(s) in {store}; re-extract the rows named above (delete those files, run extract again)")
        raise typer.Exit(code=1)
    typer.echo(f"{store}: every file matches its checksum")


DEMO_SIZE, DEMO_MELS = 112, 128
"""The demo keeps images small so it runs in a couple of minutes on two cores; the paper's 224/512 are the defaults."""


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="Working folder for the demo (corpus, store, runs)."),
    workers: int = typer.Option(2, min=0, help="Dask worker processes for extraction."),
) -> None:
    """End to end on a generated sample: corpus -> summary -> store (re-runs reuse what exists)."""
    from pipeline.audio import MelConfig
    from pipeline.corpora.sample import write_sample_corpus
    from pipeline.faces import FaceConfig
    from pipeline.run import ExtractConfig, run_extract

    corpus, store = out / "corpus", out / "sample.zarr"
    if not (corpus / "SAMPLE.json").is_file():
        typer.echo(f"[1/3] generating the sample corpus in {corpus}")
        write_sample_corpus(corpus, actors=8, sentences=2, seed=0, with_broken=True)
    else:
        typer.echo(f"[1/3] reusing the sample corpus in {corpus}")
    typer.echo("[2/3] corpus summary")
    records = load_records("sample", corpus, None, 0)
    print_summary(records)
    typer.echo(f"[3/3] extracting into {store} (size {DEMO_SIZE}, {DEMO_MELS} mel bands, fusion concat)")
    config = ExtractConfig(faces=FaceConfig(size=DEMO_SIZE), mel=MelConfig(n_mels=DEMO_MELS), fusions=("concat",))
    result = run_extract(records, store, config, dataset="sample", class_names=list(get_corpus("sample").class_names), workers=workers)
    typer.echo(f"      {result.computed} clips processed, {result.skipped} already done, {result.seconds:.1f} s")
    typer.echo("      status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        typer.echo(f"      not ok: {clip_id}: {why}")
    typer.echo(f"done. Inspect the store with: .venv/bin/python cli.py info --store {store}")


if __name__ == "__main__":
    sys.exit(app())
