"""The command line's options: each command's typer options with their defaults and help texts, and the errors that
mean bad input. cli.py stays a list of commands; this is where an option is added or its help reworded.

Choices and their help come from the registries (corpora, fusions, face policies), and the defaults of extraction
from its config dataclasses. The training defaults (epochs, batch size, folds, the ladder's settings) are written
out here, because their modules import torch and `--help` should not wait for it; tests/test_layout.py checks that
they equal TrainConfig's, LadderConfig's and EmbedConfig's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from pipeline.audio import MelConfig
from pipeline.corpora import datasets_help
from pipeline.faces import FaceConfig
from pipeline.fuse import device_fusions, fusion_choices_help, list_fusions
from pipeline.media import FFMPEG_TIMEOUT_S
from pipeline.tracking import FACE_POLICIES

INPUT_ERRORS = (
    ("builtins", "PermissionError"),
    ("pipeline.corpora.base", "CorpusError"),
    ("pipeline.labels", "LabelError"),
    ("pipeline.hardware", "DeviceError"),
    ("pipeline.extraction", "ExtractOptionError"),
    ("stores.splits", "SplitError"),
    ("stores.location", "LocationError"),
    ("stores.store", "StoreError"),
    ("stores.lock", "StoreLockedError"),
    ("stores.publish", "PublishError"),
    ("stores.diff", "DiffError"),
    ("stores.preview", "PreviewError"),
    ("encoders.registry", "UnknownEncoderError"),
    ("encoders.runs", "RunError"),
    ("encoders.study", "StudyError"),
    ("encoders.significance", "CompareError"),
    ("encoders.report", "ReportError"),
)
"""(module, class) of every error that means bad input: the CLI says its message in one line, exit code 2. Any other
exception is a bug and keeps its traceback."""


def input_errors() -> tuple[type[BaseException], ...]:
    """The INPUT_ERRORS classes of the modules imported so far: an error of a module not imported cannot have been
    raised, so the CLI catches them all without importing a module (torch, for the trainer's) to do so."""
    return tuple(getattr(sys.modules[module], name) for module, name in INPUT_ERRORS if module in sys.modules)


DATASET = typer.Option(..., help=datasets_help())
CLASSES = typer.Option(None, help="manifest only: its class list in label order, e.g. ANG,HAP,NEU,SAD (default: its labels' codes, "
                       "alphabetical); needed for labels outside the emotion table (README).")
STORE = typer.Option(None, help="Store path or URL (default data/stores/crema-d.zarr).")  # info, verify, sweep
JSON = typer.Option(False, "--json", help="Print JSON.")  # info, diff


class Sample:
    out = typer.Option(..., help="Folder to write the corpus into (CREMA-D layout).")
    actors = typer.Option(8, min=3, help="Number of actors (at least 3, for train/val/test).")
    sentences = typer.Option(2, min=1, max=12, help="Sentences per actor (each gets all 6 emotions).")
    seed = typer.Option(0, help="Same seed, same bytes.")
    with_broken = typer.Option(False, "--with-broken", help="Add a truncated file, a clip without audio, one without a face and a too-short one.")


class Summary:
    root = typer.Option(..., help="The corpus folder (for `manifest`: the CSV file).")
    meta = typer.Option(None, help="CREMA-D metadata tables (VideoDemographics.csv, tabulatedVotes.csv).")
    split_seed = typer.Option(0, help="Seed of the actor-disjoint split.")
    as_json = typer.Option(False, "--json", help="Print JSON instead of text.")


class Extract:
    root = typer.Option(None, help="Corpus folder (default data/<dataset>; for `manifest`: the CSV).")
    store = typer.Option(None, help="Store path or URL (default data/stores/<dataset>.zarr).")
    meta = typer.Option(None, help="CREMA-D metadata tables to join (demographics, perceived emotion).")
    frames = typer.Option(FaceConfig.frames, min=1, help="T: face crops and spectrogram chunks per clip.")
    size = typer.Option(FaceConfig.size, min=32, help="Side of every face crop and spectrogram image.")
    margin = typer.Option(FaceConfig.margin, min=0.0, help="Margin around the face box, as a fraction of its side.")
    detect_every = typer.Option(FaceConfig.detect_every, min=1, help="Run MTCNN on every n-th of the T frames (plus last and middle).")
    sr = typer.Option(MelConfig.sample_rate, help="Audio sample rate (Hz).")
    n_fft = typer.Option(MelConfig.n_fft, help="STFT window.")
    hop = typer.Option(MelConfig.hop_length, help="STFT hop.")
    n_mels = typer.Option(MelConfig.n_mels, help="Mel bands (the study's slides: 512; its code: 128).")
    fusion = typer.Option(["concat"], help="Fused tensors to cache (repeat the option): " + ", ".join(sorted(list_fusions())) + ".")
    min_coverage = typer.Option(FaceConfig.min_coverage, min=0.0, max=1.0, help="A clip whose face is in fewer of its T crops than this fraction is face_lost, not ok.")
    workers = typer.Option(2, min=0, help="Local Dask worker processes (0: in this process, for debugging: a bug raises with its traceback).")
    scheduler = typer.Option(None, help="Address of a running dask.distributed scheduler (tcp://HOST:PORT).")
    device = typer.Option("auto", help="MTCNN device: auto, cpu or cuda.")
    split_seed = typer.Option(None, help="Seed of the actor-disjoint split of a new store (default 0); an existing store keeps its own.")
    progress = typer.Option(True, help="Show a progress bar.")
    commit_every = typer.Option(32, min=1, help="Clips per task, rounded to whole shards of 32 (at least one): each task writes its shards, and its clips are committed when it finishes.")
    retry_failed = typer.Option(False, "--retry-failed", help="Redo every clip that is not ok (clips whose source file changed are redone anyway).")
    ffmpeg_timeout = typer.Option(FFMPEG_TIMEOUT_S, min=0.1, help="Seconds decoding one clip may take; past it the clip is decode_error (timeout).")
    lld = typer.Option(False, "--lld", help="Also store ComParE_2016 LLD + delta sequences (130-d, 32 ms / 16 ms; seed 002), from the same decoded audio.")
    face_policy = typer.Option(FaceConfig.policy, "--face-policy", help="Which face to follow, and to pick again after a cut or when it leaves: "
                               f"{' | '.join(FACE_POLICIES)} (the one most consistent in position and size across the clip).")
    scene = typer.Option(FaceConfig.scene, "--scene", help="Also store each step's whole frame, letterboxed to --size (faces set array `scene`).")


class Embed:
    store = typer.Option(None, help="Store path or URL, extracted already (default data/stores/crema-d.zarr).")
    backbone = typer.Option("vgg16", help="vgg16 (fc7, 4096-d, ImageNet input), vggface (the same, VGG-Face's BGR input) or facenet (InceptionResnetV1, 512-d).")
    weights = typer.Option(None, help="State dict of the backbone (torch.save); without it: random init, recorded and flagged.")
    size = typer.Option(None, min=32, help="Input side the crops are resized to (default: the backbone's, 224 / 160).")
    batch_size = typer.Option(64, min=1, help="Frames per forward pass.")
    faces = typer.Option(None, help="Faces feature-set fingerprint, when the store holds several.")
    device = typer.Option("auto", help="auto, cpu or cuda.")
    progress = typer.Option(True, help="Show a progress bar.")


class Publish:
    store = typer.Option(..., help="The finished store to publish (path or URL).")
    to = typer.Option(..., help="Where to publish it (path or URL); must not exist yet.")


class Diff:
    store_a = typer.Argument(..., help="First store (path or URL).")
    store_b = typer.Argument(..., help="Second store (path or URL).")
    tolerance = typer.Option(0, "--tolerance", metavar="ULPS", help="Accept numeric arrays that differ by at most this many ulps (units for integer images).")


class Preview:
    store = typer.Option(..., help="Store path or URL (read only).")
    out = typer.Option(Path("preview.png"), help="The PNG contact sheet to write.")
    clips = typer.Option(16, min=1, help="How many clips to show (not-ok and low face coverage first).")
    status = typer.Option([], help="Only clips with this faces or audio status (repeat the option), e.g. face_lost.")


class Train:
    encoder = typer.Option(..., help="Encoder name; `python cli.py encoders` lists them.")
    fusion = typer.Option(None, help=fusion_choices_help())
    modality = typer.Option(None, help="audio, vision or av (default av).")
    store = typer.Option(None, help="Store path or URL, opened read-only (default data/stores/crema-d.zarr).")
    epochs = typer.Option(20, min=1)
    max_steps = typer.Option(None, min=1, help="Stop after this many optimiser steps (a benchmark or a smoke test); the run is still evaluated and written.")
    batch_size = typer.Option(16, min=1)
    micro_batch = typer.Option(None, min=1, help="Samples per forward/backward pass; a step sums its passes' gradients (default: on a CPU the encoder's micro-batch, which keeps a process within 3 GB; on a GPU the batch).")
    lr = typer.Option(None, help="Adam learning rate (default: the encoder's).")
    seed = typer.Option(0, help="Seed of initialisation and batch order (recorded).")
    split_seed = typer.Option(None, help="Re-derive the actor-disjoint split with this seed (default: the store's split).")
    fold = typer.Option(None, help="k-fold cross-validation by actor: test on fold K (0-based), validate on 15/85 of the other speakers, train on the rest.")
    folds = typer.Option(5, min=3, help="Number of actor folds for --fold.")
    device = typer.Option("auto", help="auto, cpu or cuda.")
    pretrained = typer.Option(False, "--pretrained", help="Start from the library's pretrained weights (needs them cached or network access).")
    out = typer.Option(None, help="Run directory (default runs/<encoder>-<modality>-<fusion>-seed<seed>); must not exist.")
    faces = typer.Option(None, help="Faces feature-set fingerprint, when the store holds several.")
    audio = typer.Option(None, help="Audio feature-set fingerprint, when the store holds several.")
    max_memory_gb = typer.Option(None, help="Load the splits into memory up to this size; stream from the store beyond it (default: half the available RAM per rank; on CPU at most 0.5 GB).")
    loader_workers = typer.Option(None, help="Processes reading a streamed split (0: in the training process; default: from the CPU count).")
    amp = typer.Option("auto", help="Mixed precision: auto (bf16 on CUDA), bf16 or off.")
    compile = typer.Option("auto", help="torch.compile: auto (CUDA, models of 5M+ parameters), on or off.")
    fuse_on_device = typer.Option(False, "--fuse-on-device", help=f"Build the {'/'.join(device_fusions())} image from the stored faces and audio on the device (reads 4/6 of the bytes; their videos always are).")
    include_broken = typer.Option(False, "--include-broken", help="Also train on ok clips the corpus documents as broken (left out by default; the log says how many).")
    target = typer.Option("intended", help="What to learn: intended (the actor's emotion) or what raters perceived: perceived-voice, perceived-face, perceived-av.")
    labels = typer.Option("hard", help="hard: the raters' majority (ties: a seeded hash); soft: cross-entropy to the vote distribution (perceived targets).")
    labelled_fraction = typer.Option(1.0, help="Share of the training clips that keep their label, in (0, 1] (seeded, per class); the ladder trains its reconstructions on the rest, other encoders leave them out.")
    noise = typer.Option(0.3, help="ladder: SD of the Gaussian noise of the noisy pass.")
    lambdas = typer.Option("1", help="ladder: λ_l per depth from the input up, comma-separated; the last repeats.")
    cross_skips = typer.Option(True, help="ladder: skips from one modality's encoder to the other's decoder (--no-cross-skips: ablation).")
    reconstruction = typer.Option(True, help="ladder: the unsupervised reconstruction loss (--no-reconstruction: ablation).")
    combinator = typer.Option("vanilla", help="ladder: how a decoder layer joins its lateral skip: vanilla (Rasmus et al., per unit) or dense.")
    lld = typer.Option(None, help="ladder: LLD feature-set fingerprint, when the store holds several.")
    embed = typer.Option(None, help="ladder: embedding feature-set fingerprint, when the store holds several.")
    progress = typer.Option(True, help="Show progress bars.")
    allow_partial = typer.Option(False, "--allow-partial", help="Train on a store that is being written or was never finished (refused otherwise); the run records how many clips it used.")


class Evaluate:
    run = typer.Option(..., help="A run directory written by `train`.")
    ablate = typer.Option(None, help="Zero one modality of a multimodal model: audio or vision.")
    store = typer.Option(None, help="Read the store from here instead of where the run found it.")


class Report:
    runs = typer.Option(Path("runs"), help="Folder holding run directories.")
    out = typer.Option(None, help="Where to write comparison.md/.csv/.png (default: RUNS/report).")
    compare = typer.Option(
        None, "--compare", metavar="A B",
        help="Test configuration A against B with folds as replicates (seeds averaged within a fold), e.g. "
             "--compare encoder=ladder encoder=resnet18,modality=av: corrected resampled t-test, Holm over --metric, "
             "speaker-bootstrap 95 % CI. Refused (exit 2) when the runs were tested on different clips.")
    metric = typer.Option("accuracy,uar,macro_f1", help="Test metric(s) --compare tests, comma-separated; Holm corrects over them.")
    alternative = typer.Option("two-sided", help="--compare's H1: two-sided, or greater (A > B) / less (A < B) for a direction stated in advance.")


class Sweep:
    store = STORE
    encoders = typer.Option(None, help="Comma-separated encoders (default resnet18,simple3d).")
    modalities = typer.Option(None, help="Comma-separated modalities (default audio,vision,av).")
    seeds = typer.Option(None, help="Comma-separated seeds (default 0,1; a preset's own otherwise).")
    folds = typer.Option(None, min=3, help="k-fold cross-validation by actor: run every fold of N (default: the stored split only, or a preset's folds).")
    preset = typer.Option(None, help="Run a study's table instead of encoders x modalities: ladder-crema-d (seed 002).")
    split_seed = typer.Option(None, help="Re-derive the actor-disjoint split (or folds) with this seed.")
    lr = typer.Option(None, help="Adam learning rate for every run (default: each encoder's).")
    pretrained = typer.Option(False, "--pretrained", help="Start every encoder from its pretrained weights.")
    fusion = typer.Option("concat", help="Fusion of the av runs of 2D/3D encoders.")
    epochs = typer.Option(20, min=1)
    batch_size = typer.Option(16, min=1)
    device = typer.Option("auto")
    out = typer.Option(Path("runs/sweep"), help="Folder for the runs and the report.")
    progress = typer.Option(True)
    allow_partial = typer.Option(False, "--allow-partial", help="Train on a store that is being written or was never finished (refused otherwise); each run records how many clips it used.")


class Demo:
    out = typer.Option(Path("demo"), help="Working folder for the demo (corpus, store, runs).")
    workers = typer.Option(2, min=0, help="Dask worker processes for extraction.")
