"""Seed 002's results table (sweep --preset): numbers, significance marks and p-values from runs with known values.
The preset end to end on the sample corpus is in tests/test_ladder.py (it shares that file's store)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

import cli
from encoders.significance import corrected_t_test, holm
from encoders.study import PRESETS, Arm, Preset, StudyError, get_preset, preset_spec, stale_fields, write_study

PRESET = Preset(
    name="toy", description="a toy study",
    arms=(Arm("ref", "reference", "ladder"), Arm("worse", "clearly worse", "ladder"), Arm("same", "about the same", "resnet18", fusion="concat")),
    metrics=("macro_f1", "accuracy"),
)
RATIO = 50 / 100  # n_test / n_train of the toy runs


def runs(values: list[float], *, folds=(0, 1, 2), seeds=(0,), random_init: bool = False, name: str = "r") -> list[dict]:
    return [{"path": f"{name}-{k}-{seed}/metrics.json", "fold": f"{fold}/3", "seed": seed, "clips": {"train": 100, "val": 20, "test": 50},
             "test": {"macro_f1": v + 0.01 * seed, "accuracy": v + 0.1}, "store": {"embeddings_random_init": random_init}}
            for k, (fold, v) in enumerate(zip(folds, values)) for seed in seeds]


def corrected_p(a: list[float], b: list[float]) -> float:
    return corrected_t_test(np.subtract(a, b), RATIO)[2]


@pytest.fixture
def written(tmp_path):
    ref, worse, same = [0.60, 0.70, 0.65], [0.40, 0.52, 0.44], [0.61, 0.66, 0.68]
    paths = write_study(PRESET, {"ref": runs(ref, random_init=True, name="ref"), "worse": runs(worse, name="worse"),
                                 "same": runs(same, name="same")}, tmp_path / "report")
    return paths, (ref, worse, same)


def test_table_shows_mean_sd_over_folds_and_marks_only_what_survives_holm(written):
    paths, (ref, worse, same) = written
    lines = {line.split(" | ")[0].lstrip("| "): line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")}
    assert "0.650 ± 0.050 (n=3)" in lines["reference (reference)"] and "p =" not in lines["reference (reference)"]
    p = [corrected_p(ref, worse), corrected_p(ref, same)] * 2  # macro_f1 and accuracy differ by a constant: same tests
    adjusted = holm(p)
    assert adjusted[0] < 0.05 < adjusted[1]
    assert f"0.453 ± 0.061 (n=3) *<br>p = {p[0]:.3g}, Holm {adjusted[0]:.3g}" in lines["clearly worse"]
    assert f"<br>p = {p[1]:.3g}, Holm {adjusted[1]:.3g}" in lines["about the same"] and "*" not in lines["about the same"]
    assert "Accuracy (= micro P, R, F1)" in lines["Configuration"] and "Micro" not in lines["Configuration"].replace("micro", "")


def test_seeds_are_averaged_within_a_fold_so_n_counts_folds(tmp_path):
    paths = write_study(PRESET, {"ref": runs([0.6, 0.7, 0.65], seeds=(0, 1, 2)), "worse": runs([0.4, 0.5, 0.45], seeds=(0, 1)),
                                 "same": runs([0.6, 0.7, 0.64])}, tmp_path)
    text = paths["markdown"].read_text()
    assert "0.660 ± 0.050 (n=3)" in text  # 3 folds, each the mean of 3 seeds (+0.00, +0.01, +0.02)
    assert "reference vs clearly worse: 3 matched folds (0/3, 1/3, 2/3)" in text


def test_csv_has_every_arm_and_metric_with_the_corrected_test(written):
    paths, (ref, worse, _) = written
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["slug"], r["metric"]) for r in rows] == [(a, m) for a in ("ref", "worse", "same") for m in ("macro_f1", "accuracy")]
    row = next(r for r in rows if r["slug"] == "worse" and r["metric"] == "macro_f1")
    assert float(row["p"]) == pytest.approx(corrected_p(ref, worse))
    assert float(row["p_naive_paired"]) == pytest.approx(stats.ttest_rel(ref, worse).pvalue)
    assert float(row["p_naive_paired"]) < float(row["p"])
    assert row["significant"] == "True" and row["n_folds"] == "3" and row["alternative"] == "two-sided" and row["df"] == "2"
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_random_init_runs_and_matched_folds_are_named_under_the_table(written):
    text = written[0]["markdown"].read_text()
    assert "3 run(s) read face embeddings from a randomly initialised backbone" in text and "`ref-0-0/metrics.json`" in text
    assert "`worse-0-0/metrics.json`" not in text
    assert "reference vs clearly worse: 3 matched folds (0/3, 1/3, 2/3)." in text


def test_unmatched_folds_are_left_out_and_too_few_give_no_test(tmp_path):
    paths = write_study(PRESET, {"ref": runs([0.6, 0.7, 0.65]), "worse": runs([0.4, 0.5], folds=(0, 2)), "same": runs([0.6], folds=(1,))},
                        tmp_path)
    text = paths["markdown"].read_text()
    assert "2 matched folds (0/3, 2/3); left out, no partner: fold 1/3" in text
    assert "0.600 (n=1)<br>no test" in text and "reference vs about the same: no test: 1 fold(s)" in text


def test_the_ladder_preset_is_seed_002s_table():
    preset = get_preset("ladder-crema-d")
    assert preset.folds * len(preset.seeds) == 20 and preset.reference.encoder == "ladder"
    options = [dict(arm.options) for arm in preset.arms]
    assert {"encoder_options": {"cross_skips": False}} in options and {"encoder_options": {"reconstruction": False}} in options
    assert any(arm.encoder != "ladder" for arm in preset.arms)
    assert list(preset.metrics) == ["macro_precision", "macro_recall", "macro_f1", "accuracy"]  # micro P = R = F1 = accuracy: once
    assert preset.alternative == "two-sided"
    with pytest.raises(StudyError, match="ladder-crema-d"):
        get_preset("nope")
    assert set(PRESETS) == {"ladder-crema-d"}


def test_a_finished_run_made_otherwise_is_stale():
    planned = {"epochs": 20, "lr": None, "device": "cpu", "encoder_options": {"lambdas": (1.0,)}, "seed": 0}
    assert stale_fields(planned, {"epochs": 20, "lr": 0.001, "device": "cuda", "encoder_options": {"lambdas": [1.0]}, "seed": 0}) == []
    assert stale_fields(planned, {"epochs": 1, "lr": 0.001, "encoder_options": {"lambdas": [1.0]}, "seed": 0}) == ["epochs=1 (asked 20)"]


def test_unknown_or_overridden_preset_is_one_line_exit_2(tmp_path):
    # in-process (a CLI start costs ~6 s of imports), through the typer app: sweep checks the preset before it opens the store
    runner = CliRunner()
    for options, named in ((["--preset", "nope"], "unknown preset 'nope'; choose one of ladder-crema-d"),
                           (["--preset", "ladder-crema-d", "--encoders", "vgg16"], "drop --encoders")):
        refused = runner.invoke(cli.app, ["sweep", *options, "--store", str(tmp_path / "none.zarr"), "--out", str(tmp_path / "runs")])
        assert refused.exit_code == 2 and refused.stderr.count("\n") == 1 and named in refused.stderr, refused.output
    assert not (tmp_path / "runs").exists()
    assert preset_spec("ladder-crema-d", given=[]) is get_preset("ladder-crema-d")
