"""Seed 002's results table (sweep --preset): numbers, significance marks and p-values from runs with known values.
The preset end to end on the sample corpus is in tests/test_ladder.py (it shares that file's store)."""

from __future__ import annotations

import csv

import pytest
import typer
from scipy import stats

import cli
from encoders.study import PRESETS, Arm, Preset, StudyError, get_preset, stale_fields, write_study

PRESET = Preset(
    name="toy", description="a toy study",
    arms=(Arm("ref", "reference", "ladder"), Arm("worse", "clearly worse", "ladder"), Arm("same", "about the same", "resnet18", fusion="concat")),
    metrics=("macro_f1", "micro_f1"),
)


def runs(values: list[float], *, folds=(0, 1, 2), random_init: bool = False, name: str = "r") -> list[dict]:
    return [{"path": f"{name}-{k}/metrics.json", "fold": f"{fold}/3", "seed": 0, "test": {"macro_f1": v, "micro_f1": v + 0.1},
             "store": {"embeddings_random_init": random_init}} for k, (fold, v) in enumerate(zip(folds, values))]


@pytest.fixture
def written(tmp_path):
    ref, worse, same = [0.60, 0.70, 0.65], [0.40, 0.52, 0.44], [0.61, 0.66, 0.68]
    paths = write_study(PRESET, {"ref": runs(ref, random_init=True, name="ref"), "worse": runs(worse, name="worse"),
                                 "same": runs(same, name="same")}, tmp_path / "report")
    return paths, (ref, worse, same)


def test_table_shows_mean_sd_n_and_marks_only_what_the_reference_beats(written):
    paths, (ref, worse, same) = written
    lines = {line.split(" | ")[0].lstrip("| "): line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")}
    assert "0.650 ± 0.050 (n=3)" in lines["reference (reference)"] and "p =" not in lines["reference (reference)"]
    p_worse = stats.ttest_rel(ref, worse, alternative="greater").pvalue
    p_same = stats.ttest_rel(ref, same, alternative="greater").pvalue
    assert p_worse < 0.05 < p_same
    assert f"0.453 ± 0.061 (n=3) *<br>p = {p_worse:.3g}" in lines["clearly worse"]
    assert f"<br>p = {p_same:.3g}" in lines["about the same"] and "*" not in lines["about the same"]


def test_csv_has_every_arm_and_metric_with_both_tests(written):
    paths, (ref, worse, _) = written
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [(r["slug"], r["metric"]) for r in rows] == [(a, m) for a in ("ref", "worse", "same") for m in ("macro_f1", "micro_f1")]
    row = next(r for r in rows if r["slug"] == "worse" and r["metric"] == "macro_f1")
    assert float(row["t_test_p_one_tailed"]) == pytest.approx(stats.ttest_rel(ref, worse, alternative="greater").pvalue)
    assert float(row["wilcoxon_p_one_tailed"]) == pytest.approx(stats.wilcoxon(ref, worse, alternative="greater").pvalue)
    assert row["significant"] == "True" and row["n_pairs"] == "3"
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_random_init_runs_and_matched_replicates_are_named_under_the_table(written):
    text = written[0]["markdown"].read_text()
    assert "3 run(s) read face embeddings from a randomly initialised backbone" in text and "`ref-0/metrics.json`" in text
    assert "`worse-0/metrics.json`" not in text
    assert "reference vs clearly worse: 3 matched replicates (fold 0/3 seed 0, fold 1/3 seed 0, fold 2/3 seed 0)" in text


def test_unmatched_replicates_are_left_out_and_too_few_give_no_test(tmp_path):
    paths = write_study(PRESET, {"ref": runs([0.6, 0.7, 0.65]), "worse": runs([0.4, 0.5], folds=(0, 2)), "same": runs([0.6], folds=(1,))},
                        tmp_path)
    text = paths["markdown"].read_text()
    assert "2 matched replicates (fold 0/3 seed 0, fold 2/3 seed 0); left out, no partner: fold 1/3 seed 0" in text
    assert "0.600 (n=1)<br>no test" in text and "reference vs about the same: no test: 1 matched replicate(s)" in text


def test_the_ladder_preset_is_seed_002s_table():
    preset = get_preset("ladder-crema-d")
    assert preset.folds * len(preset.seeds) == 20 and preset.reference.encoder == "ladder"
    options = [dict(arm.options) for arm in preset.arms]
    assert {"encoder_options": {"cross_skips": False}} in options and {"encoder_options": {"reconstruction": False}} in options
    assert any(arm.encoder != "ladder" for arm in preset.arms)
    assert list(preset.metrics) == ["macro_precision", "macro_recall", "macro_f1", "micro_precision", "micro_recall", "micro_f1"]
    with pytest.raises(StudyError, match="ladder-crema-d"):
        get_preset("nope")
    assert set(PRESETS) == {"ladder-crema-d"}


def test_a_finished_run_made_otherwise_is_stale():
    planned = {"epochs": 20, "lr": None, "device": "cpu", "encoder_options": {"lambdas": (1.0,)}, "seed": 0}
    assert stale_fields(planned, {"epochs": 20, "lr": 0.001, "device": "cuda", "encoder_options": {"lambdas": [1.0]}, "seed": 0}) == []
    assert stale_fields(planned, {"epochs": 1, "lr": 0.001, "encoder_options": {"lambdas": [1.0]}, "seed": 0}) == ["epochs=1 (asked 20)"]


def test_unknown_or_overridden_preset_is_one_line_exit_2(capsys):
    # in-process: sweep checks the preset before it opens the store, and a CLI start costs ~6 s of imports
    for name, given, named in (("nope", [], "unknown preset 'nope'; choose one of ladder-crema-d"), ("ladder-crema-d", ["--encoders"], "drop --encoders")):
        with pytest.raises(typer.Exit) as refused:
            cli.preset_spec(name, given=given)
        err = capsys.readouterr().err
        assert refused.value.exit_code == 2 and err.count("\n") == 1 and named in err, err
    assert cli.preset_spec("ladder-crema-d", given=[]) is get_preset("ladder-crema-d")
