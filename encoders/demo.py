"""`cli.py demo`: the whole path on a generated sample, corpus -> summary -> store -> a trained vgg16, in a couple
of minutes on two cores. Each step reuses what a previous demo left, so a re-run is quick."""

from __future__ import annotations

import shutil
from pathlib import Path

from encoders.runs import finished_metrics, print_metrics, run_name, run_training, train_config
from pipeline.audio import MelConfig
from pipeline.corpora import class_list
from pipeline.corpora.sample import write_sample_corpus
from pipeline.faces import FaceConfig
from pipeline.run import ExtractConfig, run_extract
from pipeline.splits import corpus_records
from pipeline.summary import print_summary

DEMO_SIZE, DEMO_MELS, DEMO_EPOCHS, DEMO_BATCH = 64, 64, 10, 8
"""The demo keeps images small so it runs in a couple of minutes on two cores; the paper's 224/512 are the defaults."""


def run_demo(out: Path, workers: int) -> None:
    """Generate the sample corpus in `out`, summarise it, extract it, train vgg16 on its concat fusion; say what next."""
    corpus, store = out / "corpus", out / "sample.zarr"
    if not (corpus / "SAMPLE.json").is_file():
        print(f"[1/4] generating the sample corpus in {corpus}")
        write_sample_corpus(corpus, actors=8, sentences=2, seed=0, with_broken=True)
    else:
        print(f"[1/4] reusing the sample corpus in {corpus}")
    print("[2/4] corpus summary")
    records = corpus_records("sample", corpus, None, 0)
    print_summary(records)
    print(f"[3/4] extracting into {store} (size {DEMO_SIZE}, {DEMO_MELS} mel bands, fusion concat)")
    config = ExtractConfig(faces=FaceConfig(size=DEMO_SIZE), mel=MelConfig(n_mels=DEMO_MELS), fusions=("concat",))
    class_names, _ = class_list("sample", records)
    result = run_extract(records, store, config, dataset="sample", class_names=class_names, workers=workers)
    print(f"      {result.computed} clips processed, {result.skipped} already done, {result.seconds:.1f} s")
    print("      status: " + ", ".join(f"{k} {v}" for k, v in sorted(result.status.items())))
    for clip_id, why in sorted(result.failures.items()):
        print(f"      not ok: {clip_id}: {why}")
    train = train_config("vgg16", "av", "concat", epochs=DEMO_EPOCHS, batch_size=DEMO_BATCH)
    run = out / "runs" / run_name(train)
    print(f"[4/4] training vgg16 on the concat fusion for {DEMO_EPOCHS} epochs (CPU: a few minutes) into {run}")
    metrics = finished_metrics(run)
    if metrics is None:
        shutil.rmtree(run, ignore_errors=True)
        metrics = run_training(str(store), train, run)
    print_metrics(metrics, run)
    print(f"look at it: .venv/bin/python cli.py preview --store {store} --out {out / 'preview.png'}  "
          "(a contact sheet: crops beside their spectrogram chunks, broken and low face coverage clips first)")
    print(f"done. Next: .venv/bin/python cli.py info --store {store}; "
          f".venv/bin/python cli.py sweep --store {store} --encoders resnet18,simple3d --out {out / 'runs' / 'sweep'}")
