"""The comparison report and the figures, from fake run folders with known numbers."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

import pytest

from encoders.plots import plot_comparison, plot_confusion, plot_learning_curve
from encoders.report import collect_runs, comparison_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CREMA_D = ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"]

# (encoder_type, encoder, modality, fusion) -> (test accuracy per seed, test UAR per seed)
# Hand-worked: mean of [0.50, 0.54] = 0.52, sample sd = 0.02 * sqrt(2) = 0.0283 -> "0.03".
KNOWN_RUNS: dict[tuple[str, str, str, str], tuple[list[float], list[float]]] = {
    ("2D", "resnet18", "audio", "none"): ([0.50, 0.54], [0.48, 0.50]),
    ("2D", "resnet18", "vision", "none"): ([0.60, 0.66], [0.58, 0.62]),
    ("2D", "resnet18", "av", "concat"): ([0.70, 0.72], [0.68, 0.72]),
    ("3D", "r3d18", "audio", "none"): ([0.40, 0.46], [0.38, 0.40]),
    ("3D", "r3d18", "vision", "none"): ([0.55, 0.65], [0.50, 0.60]),
    ("3D", "r3d18", "av", "concat"): ([0.66, 0.70], [0.64, 0.66]),
}
EXPECTED_MARKDOWN_ROWS = [
    "| 2D | resnet18 | 0.52 ± 0.03 (UAR 0.49 ± 0.01, n=2) | 0.63 ± 0.04 (UAR 0.60 ± 0.03, n=2) "
    "| concat: 0.71 ± 0.01 (UAR 0.70 ± 0.03, n=2) |",
    "| 3D | r3d18 | 0.43 ± 0.04 (UAR 0.39 ± 0.01, n=2) | 0.60 ± 0.07 (UAR 0.55 ± 0.07, n=2) "
    "| concat: 0.68 ± 0.03 (UAR 0.65 ± 0.01, n=2) |",
]


# --------------------------------------------------------------------------- helpers


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header, after checking the magic bytes."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _assert_sensible_png(path: Path) -> None:
    assert path.is_file()
    width, height = _png_size(path)
    assert 300 <= width <= 4000 and 200 <= height <= 3000, (width, height)


def _write_run(root: Path, name: str, **fields: object) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    path = folder / "metrics.json"
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def _write_known_runs(root: Path) -> None:
    for (encoder_type, encoder, modality, fusion), (accuracies, uars) in KNOWN_RUNS.items():
        for seed, (accuracy, uar) in enumerate(zip(accuracies, uars)):
            _write_run(root / encoder, f"{modality}_{fusion}_seed{seed}", encoder=encoder,
                       encoder_type=encoder_type, modality=modality, fusion=fusion, seed=seed, ablate=None,
                       test={"accuracy": accuracy, "uar": uar, "macro_f1": accuracy - 0.01})


@pytest.fixture()
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_known_runs(root)
    return root


def _history(val_uar: list[float]) -> list[dict]:
    return [
        {"epoch": epoch, "train_loss": 1.8 - 0.2 * epoch, "val_loss": 1.7 - 0.1 * epoch,
         "train_accuracy": 0.2 + 0.1 * epoch, "val_accuracy": uar + 0.02, "val_uar": uar}
        for epoch, uar in enumerate(val_uar, start=1)
    ]


# --------------------------------------------------------------------------- collect_runs


def test_collect_runs_finds_all_runs_sorted_by_path(runs_dir: Path) -> None:
    runs = collect_runs(runs_dir)
    assert len(runs) == 12
    paths = [run["path"] for run in runs]
    assert paths == sorted(paths)
    assert all(path.endswith("metrics.json") for path in paths)


def test_collect_runs_skips_and_reports_unreadable(runs_dir: Path) -> None:
    broken = runs_dir / "broken_run"
    broken.mkdir()
    (broken / "metrics.json").write_text("{not json", encoding="utf-8")
    _write_run(runs_dir, "no_test_key", encoder="x", encoder_type="2D", modality="audio")
    with pytest.warns(UserWarning, match="broken_run") as record:
        runs = collect_runs(runs_dir)
    assert len(runs) == 12
    assert "no_test_key" in str(record[0].message)


# --------------------------------------------------------------------------- comparison_table


def test_comparison_table_means_and_sds(runs_dir: Path) -> None:
    rows = comparison_table(collect_runs(runs_dir))
    assert [(row["encoder_type"], row["encoder"]) for row in rows] == [("2D", "resnet18"), ("3D", "r3d18")]
    (audio,) = rows[0]["modalities"]["audio"]
    assert audio["accuracy_mean"] == pytest.approx(0.52)
    assert audio["accuracy_sd"] == pytest.approx(0.02 * 2**0.5)
    assert audio["uar_mean"] == pytest.approx(0.49)
    assert audio["macro_f1_mean"] == pytest.approx(0.51)
    assert audio["n"] == 2 and audio["seeds"] == [0, 1] and audio["fusion"] == "none"
    (multimodal,) = rows[1]["modalities"]["av"]
    assert multimodal["fusion"] == "concat"
    assert multimodal["accuracy_mean"] == pytest.approx(0.68)


def test_comparison_table_leaves_out_ablations_and_duplicate_seeds(runs_dir: Path) -> None:
    common = {"encoder": "resnet18", "encoder_type": "2D", "modality": "audio", "fusion": "none"}
    _write_run(runs_dir, "ablation", **common, seed=0, ablate="no_audio", test={"accuracy": 0.99, "uar": 0.99})
    _write_run(runs_dir, "zz_rerun", **common, seed=1, ablate=None, test={"accuracy": 0.01, "uar": 0.01})
    (audio,) = comparison_table(collect_runs(runs_dir))[0]["modalities"]["audio"]
    assert audio["n"] == 2
    assert audio["accuracy_mean"] == pytest.approx(0.52)


def test_single_seed_cell_has_zero_sd(tmp_path: Path) -> None:
    _write_run(tmp_path, "only", encoder="vit", encoder_type="2D", modality="vision", seed=3,
               test={"accuracy": 0.61, "uar": 0.57})
    (cell,) = comparison_table(collect_runs(tmp_path))[0]["modalities"]["vision"]
    assert (cell["n"], cell["accuracy_sd"], cell["uar_sd"]) == (1, 0.0, 0.0)
    assert cell["fusion"] == "none"  # a missing fusion key reads as "none"


# --------------------------------------------------------------------------- write_report


def test_markdown_table_has_the_right_means_and_sds(runs_dir: Path, tmp_path: Path) -> None:
    paths = write_report(runs_dir, tmp_path / "report")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "| Type | Encoder | Audio | Vision | Multimodal |" in markdown
    for expected_row in EXPECTED_MARKDOWN_ROWS:
        assert expected_row in markdown
    assert "Notes:" not in markdown


def test_missing_cell_is_a_dash(runs_dir: Path, tmp_path: Path) -> None:
    _write_run(runs_dir, "audio_only", encoder="wav2vec", encoder_type="2D", modality="audio", fusion="none",
               seed=0, test={"accuracy": 0.5, "uar": 0.4})
    markdown = write_report(runs_dir, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert "| 2D | wav2vec | 0.50 (UAR 0.40, n=1) | — | — |" in markdown  # one run has no spread: no "± 0.00"


def test_several_fusions_are_named_in_the_multimodal_cell(runs_dir: Path, tmp_path: Path) -> None:
    for seed, accuracy in enumerate([0.74, 0.78]):
        _write_run(runs_dir / "resnet18", f"av_gated_seed{seed}", encoder="resnet18", encoder_type="2D",
                   modality="av", fusion="gated", seed=seed, test={"accuracy": accuracy, "uar": 0.7})
    markdown = write_report(runs_dir, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert ("concat: 0.71 ± 0.01 (UAR 0.70 ± 0.03, n=2)<br>gated: 0.76 ± 0.03 (UAR 0.70 ± 0.00, n=2) |"
            in markdown)


def test_csv_round_trips(runs_dir: Path, tmp_path: Path) -> None:
    paths = write_report(runs_dir, tmp_path / "report")
    with paths["csv"].open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["encoder_type", "encoder", "modality", "fusion", "variant", "metric", "mean", "sd", "n"]
        records = list(reader)
    assert len(records) == 6 * 3  # 6 cells x (accuracy, uar, macro_f1)
    by_key = {(r["encoder"], r["modality"], r["fusion"], r["metric"]): r for r in records}
    for (_, encoder, modality, fusion), (accuracies, uars) in KNOWN_RUNS.items():
        accuracy = by_key[(encoder, modality, fusion, "accuracy")]
        assert float(accuracy["mean"]) == pytest.approx(sum(accuracies) / 2, abs=1e-12)
        assert float(accuracy["sd"]) == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2**0.5, abs=1e-12)
        assert int(accuracy["n"]) == 2
        assert float(by_key[(encoder, modality, fusion, "uar")]["mean"]) == pytest.approx(sum(uars) / 2)


def test_report_skips_and_lists_unreadable_and_ablations(runs_dir: Path, tmp_path: Path) -> None:
    broken = runs_dir / "resnet18" / "half_written"
    broken.mkdir()
    (broken / "metrics.json").write_text('{"encoder": "resnet18", "tes', encoding="utf-8")
    _write_run(runs_dir, "ablation", encoder="resnet18", encoder_type="2D", modality="av", fusion="concat",
               seed=0, ablate="drop_audio", test={"accuracy": 0.3, "uar": 0.3})
    with pytest.warns(UserWarning, match="half_written"):
        paths = write_report(runs_dir, tmp_path / "report")
    markdown = paths["markdown"].read_text(encoding="utf-8")
    assert "1 unreadable metrics.json skipped" in markdown
    assert "half_written" in markdown
    assert "1 ablation run(s)" in markdown
    assert EXPECTED_MARKDOWN_ROWS[0] in markdown  # neither changed the numbers


def test_report_names_runs_that_read_randomly_initialised_face_embeddings(runs_dir: Path, tmp_path: Path) -> None:
    for seed, random_init in ((0, True), (1, False)):
        _write_run(runs_dir, f"ladder-seed{seed}", encoder="ladder", encoder_type="fusion", modality="av", fusion="none", seed=seed,
                   test={"accuracy": 0.4, "uar": 0.4}, store={"embeddings_random_init": random_init})
    markdown = write_report(runs_dir, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    notes = markdown.split("Notes:")[1]
    assert "1 run(s) read face embeddings from a randomly initialised backbone" in notes
    assert "ladder-seed0" in notes and "ladder-seed1" not in notes


def test_report_names_runs_trained_on_an_unfinished_store_with_what_they_used(runs_dir: Path, tmp_path: Path) -> None:
    partial = {"problem": "an extract that started 2026-12-04T10:00:00 was interrupted before it finished", "clips_used": 160,
               "clips_committed": 170, "clips_in_store": 288, "speakers_used": 11, "speakers_in_store": 12}
    for seed, record in ((0, partial), (1, None)):
        _write_run(runs_dir, f"partial-seed{seed}", encoder="resnet18", encoder_type="2D", modality="av", fusion="concat", seed=seed,
                   test={"accuracy": 0.4, "uar": 0.4}, **({"partial_store": record} if record else {}))
    notes = write_report(runs_dir, tmp_path / "report")["markdown"].read_text(encoding="utf-8").split("Notes:")[1]
    assert "partial-seed0" in notes and "partial-seed1" not in notes
    assert "trained on 160 of 288 clips in the store (170 committed), 11 of 12 speakers" in notes


def test_report_writes_both_plots(runs_dir: Path, tmp_path: Path) -> None:
    paths = write_report(runs_dir, tmp_path / "report")
    assert set(paths) == {"markdown", "csv", "accuracy_plot", "uar_plot"}
    assert paths["accuracy_plot"].name == "comparison_accuracy.png"
    assert paths["uar_plot"].name == "comparison_uar.png"
    for key in ("accuracy_plot", "uar_plot"):
        _assert_sensible_png(paths[key])
    assert paths["accuracy_plot"].read_bytes() != paths["uar_plot"].read_bytes()


def test_report_on_empty_folder(tmp_path: Path) -> None:
    paths = write_report(tmp_path / "nothing_here", tmp_path / "report")
    assert "Built from 0 run(s)" in paths["markdown"].read_text(encoding="utf-8")
    _assert_sensible_png(paths["accuracy_plot"])


# --------------------------------------------------------------------------- plots


def test_plot_confusion_writes_a_png_that_depends_on_the_data(tmp_path: Path) -> None:
    confusion_a = [[5, 1, 0, 0, 0, 0], [0, 4, 2, 0, 0, 0], [1, 0, 3, 0, 0, 2],
                   [0, 0, 0, 6, 0, 0], [0, 1, 0, 0, 5, 0], [0, 0, 1, 0, 0, 5]]
    confusion_b = [row[::-1] for row in confusion_a]
    path_a = plot_confusion(confusion_a, CREMA_D, tmp_path / "a.png", title="test set")
    path_b = plot_confusion(confusion_b, CREMA_D, tmp_path / "b.png", title="test set")
    raw = plot_confusion(confusion_a, CREMA_D, tmp_path / "raw.png", title="test set", normalise=False)
    for path in (path_a, path_b, raw):
        _assert_sensible_png(path)
    assert path_a.read_bytes() != path_b.read_bytes()
    assert path_a.read_bytes() != raw.read_bytes()


def test_plot_confusion_rejects_mismatched_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        plot_confusion([[1, 0], [0, 1]], CREMA_D, tmp_path / "x.png", title="bad")


def test_plot_learning_curve_marks_max_val_uar_by_default(tmp_path: Path) -> None:
    history = _history([0.30, 0.45, 0.52, 0.50, 0.49])
    default = plot_learning_curve(history, tmp_path / "default.png", title="resnet18 audio")
    at_three = plot_learning_curve(history, tmp_path / "three.png", title="resnet18 audio", best_epoch=3)
    at_one = plot_learning_curve(history, tmp_path / "one.png", title="resnet18 audio", best_epoch=1)
    _assert_sensible_png(default)
    assert default.read_bytes() == at_three.read_bytes()  # epoch 3 has the highest val_uar
    assert default.read_bytes() != at_one.read_bytes()


def test_plot_learning_curve_differs_when_history_differs(tmp_path: Path) -> None:
    first = plot_learning_curve(_history([0.3, 0.4, 0.5]), tmp_path / "a.png", title="run")
    second = plot_learning_curve(_history([0.3, 0.2, 0.1]), tmp_path / "b.png", title="run")
    assert first.read_bytes() != second.read_bytes()
    with pytest.raises(ValueError):
        plot_learning_curve([], tmp_path / "empty.png", title="run")


def test_plot_comparison_human_reference_and_data_change_the_image(runs_dir: Path, tmp_path: Path) -> None:
    rows = comparison_table(collect_runs(runs_dir))
    plain = plot_comparison(rows, tmp_path / "plain.png")
    human = plot_comparison(rows, tmp_path / "human.png", human_reference=True)
    fewer = plot_comparison(rows[:1], tmp_path / "fewer.png")
    _assert_sensible_png(plain)
    assert plain.read_bytes() != human.read_bytes()
    assert plain.read_bytes() != fewer.read_bytes()


def test_runs_that_differ_in_configuration_are_never_averaged_together(tmp_path: Path) -> None:
    """lr and the store's audio feature set differ: four cells, each named by what sets it apart."""
    root = tmp_path / "runs"
    for lr, audio, accuracies in ((0.001, "a1", [0.60, 0.62]), (0.0001, "a1", [0.40, 0.42]), (0.001, "a2", [0.30])):
        for seed, accuracy in enumerate(accuracies):
            _write_run(root, f"lr{lr}-{audio}-seed{seed}", encoder="resnet18", encoder_type="2D", modality="audio",
                       fusion="none", seed=seed, ablate=None, test={"accuracy": accuracy, "uar": accuracy},
                       config={"encoder": "resnet18", "lr": lr, "epochs": 20, "seed": seed, "device": f"cuda:{seed}"},
                       store={"fingerprints": {"faces": "f1", "audio": audio}})
    cells = {cell["variant"]: cell for cell in comparison_table(collect_runs(root))[0]["modalities"]["audio"]}
    assert set(cells) == {"lr=0.001, store audio=a1", "lr=0.0001, store audio=a1", "lr=0.001, store audio=a2"}
    assert cells["lr=0.001, store audio=a1"]["accuracy_mean"] == pytest.approx(0.61)
    assert cells["lr=0.0001, store audio=a1"]["n"] == 2 and cells["lr=0.001, store audio=a2"]["n"] == 1
    markdown = write_report(root, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert "lr=0.001, store audio=a2: 0.30 (UAR 0.30, n=1)" in markdown


def _paired_runs(root: Path, name: str, encoder: str, values: dict[tuple[int, int], float]) -> None:
    for (fold, seed), value in values.items():
        _write_run(root, f"{name}-fold{fold}-seed{seed}", encoder=encoder, encoder_type="2D", modality="av",
                   fusion="concat", seed=seed, fold=f"{fold}/5", ablate=None, clips={"train": 300, "val": 60, "test": 90},
                   test={"accuracy": value, "uar": value, "macro_f1": value}, config={"encoder": encoder, "seed": seed})


def test_compare_runs_pairs_folds_and_averages_their_seeds(tmp_path: Path) -> None:
    from encoders.significance import compare_runs, corrected_t_test

    root = tmp_path / "runs"
    a = {(f, s): 0.60 + 0.01 * f + 0.005 * s for f in range(3) for s in range(3)}
    b = {key: value - 0.03 + 0.004 * (key[0] - key[1]) for key, value in a.items() if key != (2, 2)}
    b[(4, 0)] = 0.1  # a fold A lacks: left out, named
    _paired_runs(root, "ladder", "ladder", a)
    _paired_runs(root, "base", "resnet18", b)
    result = compare_runs(collect_runs(root), "encoder=ladder", "encoder=resnet18", metric="macro_f1")
    assert result.folds == ["0/5", "1/5", "2/5"] and result.unmatched_b == ["4/5"] and result.unmatched_a == []
    assert result.seeds_a == [3, 3, 3] and result.seeds_b == [3, 3, 2]  # fold 2 of B has two seeds: their mean
    fold_means = [(sum(a[(f, s)] for s in range(3)) / 3, sum(b[(f, s)] for s in range(3) if (f, s) in b) / (3 - (f == 2))) for f in range(3)]
    assert result.values_a == pytest.approx([m[0] for m in fold_means]) and result.values_b == pytest.approx([m[1] for m in fold_means])
    assert result.p == pytest.approx(corrected_t_test([x - y for x, y in fold_means], 90 / 300)[2])
    assert result.ci is None and "no predictions.json" in " ".join(result.notes)  # no per-clip predictions: no interval


@pytest.mark.heavy  # the slowest end-to-end paths run in `make test-all`
def test_report_compare_through_the_cli(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    root = tmp_path / "runs"
    _paired_runs(root, "ladder", "ladder", {(f, 0): 0.6 + 0.02 * f + 0.01 * (f % 2) for f in range(4)})
    _paired_runs(root, "base", "resnet18", {(f, 0): 0.5 + 0.01 * f for f in range(4)})
    result = run_cli("report", "--runs", str(root), "--compare", "encoder=ladder", "encoder=resnet18", "--metric", "macro_f1")
    assert result.returncode == 0, result.stderr
    assert "folds matched: 4" in result.stdout and "corrected resampled t-test" in result.stdout and "Holm-adjusted over 1" in result.stdout
    (comparison,) = json.loads((root / "report" / "compare.json").read_text())
    assert comparison["n_folds"] == 4 and comparison["alternative"] == "two-sided" and comparison["p_holm"] == comparison["p"]

    missing = run_cli("report", "--runs", str(root), "--compare", "encoder=ladder", "encoder=vgg16")
    assert missing.returncode == 2 and "vgg16" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    _paired_runs(root, "other", "vgg16", {(7, 3): 0.5})
    unpaired = run_cli("report", "--runs", str(root), "--compare", "encoder=ladder", "encoder=vgg16")
    assert unpaired.returncode == 2 and "7/5 (A missing)" in unpaired.stderr, unpaired.stderr


def test_report_notes_altered_partitions_and_seeds_tested_on_different_speakers(tmp_path: Path) -> None:
    from encoders.partition import digest
    from encoders.report import write_report

    def run(name: str, seed: int, test_speakers: list[str], tamper: bool = False) -> None:
        folder = tmp_path / "runs" / name
        folder.mkdir(parents=True)
        partition = {p: {"speakers": s, "clips": [f"{x}_c" for x in s]} for p, s in (("train", ["1", "2"]), ("val", ["3"]), ("test", test_speakers))}
        (folder / "partition.json").write_text(json.dumps(partition))
        metrics = {"encoder": "resnet18", "encoder_type": "2D", "modality": "audio", "fusion": "none", "seed": seed, "ablate": None,
                   "config": {"split_seed": None}, "test": {"accuracy": 0.5, "uar": 0.5, "macro_f1": 0.5},
                   "partition": {"file": "partition.json", "sha256": digest(partition) + ("x" if tamper else "")}}
        (folder / "metrics.json").write_text(json.dumps(metrics))

    run("a", 0, ["4"])
    run("b", 1, ["4"])
    text = write_report(tmp_path / "runs", tmp_path / "out")["markdown"].read_text()
    assert "different sets of speakers" not in text and "changed since" not in text
    run("c", 2, ["5"], tamper=True)
    text = write_report(tmp_path / "runs", tmp_path / "out")["markdown"].read_text()
    assert "resnet18 audio none: its seeds were tested on 2 different sets of speakers" in text
    assert "runs/c/metrics.json`: `partition.json` changed since the run was trained" in text


# --------------------------------------------------------------------------- labels true for the store, per-class sections


def _run_with_predictions(root: Path, name: str, *, fold: int | None, seed: int, labels: list[int], predicted: list[int],
                          dataset: str = "sample", sex: list[str] | None = None, intensity: list[str] | None = None) -> None:
    from encoders.metrics import classification_metrics

    n = len(labels)
    ids = [f"{name}_{k}" for k in range(n)]
    _write_run(root, name, encoder="resnet18", encoder_type="2D", modality="av", fusion="concat", seed=seed,
               fold=None if fold is None else f"{fold}/3", ablate=None, class_names=CREMA_D,
               test=classification_metrics(labels, predicted, CREMA_D),
               config={"encoder": "resnet18", "seed": seed, "fold": fold, "folds": 3 if fold is not None else 5})
    (root / name / "predictions.json").write_text(json.dumps({
        "split": "test", "dataset": dataset, "class_names": CREMA_D, "clip_id": ids, "speaker": [str(k % 2) for k in range(n)],
        "sentence": ["IEO" if k % 3 else "TIE" for k in range(n)], "intensity": intensity or ["XX"] * n, "sex": sex or [""] * n,
        "label": labels, "predicted": predicted}))


LABELS = [0, 1, 2, 3, 4, 5] * 2
RIGHT = LABELS
HALF = [0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 0]  # the second six all wrong


def test_k_fold_cells_count_folds_and_a_run_without_fold_is_not_labelled_folds_5(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for fold in range(3):
        for seed in range(2):
            _run_with_predictions(root, f"kfold-f{fold}-s{seed}", fold=fold, seed=seed, labels=LABELS, predicted=RIGHT if seed else HALF)
    _run_with_predictions(root, "plain", fold=None, seed=0, labels=LABELS, predicted=HALF)
    cells = {cell["variant"]: cell for cell in comparison_table(collect_runs(root))[0]["modalities"]["av"]}
    assert set(cells) == {"cv=3 folds", "cv=stored split"}  # never "folds=5" for the run without --fold
    kfold = cells["cv=3 folds"]
    assert (kfold["unit"], kfold["n"], kfold["accuracy_mean"], kfold["accuracy_sd"]) == ("folds", 3, pytest.approx(0.75), 0.0)
    markdown = write_report(root, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert "concat, cv=3 folds: 0.75 ± 0.00 (UAR 0.75 ± 0.00, n=3 folds)" in markdown and "folds=5" not in markdown
    assert "### resnet18 av concat, cv=3 folds" in markdown and "6 run(s); mean ± sd over folds." in markdown
    assert "Chance = 1/6" in markdown and "Human raters" not in markdown  # a sample store is not CREMA-D


def test_human_rater_lines_only_for_a_crema_d_store(tmp_path: Path) -> None:
    texts, plots = {}, {}
    for dataset in ("crema-d", "grid"):
        root = tmp_path / dataset
        for seed in range(2):
            _run_with_predictions(root, f"r{seed}", fold=None, seed=seed, labels=LABELS, predicted=HALF, dataset=dataset)
        paths = write_report(root, tmp_path / f"report-{dataset}")
        texts[dataset], plots[dataset] = paths["markdown"].read_text(encoding="utf-8"), paths["accuracy_plot"].read_bytes()
    assert "Human raters on CREMA-D (Cao et al., 2014): audio 40.9%" in texts["crema-d"]
    assert "Human raters" not in texts["grid"] and plots["crema-d"] != plots["grid"]


def test_report_has_per_class_sections_by_intensity_sex_and_sentence(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    sex = ["Female"] * 6 + ["Male"] * 6
    for fold in range(2):
        _run_with_predictions(root, f"f{fold}", fold=fold, seed=0, labels=LABELS, predicted=HALF, sex=sex,
                              intensity=["HI", "LO"] * 6)
    paths = write_report(root, tmp_path / "report")
    text = paths["markdown"].read_text(encoding="utf-8")
    part = text.split("## Per class, by intensity, speaker sex and sentence")[1]
    assert "### resnet18 av concat" in part and "| ANG | 0.50 ± 0.00 | 0.50 ± 0.00 | 2.0 |" in part
    assert "| ANG | 1.0 | 1.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in part  # mean count per run: one right, one called DIS
    assert "| Female | 12 | 1.00 | 1.00 | 1.00 |" in part and "| Male | 12 | 0.00 | 0.00 | 0.00 |" in part  # pooled over 2 runs
    assert "| HI | 12 |" in part and "By sentence" in part
    for name in ("per_class_resnet18-av-concat.png", "confusion_resnet18-av-concat.png"):
        assert f"]({name})" in part
        _assert_sensible_png(tmp_path / "report" / name)


def test_per_class_section_says_when_a_field_or_the_predictions_are_missing(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    _run_with_predictions(root, "a", fold=None, seed=0, labels=LABELS, predicted=HALF)
    _run_with_predictions(root, "b", fold=None, seed=1, labels=LABELS, predicted=RIGHT)
    text = write_report(root, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert "By speaker sex: the store's clip table has no speaker sex value, no table." in text
    (root / "b" / "predictions.json").unlink()
    text = write_report(root, tmp_path / "report")["markdown"].read_text(encoding="utf-8")
    assert "1 of the 2 runs have no per-clip predictions" in text
