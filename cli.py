"""avstore's command line: preprocess an audio-visual emotion corpus once, train every encoder from the store.

Each command is a few lines over the library; choices come from the registries. Bad input gets one line
that names the problem and the fix, and exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import typer

from pipeline.fuse import FUSIONS
from pipeline.corpora import CorpusError, class_list, get_corpus, list_corpora, load_corpus
from pipeline.labels import LabelError
from pipeline.splits import SplitError, assign_splits, corpus_splits

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="avstore: an audio-visual emotion feature store. Extract once, train every encoder from the store.",
)

DATASETS_HELP = f"Corpus adapter: {', '.join(list_corpora())}."
FUSION_NAMES = sorted(FUSIONS)
CLASSES_HELP = ("manifest only: its class list in label order, e.g. ANG,HAP,NEU,SAD (default: its labels' codes, "
                "alphabetical); needed for labels outside the emotion table (README).")


def fail(message: str) -> None:
    """One line on stderr, exit code 2: the failure policy for bad input."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def store_or_default(store: Optional[str], dataset: str = "crema-d") -> str:
    """--store as given, else the default store of `dataset` (data/stores/<dataset>.zarr, or the old default
    stores/<dataset>.zarr where only that exists, said once on stderr)."""
    if store:
        return store
    from stores.location import default_store

    store, note = default_store(dataset)
    if note:
        typer.echo(note, err=True)
    return store


def load_records(dataset: str, root: Path, meta: Optional[Path], split_seed: Optional[int], assign: bool = True,
                 classes: Optional[str] = None):
    """The corpus's records; `assign=False` leaves the split to the store (extract), keeping a corpus's own."""
    try:
        get_corpus(dataset)
        records = load_corpus(dataset, root, meta, classes)
        return assign_splits(records, seed=split_seed or 0) if assign else corpus_splits(records)
    except (CorpusError, SplitError, LabelError) as err:
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
    classes: Optional[str] = typer.Option(None, help=CLASSES_HELP),
) -> None:
    """Clips per emotion and per split, and the clips known to be broken, without decoding anything."""
    records = load_records(dataset, root, meta, split_seed, classes=classes)
    print_summary(records, as_json)


def print_summary(records, as_json: bool = False) -> None:
    from pipeline.votes import summarise as summarise_votes, summary_lines

    info = {
        "clips": len(records),
        "speakers": len({r.speaker for r in records}),
        "per_emotion": dict(sorted(Counter(r.emotion for r in records).items())),
        "per_split": {s: sum(r.split == s for r in records) for s in ("train", "val", "test")},
        "speakers_per_split": {s: len({r.speaker for r in records if r.split == s}) for s in ("train", "val", "test")},
        "broken": {r.clip_id: r.broken for r in records if r.broken},
        "perceived": summarise_votes(records),  # per modality: votes, agreement levels, raters' accuracy (pipeline/votes.py)
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
    for line in summary_lines(info["perceived"], info["clips"]):  # raters' votes, when the corpus has them
        typer.echo(line)



GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/kfd")  # NVIDIA's driver, AMD's ROCm


def default_device(device: str) -> str:
    """`auto` is cuda when torch sees a GPU. Without any GPU driver the answer is cpu without importing torch:
    that import costs seconds, and a run with nothing left to compute (a no-op re-run) should not pay it."""
    if device == "auto" and not any(Path(p).exists() for p in GPU_DRIVER_FILES):
        return "cpu"
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
    store: Optional[str] = typer.Option(None, help="Store path or URL (default data/stores/<dataset>.zarr)."),
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
    min_coverage: float = typer.Option(0.8, min=0.0, max=1.0, help="A clip whose face is in fewer of its T crops than this fraction is face_lost, not ok."),
    workers: int = typer.Option(2, min=0, help="Local Dask worker processes (0: in this process, for debugging: a bug raises with its traceback)."),
    scheduler: Optional[str] = typer.Option(None, help="Address of a running dask.distributed scheduler (tcp://HOST:PORT)."),
    device: str = typer.Option("auto", help="MTCNN device: auto, cpu or cuda."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the actor-disjoint split of a new store (default 0); an existing store keeps its own."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
    commit_every: int = typer.Option(32, min=1, help="Commit finished clips to the store this many at a time (32 = one shard)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Redo every clip that is not ok (clips whose source file changed are redone anyway)."),
    ffmpeg_timeout: float = typer.Option(120.0, min=0.1, help="Seconds decoding one clip may take; past it the clip is decode_error (timeout)."),
    lld: bool = typer.Option(False, "--lld", help="Also store ComParE_2016 LLD + delta sequences (130-d, 32 ms / 16 ms; seed 002), from the same decoded audio."),
    classes: Optional[str] = typer.Option(None, help=CLASSES_HELP),
    face_policy: str = typer.Option("largest", "--face-policy", help="Which face to follow, and to pick again after a cut or when it leaves: "
                                    "largest | central | steady (the one most consistent in position and size across the clip)."),
    scene: bool = typer.Option(False, "--scene", help="Also store each step's whole frame, letterboxed to --size (faces set array `scene`)."),
) -> None:
    """Decode, detect faces, compute mel chunks and fusions once, into a Zarr store. Re-runs do only what is missing.

    Exit code 0 when every clip is ok or has an expected media status (no_face, face_lost, no_audio,
    decode_error, too_short, too_long); 1 when a clip ended in `error` (a bug) or no clip is usable; 2 for bad input.

    Example: python cli.py extract --dataset crema-d --root data/crema-d --store data/stores/crema-d.zarr
    """
    started = time.perf_counter()  # the start-up printed below counts from here
    from pipeline.audio import MelConfig
    from pipeline.compare import LldConfig
    from pipeline.faces import FaceConfig
    from pipeline.run import ExtractConfig, run_extract
    from stores.location import LocationError
    from stores.lock import StoreLockedError
    from stores.store import StoreError

    from pipeline.tracking import FACE_POLICIES

    if face_policy not in FACE_POLICIES:
        fail(f"unknown --face-policy '{face_policy}'; choose one of {', '.join(FACE_POLICIES)}")
    unknown = [f for f in fusion if f not in FUSION_NAMES]
    if unknown:
        fail(f"unknown fusion '{unknown[0]}'; choose from: {', '.join(FUSION_NAMES)}")
    root = root or Path("data") / dataset
    store = store_or_default(store, dataset)
    device = default_device(device)
    records = load_records(dataset, root, meta, split_seed, assign=False, classes=classes)
    class_names, classes_declared = class_list(dataset, records, classes)
    config = ExtractConfig(
        faces=FaceConfig(frames=frames, size=size, margin=margin, detect_every=detect_every, min_coverage=min_coverage, policy=face_policy, scene=scene),
        mel=MelConfig(sample_rate=sr, n_fft=n_fft, hop_length=hop, n_mels=n_mels),
        fusions=tuple(dict.fromkeys(fusion)),
        ffmpeg_timeout=ffmpeg_timeout,
        lld=LldConfig() if lld else None,
    )
    check_writable(store)
    try:
        result = run_extract(records, store, config, dataset=dataset, class_names=class_names, split_seed=split_seed,
                             workers=workers, scheduler=scheduler, device=device, progress=progress,
                             commit_every=commit_every, retry_failed=retry_failed, started=started, classes_declared=classes_declared)
    except (StoreLockedError, StoreError, LocationError, SplitError, LabelError, PermissionError) as err:  # our own checks of the input
        fail(str(err))
    except KeyboardInterrupt:
        extract_interrupted(store, config, len(records))
    for line in result.changes:  # labels or speakers the corpus corrected, classes new to the store
        typer.echo(line)
    typer.echo(
        f"{result.clips} clips: {result.computed} processed (faces {result.faces_computed}, audio {result.audio_computed}"
        f"{f', lld {result.lld_computed}' if lld else ''}), "
        f"{result.retried} of them redone (source changed or --retry-failed), {result.skipped} already done; "
        f"{result.fusions_computed} fused entries computed; {result.seconds:.1f} s, {result.clips_per_second:.2f} clips/s"
        + (f" (first clip after {result.timings['first_clip']:.1f} s: start-up)" if "first_clip" in result.timings else "")
    )
    typer.echo("status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        typer.echo(f"  not ok: {clip_id}: {why}")
    typer.echo(f"store:  {store}  (feature sets: {', '.join(result.feature_sets)})")
    from stores.splits import missing_split
    from stores.store import FeatureStore

    table = FeatureStore.open(store).clip_table()
    no_split = missing_split([str(s) for s in table["speaker"]], [str(p) for p in table["split"]], store)
    if no_split:  # one or two videos: extracted, but `train` needs a split first
        typer.echo(f"splits: {no_split}")
    if result.files_hashed:
        typer.echo(f"checksums: {result.files_hashed} files hashed (only what this run wrote, when the last list was current)")
    code, verdict = result.verdict()
    typer.echo(verdict)
    if code:
        raise typer.Exit(code=code)


def extract_interrupted(store: str, config, n_records: int) -> None:
    """Ctrl-C: one line saying what is kept and how to go on, exit 130 (the shell's code for SIGINT).
    The writer finished the batch it held, so every clip counted is whole; the rest are redone by a re-run."""
    from pipeline.run import committed_clips

    done, clips = committed_clips(store, config)
    typer.echo(f"interrupted: {done} of {clips or n_records} clips committed in {store}; re-run the same command to resume "
               "(committed clips are kept; until then train refuses this store)", err=True)
    raise typer.Exit(code=130)


@app.command()
def embed(
    store: Optional[str] = typer.Option(None, help="Store path or URL, extracted already (default data/stores/crema-d.zarr)."),
    backbone: str = typer.Option("vgg16", help="vgg16 (fc7, 4096-d, ImageNet input), vggface (the same, VGG-Face's BGR input) or facenet (InceptionResnetV1, 512-d)."),
    weights: Optional[Path] = typer.Option(None, help="State dict of the backbone (torch.save); without it: random init, recorded and flagged."),
    size: Optional[int] = typer.Option(None, min=32, help="Input side the crops are resized to (default: the backbone's, 224 / 160)."),
    batch_size: int = typer.Option(64, min=1, help="Frames per forward pass."),
    faces: Optional[str] = typer.Option(None, help="Faces feature-set fingerprint, when the store holds several."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Per-frame face embeddings of the stored crops from a frozen backbone (seed 002's visual input); no video decoded.

    Example: python cli.py embed --store data/stores/crema-d.zarr --backbone vggface --weights vgg_face.pt
    """
    store = store_or_default(store)
    from encoders.embed import EmbedConfig, run_embed
    from stores.location import LocationError
    from stores.lock import StoreLockedError
    from stores.store import StoreError, store_exists

    if not store_exists(store):
        fail(f"no store at '{store}'; make it with `python cli.py extract --store {store} ...` first")
    check_writable(store)
    try:
        made, n = run_embed(store, EmbedConfig(backbone=backbone, size=size, batch_size=batch_size), weights=weights,
                            device=default_device(device), faces_fingerprint=faces, progress=progress)
    except (StoreLockedError, StoreError, LocationError, PermissionError) as err:
        fail(str(err))
    status = Counter(made.status()[made.done()].tolist())
    typer.echo(f"{n} clips embedded into {made.name} ({made.params['backbone']} {made.params['layer']}, {made.params['dim']}-d, "
               f"weights {made.params['weights']}); status: " + ", ".join(f"{k} {v}" for k, v in sorted(status.items())))
    if made.params["random_init"]:
        typer.echo("warning: no --weights: the backbone is randomly initialised; runs that read these embeddings are flagged")


def local_store_writable(store: str) -> bool:
    """Whether this user may write the local store location `store` (False for URLs: see check_writable).

    A local folder with no write bit at all (a published store, chmod a-w) counts as read-only even for
    root, who could write it anyway."""
    from stores.location import LocationError, locate

    try:
        where = locate(store)
    except LocationError as err:
        fail(str(err))
    if not where.is_local:
        return False
    path = where.local_path
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    return os.access(probe, os.W_OK) and not (path.exists() and not path.stat().st_mode & 0o222)


def check_writable(store: str) -> None:
    """Refuse, before anything is written, a store location this user cannot write.

    A remote store's permissions are only known by trying: the writer lock, the first thing extract writes,
    turns a denied PUT into the same one-line refusal."""
    from stores.location import LocationError, locate

    try:
        local = locate(store).is_local
    except LocationError as err:
        fail(str(err))
    if local and not local_store_writable(store):
        fail(f"store '{store}' is read-only for this user; extract into a writable --store (consumers can still read this one)")


def open_store(store: str):
    from stores.location import LocationError
    from stores.store import FeatureStore, StoreError

    try:
        return FeatureStore.open(store)
    except (StoreError, LocationError) as err:
        fail(str(err))
    except OSError as err:  # e.g. a bucket these credentials may not read
        unreadable(f"store '{store}'", err)


def check_finished_store(store: str, allow_partial: bool) -> None:
    """Refuse a store being written or never finished (stores/state.py); with --allow-partial, warn once."""
    from stores.state import PartialStoreError, check_finished

    try:
        state = check_finished(store, allow_partial=allow_partial)
    except PartialStoreError as err:
        fail(str(err))
    except OSError as err:
        unreadable(f"store '{store}'", err)
    if state.finished:
        return
    typer.echo(f"warning: {state.message()}; --allow-partial: training on the clips committed so far "
               "(recorded in metrics.json and train.log)", err=True)


def unreadable(what: str, err: OSError) -> None:
    """A store that exists but can't be read (permissions, network): one line, not a traceback."""
    fail(f"cannot read {what} ({type(err).__name__}: {err}); check the path or URL and the credentials (AWS_* variables)")


@app.command()
def info(
    store: Optional[str] = typer.Option(None, help="Store path or URL (default data/stores/crema-d.zarr)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What a store holds: clips by status, feature sets with parameters and fingerprints, arrays, bytes on disk."""
    store = store_or_default(store)
    from stores.diff import describe_environment
    from stores.inspect import describe_store

    try:
        description = describe_store(open_store(store))
    except OSError as err:
        unreadable(f"store '{store}'", err)
    if as_json:
        typer.echo(json.dumps(description, indent=2, default=str))
        return
    typer.echo(f"store {store}: dataset {description['dataset']}, {description['clips']} clips, {description['bytes'] / 1e6:.1f} MB")
    typer.echo("splits: " + ", ".join(f"{k} {v}" for k, v in description["splits"].items()))
    for fs in description["feature_sets"]:
        typer.echo(f"\n{fs['name']}  (fingerprint {fs['fingerprint']}, made by {fs.get('made_by', '?')} at {fs.get('made_at', '?')})")
        typer.echo("  status: " + ", ".join(f"{k} {v}" for k, v in fs["status"].items()))
        typer.echo("  params: " + json.dumps(fs["params"], sort_keys=True))
        for env in fs["numeric"]:
            typer.echo(f"  computed on: {describe_environment(env)}")
        for name, a in fs["arrays"].items():
            typer.echo(f"  {name:14s} {str(tuple(a['shape'])):28s} {a['dtype']}")


@app.command()
def verify(store: Optional[str] = typer.Option(None, help="Store path or URL (default data/stores/crema-d.zarr).")) -> None:
    """Re-hash every file against the checksums written at commit; exit 1 and name the damage if any."""
    store = store_or_default(store)
    from stores.integrity import CHECKSUMS, has_checksums, verify as verify_store

    open_store(store)
    if not has_checksums(store):
        fail(f"'{store}' has no {CHECKSUMS}; it was never committed by a finished extract run")
    try:
        damage = verify_store(store)
    except OSError as err:
        unreadable(f"store '{store}'", err)
    if damage:
        for d in damage:
            typer.echo(str(d))
        typer.echo(f"{len(damage)} damaged file(s) in {store}; re-extract the rows named above (delete those files, run extract again)")
        raise typer.Exit(code=1)
    typer.echo(f"{store}: every file matches its checksum")


@app.command()
def publish(
    store: str = typer.Option(..., help="The finished store to publish (path or URL)."),
    to: str = typer.Option(..., help="Where to publish it (path or URL); must not exist yet."),
) -> None:
    """Copy a finished store to a shared place, verify it there, and make it visible only once complete.

    Example: python cli.py publish --store data/stores/crema-d.zarr --to s3://lab-features/crema-d.zarr
    """
    from stores.location import LocationError
    from stores.publish import PublishError, publish as publish_store

    try:
        done = publish_store(store, to)
    except (PublishError, LocationError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"publishing '{store}' to '{to}' failed ({type(err).__name__}: {err}); check both locations and the credentials")
    typer.echo(f"published {store} -> {done.dest}: {done.files} files, {done.bytes / 1e6:.1f} MB, checksums verified on arrival")


@app.command()
def diff(
    store_a: str = typer.Argument(..., help="First store (path or URL)."),
    store_b: str = typer.Argument(..., help="Second store (path or URL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    tolerance: int = typer.Option(0, "--tolerance", metavar="ULPS",
                                  help="Accept numeric arrays that differ by at most this many ulps (units for integer images)."),
) -> None:
    """Compare two stores by content (feature sets, parameters, clips, committed arrays); provenance is ignored.

    Exit 0 and "no difference" when identical in content, exit 1 when they differ (like `diff`). Bit-identical is
    the default verdict; where numeric arrays differ, the largest difference is shown in ulps and in absolute units,
    beside the numeric environment (CPU, BLAS kernels) of each side. Stores made on different CPU architectures
    may differ by rounding: `--tolerance 1` accepts one ulp.
    """
    from stores.diff import diff_stores

    if tolerance < 0:
        fail(f"--tolerance must be 0 or more ulps, not {tolerance}")
    for store in (store_a, store_b):
        open_store(store)
    try:
        result = diff_stores(store_a, store_b, tolerance=tolerance)
    except OSError as err:
        unreadable(f"stores '{store_a}' and '{store_b}'", err)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2, default=str))
    else:
        for line in result.lines():
            typer.echo(line)
    if not result.identical:
        raise typer.Exit(code=1)


@app.command()
def preview(
    store: str = typer.Option(..., help="Store path or URL (read only)."),
    out: Path = typer.Option(Path("preview.png"), help="The PNG contact sheet to write."),
    clips: int = typer.Option(16, min=1, help="How many clips to show (not-ok and low face coverage first)."),
    status: list[str] = typer.Option([], help="Only clips with this faces or audio status (repeat the option), e.g. face_lost."),
) -> None:
    """A PNG contact sheet: per clip a few face crops beside their spectrogram chunks, labelled with the clip
    id, status, face coverage and split. Clips most likely to be wrong come first.

    Example: python cli.py preview --store data/stores/crema-d.zarr --out preview.png --status face_lost
    """
    from pipeline.extract import STATUSES
    from stores.preview import write_preview

    unknown = [s for s in status if s not in STATUSES]
    if unknown:
        fail(f"unknown --status '{unknown[0]}'; choose from: {', '.join(STATUSES)}")
    open_store(store)
    try:
        shown = write_preview(store, out, clips=clips, statuses=tuple(status))
    except LookupError as err:
        fail(f"{err} (store '{store}')")
    except OSError as err:
        unreadable(f"store '{store}'", err)
    typer.echo(f"wrote {out}: {len(shown)} clips" + (f", first {shown[0].clip_id} ({shown[0].status}, face coverage {shown[0].coverage:.2f})" if shown else ""))


def encoder_names() -> list[str]:
    from encoders.registry import list_models

    return list_models()


def train_config(encoder: str, modality: Optional[str], fusion: Optional[str], **options):
    """Resolve the defaults a user expects: pair models fuse themselves; unimodal runs take no fusion."""
    from encoders.registry import UnknownEncoderError, get_spec
    from encoders.train import TrainConfig
    from stores.torchdata import recipe_for

    try:
        spec = get_spec(encoder)
    except UnknownEncoderError as err:
        fail(str(err))
    kind = spec.input_kind
    modality = modality or "av"
    if kind == "sequences":  # seed 002's ladder: it reads the LLD and embedding sequences, and fuses itself
        if modality != "av" or fusion not in (None, "none"):
            fail(f"encoder {encoder} is audiovisual and fuses itself; use --modality av and no --fusion")
        return TrainConfig(encoder=encoder, modality="av", fusion="none", **options)
    if fusion is None:
        fusion = "none" if kind.startswith("pair") or modality != "av" else "concat"
    try:
        recipe_for(kind, modality, fusion, square_only=spec.square_input)
    except ValueError as err:
        fail(f"encoder {encoder}: {err}")
    return TrainConfig(encoder=encoder, modality=modality, fusion=fusion, **options)


def ladder_options(labelled_fraction: float, noise: float, lambdas: str, cross_skips: bool, reconstruction: bool,
                   lld: Optional[str] = None, embed: Optional[str] = None, combinator: str = "vanilla") -> dict:
    """TrainConfig fields from the ladder's flags, checked here so bad input never reaches the store. The ladder's
    own settings go to `encoder_options` (its LadderConfig), only those that differ from its defaults: the same
    run is recorded the same way by `train` and by a preset, and another encoder given one is refused."""
    import dataclasses

    from encoders.ladder import LadderConfig

    if not 0.0 < labelled_fraction <= 1.0:
        fail(f"--labelled-fraction {labelled_fraction:g} is outside (0, 1]; give e.g. 0.5 for half the training clips labelled")
    try:
        values = tuple(float(v) for v in lambdas.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 0 or noise < 0:
        fail(f"--lambdas '{lambdas}' / --noise {noise:g}: give non-negative numbers, e.g. --lambdas 1,1,0.1 --noise 0.3")
    given = dict(noise=noise, lambdas=values, cross_skips=cross_skips, reconstruction=reconstruction, combinator=combinator)
    defaults = dataclasses.asdict(LadderConfig())
    return dict(labelled_fraction=labelled_fraction, lld=lld, embed=embed,
                encoder_options={k: v for k, v in given.items() if v != defaults[k]})


def run_training(store: str, config, out: Path, progress: bool = True, allow_partial: bool = False) -> dict:
    """Train; a fusion the store lacks is first derived from its stored crops and chunks, and cached."""
    from encoders.train import MissingFusionError, train
    from stores.location import LocationError
    from stores.splits import SplitError
    from stores.store import StoreError

    for attempt in range(2):
        try:
            return train(store, config, out, progress=progress, allow_partial=allow_partial)
        except MissingFusionError as err:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                fail(f"{err} first; under torchrun the ranks cannot derive it themselves")
            if attempt or not local_store_writable(store):
                fail(f"{err} (this store is read-only for you: ask its owner, or copy it)")
            typer.echo(f"deriving fusion '{err.fusion}' from the stored faces and audio (no decoding) ...", err=True)
            derive_missing_fusion(store, config, err.fusion)
        except (StoreError, SplitError, LocationError) as err:  # our own checks; any other ValueError is a bug and shows its traceback
            fail(str(err))
    raise AssertionError("unreachable")


def derive_missing_fusion(store: str, config, fusion: str) -> None:
    from pipeline.run import derive_fusion
    from stores.lock import StoreLockedError
    from stores.store import FeatureStore
    from stores.torchdata import select_feature_sets

    faces, audio = select_feature_sets(FeatureStore.open(store), config.faces, config.audio)
    try:
        derive_fusion(store, fusion, faces.fingerprint, audio.fingerprint)
    except StoreLockedError as err:
        fail(str(err))


def print_metrics(metrics: dict, out: Path) -> None:
    test = metrics["test"]
    typer.echo(
        f"{metrics['encoder']} {metrics['modality']} {metrics['fusion']} seed {metrics['seed']}: best epoch {metrics['best_epoch']} (by validation UAR); "
        f"test accuracy (WAR) {test['accuracy']:.3f}, UAR {test['uar']:.3f}, macro-F1 {test['macro_f1']:.3f} on {test['n']} clips"
    )
    typer.echo("  per-class recall: " + "  ".join(f"{k} {v['recall']:.2f}" for k, v in test["per_class"].items()))
    print_targets(metrics.get("targets"))
    typer.echo(f"  run directory: {out} (metrics.json, model.pt, learning_curve.png, confusion_test.png, train.log)")


def print_targets(targets: Optional[dict]) -> None:
    """The run scored against the intended and the three perceived targets, and the raters (encoders/targets.py)."""
    from encoders.targets import target_lines

    for line in target_lines(targets or {}):
        typer.echo(line)


@app.command()
def encoders() -> None:
    """List the encoders (the registry) with what they read."""
    from encoders.registry import get_spec

    for name in encoder_names():
        spec = get_spec(name)
        typer.echo(f"{name:10s} {spec.input_kind:11s} {spec.description}")


@app.command()
def train(
    encoder: str = typer.Option(..., help="Encoder name; `python cli.py encoders` lists them."),
    fusion: Optional[str] = typer.Option(None, help="concat, concat224, stack, sum (2D/3D), ffls, fslf, ofos, rfas (3D), or none (unimodal, xattn, late). Default: concat for av, none otherwise."),
    modality: Optional[str] = typer.Option(None, help="audio, vision or av (default av)."),
    store: Optional[str] = typer.Option(None, help="Store path or URL, opened read-only (default data/stores/crema-d.zarr)."),
    epochs: int = typer.Option(20, min=1),
    max_steps: Optional[int] = typer.Option(None, min=1, help="Stop after this many optimiser steps (a benchmark or a smoke test); the run is still evaluated and written."),
    batch_size: int = typer.Option(16, min=1),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default: the encoder's)."),
    seed: int = typer.Option(0, help="Seed of initialisation and batch order (recorded)."),
    split_seed: Optional[int] = typer.Option(None, help="Re-derive the actor-disjoint split with this seed (default: the store's split)."),
    fold: Optional[int] = typer.Option(None, help="k-fold cross-validation by actor: test on fold K (0-based), validate on 15/85 of the other speakers, train on the rest."),
    folds: int = typer.Option(5, min=3, help="Number of actor folds for --fold."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start from the library's pretrained weights (needs them cached or network access)."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<encoder>-<modality>-<fusion>-seed<seed>); must not exist."),
    faces: Optional[str] = typer.Option(None, help="Faces feature-set fingerprint, when the store holds several."),
    audio: Optional[str] = typer.Option(None, help="Audio feature-set fingerprint, when the store holds several."),
    max_memory_gb: Optional[float] = typer.Option(None, help="Load the splits into memory up to this size; stream from the store beyond it (default: half the available RAM per rank; on CPU at most 0.5 GB)."),
    loader_workers: Optional[int] = typer.Option(None, help="Processes reading a streamed split (0: in the training process; default: from the CPU count)."),
    amp: str = typer.Option("auto", help="Mixed precision: auto (bf16 on CUDA), bf16 or off."),
    compile: str = typer.Option("auto", help="torch.compile: auto (CUDA, models of 5M+ parameters), on or off."),
    fuse_on_device: bool = typer.Option(False, "--fuse-on-device", help="Build concat/stack from the stored faces and audio on the device (reads 4/6 of the bytes)."),
    include_broken: bool = typer.Option(False, "--include-broken", help="Also train on ok clips the corpus documents as broken (left out by default; the log says how many)."),
    target: str = typer.Option("intended", help="What to learn: intended (the actor's emotion) or what raters perceived: perceived-voice, perceived-face, perceived-av."),
    labels: str = typer.Option("hard", help="hard: the raters' majority (ties: a seeded hash); soft: cross-entropy to the vote distribution (perceived targets)."),
    labelled_fraction: float = typer.Option(1.0, help="Share of the training clips that keep their label, in (0, 1] (seeded, per class); the ladder trains its reconstructions on the rest, other encoders leave them out."),
    noise: float = typer.Option(0.3, help="ladder: SD of the Gaussian noise of the noisy pass."),
    lambdas: str = typer.Option("1", help="ladder: λ_l per depth from the input up, comma-separated; the last repeats."),
    cross_skips: bool = typer.Option(True, help="ladder: skips from one modality's encoder to the other's decoder (--no-cross-skips: ablation)."),
    reconstruction: bool = typer.Option(True, help="ladder: the unsupervised reconstruction loss (--no-reconstruction: ablation)."),
    combinator: str = typer.Option("vanilla", help="ladder: how a decoder layer joins its lateral skip: vanilla (Rasmus et al., per unit) or dense."),
    lld: Optional[str] = typer.Option(None, help="ladder: LLD feature-set fingerprint, when the store holds several."),
    embed: Optional[str] = typer.Option(None, help="ladder: embedding feature-set fingerprint, when the store holds several."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Train on a store that is being written or was never finished (refused otherwise); the run records how many clips it used."),
) -> None:
    """Train one encoder from the store; the best validation epoch is tested once.

    Example: python cli.py train --encoder vgg16 --fusion concat --store data/stores/crema-d.zarr
    """
    store = store_or_default(store)
    config = train_config(encoder, modality, fusion, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed, split_seed=split_seed, fold=fold, folds=folds,
                          device=default_device(device), pretrained=pretrained, faces=faces, audio=audio,
                          max_memory_gb=max_memory_gb, loader_workers=loader_workers, amp=amp, compile=compile, fuse_on_device=fuse_on_device,
                          include_broken=include_broken, target=target, labels=labels,
                          **ladder_options(labelled_fraction, noise, lambdas, cross_skips, reconstruction, lld, embed, combinator))
    try:
        config.resolved()  # bad options fail here, before any run directory or store access
    except ValueError as err:
        fail(str(err))
    fold_name = f"-fold{fold}of{folds}" if fold is not None else ""
    target_name = "" if target == "intended" else f"-{target}-{labels}"  # runs of different targets never share a folder
    out = out or Path("runs") / f"{config.encoder}-{config.modality}-{config.fusion}-seed{seed}{fold_name}{target_name}"
    if fold is not None and not 0 <= fold < folds:
        fail(f"--fold {fold} is outside 0..{folds - 1} for --folds {folds}; pick a fold in that range")
    if out.exists() and os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 creates it
        if not (out / "metrics.json").is_file():  # runs now write elsewhere until they finish (encoders/train.py)
            fail(f"run directory '{out}' exists but holds no metrics.json (a failed attempt, or not a run); delete it (rm -r '{out}') or pass another --out")
        fail(f"run directory '{out}' exists; pass another --out or delete it")
    open_store(store)
    check_finished_store(store, allow_partial)
    metrics = run_training(store, config, out, progress, allow_partial=allow_partial)
    if metrics:  # under torchrun, rank 0 alone reports
        print_metrics(metrics, out)


@app.command()
def evaluate(
    run: Path = typer.Option(..., help="A run directory written by `train`."),
    ablate: Optional[str] = typer.Option(None, help="Zero one modality of a multimodal model: audio or vision."),
    store: Optional[str] = typer.Option(None, help="Read the store from here instead of where the run found it."),
) -> None:
    """Re-evaluate a run on its test split; --ablate gives the study's "ablated" rows."""
    from encoders.train import evaluate_run
    from stores.store import StoreError

    if not (run / "metrics.json").is_file() or not (run / "model.pt").is_file():
        fail(f"'{run}' is not a finished run directory (needs metrics.json and model.pt)")
    try:
        report = evaluate_run(run, ablation=ablate, store=store)
    except (StoreError, ValueError) as err:
        fail(str(err))
    for note in report.get("warnings", []):
        typer.echo(f"warning: {note}", err=True)
    test = report["test"]
    typer.echo(f"{report['encoder']} {report['modality']} {report['fusion']}{' ablated ' + ablate if ablate else ''}: "
               f"test accuracy {test['accuracy']:.3f}, UAR {test['uar']:.3f}, macro-F1 {test['macro_f1']:.3f}")
    print_targets(report.get("targets"))


@app.command()
def report(
    runs: Path = typer.Option(Path("runs"), help="Folder holding run directories."),
    out: Optional[Path] = typer.Option(None, help="Where to write comparison.md/.csv/.png (default: RUNS/report)."),
    compare: Optional[tuple[str, str]] = typer.Option(
        None, "--compare", metavar="A B",
        help="Test configuration A against B with folds as replicates (seeds averaged within a fold), e.g. "
             "--compare encoder=ladder encoder=resnet18,modality=av: corrected resampled t-test, Holm over --metric, "
             "speaker-bootstrap 95 % CI. Refused (exit 2) when the runs were tested on different clips."),
    metric: str = typer.Option("accuracy,uar,macro_f1", help="Test metric(s) --compare tests, comma-separated; Holm corrects over them."),
    alternative: str = typer.Option("two-sided", help="--compare's H1: two-sided, or greater (A > B) / less (A < B) for a direction stated in advance."),
) -> None:
    """The paper's comparison table (mean ± sd over folds, or over seeds without --fold) as Markdown and CSV, per-class
    sections, averaged confusion matrices and bar plots.

    Runs are grouped by every configuration field that differs between them (encoder, modality, fusion, pretrained,
    epochs, lr, the store's feature sets, ...); n is shown beside each mean.
    """
    from encoders.report import collect_runs, write_report
    from encoders.significance import CompareError, compare_metrics

    if not runs.is_dir() or not any(runs.rglob("metrics.json")):
        fail(f"'{runs}' holds no run directories with metrics.json; train something first")
    if compare:
        try:
            results = compare_metrics(collect_runs(runs), *compare, metrics=[m.strip() for m in metric.split(",") if m.strip()], alternative=alternative)
        except CompareError as err:
            fail(str(err))
        folder = out or runs / "report"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "compare.json").write_text(json.dumps([r.as_dict() for r in results], indent=2))
        for result in results:
            for line in result.lines():
                typer.echo(line)
            typer.echo("")
        typer.echo(f"written: {folder / 'compare.json'}")
        return
    paths = write_report(runs, out or runs / "report")
    typer.echo(paths["markdown"].read_text())
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()))


@app.command()
def sweep(
    store: Optional[str] = typer.Option(None, help="Store path or URL (default data/stores/crema-d.zarr)."),
    encoders: Optional[str] = typer.Option(None, help="Comma-separated encoders (default resnet18,simple3d)."),
    modalities: Optional[str] = typer.Option(None, help="Comma-separated modalities (default audio,vision,av)."),
    seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds (default 0,1; a preset's own otherwise)."),
    folds: Optional[int] = typer.Option(None, min=3, help="k-fold cross-validation by actor: run every fold of N (default: the stored split only, or a preset's folds)."),
    preset: Optional[str] = typer.Option(None, help="Run a study's table instead of encoders x modalities: ladder-crema-d (seed 002)."),
    split_seed: Optional[int] = typer.Option(None, help="Re-derive the actor-disjoint split (or folds) with this seed."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate for every run (default: each encoder's)."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Start every encoder from its pretrained weights."),
    fusion: str = typer.Option("concat", help="Fusion of the av runs of 2D/3D encoders."),
    epochs: int = typer.Option(20, min=1),
    batch_size: int = typer.Option(16, min=1),
    device: str = typer.Option("auto"),
    out: Path = typer.Option(Path("runs/sweep"), help="Folder for the runs and the report."),
    progress: bool = typer.Option(True),
    allow_partial: bool = typer.Option(False, "--allow-partial", help="Train on a store that is being written or was never finished (refused otherwise); each run records how many clips it used."),
) -> None:
    """Encoders x modalities x folds x seeds in one command, ending with the comparison table and plots.

    Resumable: a run whose metrics.json exists is not redone, so an interrupted sweep continues where it stopped.
    Example (seed 002's protocol, reduced): sweep --encoders resnet18 --modalities av --folds 5 --seeds 0,1,2,3
    Seed 002's table: sweep --preset ladder-crema-d (ladder, its two ablations and resnet18 av concat; 5 folds x 4 seeds)
    """
    store = store_or_default(store)
    study = preset_spec(preset, given=[n for n, v in (("--encoders", encoders), ("--modalities", modalities)) if v]) if preset else None
    open_store(store)
    check_finished_store(store, allow_partial)
    common = dict(epochs=epochs, batch_size=batch_size, device=default_device(device), lr=lr, pretrained=pretrained, split_seed=split_seed)
    if study:
        run_preset(store, study, seeds, folds, common, out, progress, allow_partial)
        return
    seed_list = parse_seeds(seeds or "0,1")
    plan = []
    for encoder in [e.strip() for e in (encoders or "resnet18,simple3d").split(",") if e.strip()]:
        for modality in [m.strip() for m in (modalities or "audio,vision,av").split(",") if m.strip()]:
            pair = encoder in encoder_names() and get_spec_kind(encoder).startswith(("pair", "sequences"))  # fuses itself
            if pair and modality != "av":
                continue  # a fusion model has no unimodal form
            for fold in (range(folds) if folds else [None]):
                for seed in seed_list:
                    config = train_config(encoder, modality, None if pair or modality != "av" else fusion, seed=seed, fold=fold,
                                          folds=folds or 5, **common)
                    fold_name = "" if fold is None else f"-fold{fold}of{folds}"
                    plan.append((config, out / f"{config.encoder}-{config.modality}-{config.fusion}-seed{seed}{fold_name}"))
    run_plan(store, plan, progress, allow_partial)
    from encoders.report import write_report

    paths = write_report(out, out / "report")
    typer.echo(paths["markdown"].read_text())
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()))


def parse_seeds(seeds: str) -> list[int]:
    try:
        return [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        fail(f"--seeds '{seeds}' must be comma-separated integers, e.g. 0,1,2")


def get_spec_kind(encoder: str) -> str:
    from encoders.registry import get_spec

    return get_spec(encoder).input_kind


def run_plan(store: str, plan: list, progress: bool, allow_partial: bool = False) -> None:
    """Train every (config, run folder) of `plan` whose metrics.json is missing; a finished run is kept, unless it was
    made with another configuration than planned (refused: the table would mix them)."""
    import dataclasses

    from encoders.study import stale_fields

    for config, run_dir in plan:
        metrics_file = run_dir / "metrics.json"
        if metrics_file.is_file():
            stale = stale_fields(dataclasses.asdict(config), json.loads(metrics_file.read_text()).get("config", {}))
            if stale:
                fail(f"'{run_dir}' was made with {', '.join(stale)}; use another --out, or delete that run to redo it")
    for k, (config, run_dir) in enumerate(plan, 1):
        if (run_dir / "metrics.json").is_file():
            typer.echo(f"[{k}/{len(plan)}] {run_dir.name}: done already")
            continue
        shutil.rmtree(run_dir, ignore_errors=True)
        typer.echo(f"[{k}/{len(plan)}] {run_dir.name}")
        print_metrics(run_training(store, config, run_dir, progress, allow_partial), run_dir)


def preset_spec(name: str, given: list[str]):
    from encoders.study import StudyError, get_preset

    try:
        spec = get_preset(name)
    except StudyError as err:
        fail(str(err))
    if given:
        fail(f"--preset {name} fixes the configurations; drop {' and '.join(given)}")
    return spec


def run_preset(store: str, spec, seeds: Optional[str], folds: Optional[int], common: dict, out: Path, progress: bool,
               allow_partial: bool = False) -> None:
    """A study's table: every arm of the preset over folds x seeds (the preset's unless given), then its table."""
    from encoders.report import collect_runs
    from encoders.study import write_study

    seed_list = parse_seeds(seeds) if seeds else list(spec.seeds)
    folds = folds or spec.folds
    plan, arm_dirs = [], {}
    for arm in spec.arms:
        for fold in range(folds):
            for seed in seed_list:
                config = train_config(arm.encoder, arm.modality, arm.fusion, seed=seed, fold=fold, folds=folds, **common, **dict(arm.options))
                run_dir = out / f"{arm.slug}-seed{seed}-fold{fold}of{folds}"
                plan.append((config, run_dir))
                arm_dirs.setdefault(arm.slug, []).append(run_dir)
    typer.echo(f"preset {spec.name}: {len(spec.arms)} configurations x {folds} folds x {len(seed_list)} seeds = {len(plan)} runs")
    run_plan(store, plan, progress, allow_partial)
    paths = write_study(spec, {slug: [run for d in dirs for run in collect_runs(d)] for slug, dirs in arm_dirs.items()}, out / "report")
    typer.echo(paths["markdown"].read_text())
    typer.echo("written: " + ", ".join(str(p) for p in paths.values()))


DEMO_SIZE, DEMO_MELS, DEMO_EPOCHS, DEMO_BATCH = 64, 64, 10, 8
"""The demo keeps images small so it runs in a couple of minutes on two cores; the paper's 224/512 are the defaults."""


@app.command()
def demo(
    out: Path = typer.Option(Path("demo"), help="Working folder for the demo (corpus, store, runs)."),
    workers: int = typer.Option(2, min=0, help="Dask worker processes for extraction."),
) -> None:
    """End to end on a generated sample: corpus -> summary -> store -> trained vgg16 (re-runs reuse what exists)."""
    from pipeline.audio import MelConfig
    from pipeline.corpora.sample import write_sample_corpus
    from pipeline.faces import FaceConfig
    from pipeline.run import ExtractConfig, run_extract

    corpus, store = out / "corpus", out / "sample.zarr"
    if not (corpus / "SAMPLE.json").is_file():
        typer.echo(f"[1/4] generating the sample corpus in {corpus}")
        write_sample_corpus(corpus, actors=8, sentences=2, seed=0, with_broken=True)
    else:
        typer.echo(f"[1/4] reusing the sample corpus in {corpus}")
    typer.echo("[2/4] corpus summary")
    records = load_records("sample", corpus, None, 0)
    print_summary(records)
    typer.echo(f"[3/4] extracting into {store} (size {DEMO_SIZE}, {DEMO_MELS} mel bands, fusion concat)")
    config = ExtractConfig(faces=FaceConfig(size=DEMO_SIZE), mel=MelConfig(n_mels=DEMO_MELS), fusions=("concat",))
    result = run_extract(records, store, config, dataset="sample", class_names=list(get_corpus("sample").class_names), workers=workers)
    typer.echo(f"      {result.computed} clips processed, {result.skipped} already done, {result.seconds:.1f} s")
    typer.echo("      status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        typer.echo(f"      not ok: {clip_id}: {why}")
    run = out / "runs" / "vgg16-av-concat-seed0"
    typer.echo(f"[4/4] training vgg16 on the concat fusion for {DEMO_EPOCHS} epochs (CPU: a few minutes) into {run}")
    if (run / "metrics.json").is_file():
        metrics = json.loads((run / "metrics.json").read_text())
    else:
        shutil.rmtree(run, ignore_errors=True)
        config = train_config("vgg16", "av", "concat", epochs=DEMO_EPOCHS, batch_size=DEMO_BATCH, device=default_device("auto"))
        metrics = run_training(str(store), config, run)
    print_metrics(metrics, run)
    typer.echo(f"look at it: .venv/bin/python cli.py preview --store {store} --out {out / 'preview.png'}  "
               "(a contact sheet: crops beside their spectrogram chunks, broken and low face coverage clips first)")
    typer.echo(f"done. Next: .venv/bin/python cli.py info --store {store}; "
               f".venv/bin/python cli.py sweep --store {store} --encoders resnet18,simple3d --out {out / 'runs' / 'sweep'}")


if __name__ == "__main__":
    sys.exit(app())
